package main

import (
	"bufio"
	"context"
	"fmt"
	"log/slog"
	"net"
	"os"
	"runtime"
	"runtime/debug"
	"runtime/pprof"
	"strconv"
	"strings"
	"time"

	cluster "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discoverypb "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	"github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	serverv3 "github.com/envoyproxy/go-control-plane/pkg/server/v3"
	"google.golang.org/grpc"

	"github.com/weftmesh/weft/discovery"
	"github.com/weftmesh/weft/xds"
	"github.com/weftmesh/weft/xds/server"
)

// mesh is the benchmark's Kubernetes: services × endpoints, plus optionally one big Service.
// Round r moves the first endpoint of service 0 (or of the big Service) to a marker address that
// encodes r, so clients can tell which change a response carries.
func mesh(services, endpoints, big, round int) *discovery.State {
	st := &discovery.State{}
	add := func(name string, n, svcIndex int, markFirst bool) {
		svc := discovery.Service{Namespace: "bench", Name: name, ClusterIP: fmt.Sprintf("10.96.%d.%d", svcIndex/250, svcIndex%250+1),
			Ports: []discovery.ServicePort{{Name: "http", Port: 80, Protocol: "TCP"}}}
		for i := range n {
			addr := fmt.Sprintf("10.%d.%d.%d", 1+svcIndex%200, i/250, i%250+1)
			if i == 0 && markFirst {
				addr = markerAddr(round)
			}
			svc.Endpoints = append(svc.Endpoints, discovery.Endpoint{Address: addr, Ready: true, Ports: []discovery.EndpointPort{{Name: "http", Port: 8080}}})
		}
		st.Services = append(st.Services, svc)
	}
	for s := range services {
		add(fmt.Sprintf("svc-%03d", s), endpoints, s, s == 0 && big == 0)
	}
	if big > 0 {
		add("big", big, services, true)
	}
	return st
}

func markerAddr(round int) string { return fmt.Sprintf("10.250.%d.%d", round/250, round%250) }

// markedCluster is the cluster whose endpoints carry the round marker.
func markedCluster(big int) string {
	if big > 0 {
		return xds.OutboundClusterName(80, "big.bench.svc.cluster.local")
	}
	return xds.OutboundClusterName(80, "svc-000.bench.svc.cluster.local")
}

// runServer serves xDS (weft or the naive baseline) on a loopback port, prints "addr <addr>", then
// applies a change for each "change <round>" line on stdin, printing "changed <round> <unixnano>"
// just before the change is handed to the cache.
func runServer(kind string, services, endpoints, big int) error {
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	opts := []grpc.ServerOption{grpc.MaxConcurrentStreams(1 << 20)}
	if kind == "weft" {
		opts = append(opts, server.GRPCServerOptions()...) // as weft-control makes its server
	}
	g := grpc.NewServer(opts...)
	var apply func(round int)
	switch kind {
	case "weft":
		srv := server.New(server.Options{Logger: slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))})
		srv.Update(mesh(services, endpoints, big, 0))
		srv.Register(g)
		apply = func(round int) { srv.Update(mesh(services, endpoints, big, round)) }
	case "baseline":
		// The naive way: one go-control-plane SnapshotCache entry shared by every node, a whole new
		// snapshot (one version for everything) per change; the server marshals per stream.
		sc := cache.NewSnapshotCache(false, allNodes{}, nil)
		set := func(round int) {
			m := xds.BuildMesh(mesh(services, endpoints, big, round), xds.Options{})
			var cls, clas []types.Resource
			for _, c := range m.Clusters {
				if c.GetType() == cluster.Cluster_EDS {
					cls = append(cls, c)
				}
			}
			for _, e := range m.Endpoints {
				clas = append(clas, e)
			}
			snap, err := cache.NewSnapshot(strconv.Itoa(round), map[resource.Type][]types.Resource{resource.ClusterType: cls, resource.EndpointType: clas})
			if err != nil {
				panic(err)
			}
			if err := sc.SetSnapshot(context.Background(), "all", snap); err != nil {
				panic(err)
			}
		}
		set(0)
		discoverypb.RegisterAggregatedDiscoveryServiceServer(g, serverv3.NewServer(context.Background(), sc, nil))
		apply = set
	default:
		return fmt.Errorf("unknown server kind %q", kind)
	}
	if path := os.Getenv("WEFT_BENCH_CPUPROFILE"); path != "" && kind == "weft" {
		f, err := os.Create(path)
		if err != nil {
			return err
		}
		if err := pprof.StartCPUProfile(f); err != nil {
			return err
		}
		defer pprof.StopCPUProfile()
	}
	// WEFT_BENCH_CPUPROFILE_CHANGES profiles only the change rounds (from the first change on).
	changesProfile := ""
	if kind == "weft" {
		changesProfile = os.Getenv("WEFT_BENCH_CPUPROFILE_CHANGES")
	}
	go func() { _ = g.Serve(lis) }()
	fmt.Printf("addr %s\n", lis.Addr())
	in := bufio.NewScanner(os.Stdin)
	for in.Scan() {
		if changesProfile != "" && strings.HasPrefix(in.Text(), "change ") {
			f, err := os.Create(changesProfile)
			if err != nil {
				return err
			}
			if err := pprof.StartCPUProfile(f); err != nil {
				return err
			}
			defer pprof.StopCPUProfile()
			changesProfile = ""
		}
		f := strings.Fields(in.Text())
		if len(f) == 1 && f[0] == "gc" {
			// Measure live memory, not garbage the collector has not reached yet.
			runtime.GC()
			debug.FreeOSMemory()
			fmt.Println("gcdone")
		}
		if len(f) == 2 && f[0] == "change" {
			round, _ := strconv.Atoi(f[1])
			fmt.Printf("changed %d %d\n", round, time.Now().UnixNano())
			apply(round)
		}
	}
	g.Stop()
	return nil
}

type allNodes struct{}

func (allNodes) ID(*core.Node) string { return "all" }
