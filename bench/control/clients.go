package main

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"runtime/pprof"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpoint "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/structpb"
)

const (
	clusterType  = "type.googleapis.com/envoy.config.cluster.v3.Cluster"
	endpointType = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment"
	maxRounds    = 1000
)

// simClient is one simulated sidecar: SotW ADS, CDS wildcard then EDS for every outbound cluster,
// ACKing everything, as Envoy does.
type simClient struct {
	id      int
	marked  string
	arrived []atomic.Int64 // per round: unix nanos when the marker for that round was ACKed
	synced  atomic.Bool
}

func (c *simClient) run(ctx context.Context, conn *grpc.ClientConn, bytes *atomic.Int64) error {
	stream, err := conn.NewStream(ctx, &adsStreamDesc, adsMethod, grpc.ForceCodecV2(wireCodec{}))
	if err != nil {
		return err
	}
	md, _ := structpb.NewStruct(map[string]any{"CLIENT_KIND": "envoy"})
	node, err := proto.Marshal(&core.Node{Id: fmt.Sprintf("p-%d.bench", c.id), Metadata: md})
	if err != nil {
		return err
	}
	if err := stream.SendMsg(newRequest(node, clusterType, "", "", nil)); err != nil {
		return err
	}
	var edsNames []string
	var edsNamesWire []byte
	have := map[string]bool{}
	resp := &response{marked: c.marked}
	for {
		if err := stream.RecvMsg(resp); err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return err
		}
		bytes.Add(int64(resp.bytes))
		switch resp.typeURL {
		case clusterType:
			if err := stream.SendMsg(newRequest(nil, clusterType, resp.version, resp.nonce, nil)); err != nil {
				return err
			}
			if edsNames == nil {
				for _, name := range resp.names {
					if strings.HasPrefix(name, "outbound|") {
						edsNames = append(edsNames, name)
					}
				}
				slices.Sort(edsNames)
				edsNamesWire = encodeNames(edsNames)
				if err := stream.SendMsg(newRequest(nil, endpointType, "", "", edsNamesWire)); err != nil {
					return err
				}
			}
		case endpointType:
			if !c.synced.Load() {
				for _, name := range resp.names {
					have[name] = true
				}
			}
			if err := stream.SendMsg(newRequest(nil, endpointType, resp.version, resp.nonce, edsNamesWire)); err != nil {
				return err
			}
			now := time.Now().UnixNano()
			if resp.round >= 0 && resp.round < maxRounds {
				c.arrived[resp.round].CompareAndSwap(0, now)
			}
			if !c.synced.Load() && len(have) >= len(edsNames) {
				c.synced.Store(true)
			}
		}
	}
}

func markerRound(cla *endpoint.ClusterLoadAssignment) int {
	for _, loc := range cla.GetEndpoints() {
		for _, e := range loc.GetLbEndpoints() {
			addr := e.GetEndpoint().GetAddress().GetSocketAddress().GetAddress()
			if rest, ok := strings.CutPrefix(addr, "10.250."); ok {
				a, b, _ := strings.Cut(rest, ".")
				x, _ := strconv.Atoi(a)
				y, _ := strconv.Atoi(b)
				return x*250 + y
			}
		}
	}
	return -1
}

// field1 is string field 1 of a serialized resource: the name of a Cluster or CLA.
func field1(b []byte) string {
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			return ""
		}
		b = b[n:]
		if num == 1 && typ == protowire.BytesType {
			v, _ := protowire.ConsumeBytes(b)
			return string(v)
		}
		n = protowire.ConsumeFieldValue(num, typ, b)
		if n < 0 {
			return ""
		}
		b = b[n:]
	}
	return ""
}

// runClients connects n simulated proxies to addr and answers commands on stdin:
//
//	sync          → "synced <seconds>" once every client has all its clusters and endpoints
//	wait <round>  → "arrived <round>" once every client has ACKed that round's change
//	stats <t0s>   → "lat <p50> <p99> <max> <bytes/round> <ms,ms,...>" over all waited rounds (t0s:
//	                round=unixnano,...); the last field is the slowest proxy of each round
func runClients(addr string, n int, marked string) error {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	if path := os.Getenv("WEFT_BENCH_CLIENT_CPUPROFILE_FILE"); path != "" {
		f, err := os.Create(path)
		if err != nil {
			return err
		}
		if err := pprof.StartCPUProfile(f); err != nil {
			return err
		}
		defer pprof.StopCPUProfile()
	}
	perConn := 50
	var conns []*grpc.ClientConn
	for i := 0; i < n; i += perConn {
		conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()),
			grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(64<<20)))
		if err != nil {
			return err
		}
		defer conn.Close()
		conns = append(conns, conn)
	}
	var bytes atomic.Int64
	clients := make([]*simClient, n)
	start := time.Now()
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for i := range clients {
		c := &simClient{id: i, marked: marked, arrived: make([]atomic.Int64, maxRounds)}
		clients[i] = c
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := c.run(ctx, conns[i/perConn], &bytes); err != nil {
				errs <- err
			}
		}()
	}
	waitAll := func(cond func(*simClient) bool) error {
		for {
			all := true
			for _, c := range clients {
				if !cond(c) {
					all = false
					break
				}
			}
			if all {
				return nil
			}
			select {
			case err := <-errs:
				return err
			case <-time.After(time.Millisecond):
			}
		}
	}
	var rounds []int
	bytesAtSync := int64(0)
	in := bufio.NewScanner(os.Stdin)
	for in.Scan() {
		f := strings.Fields(in.Text())
		switch {
		case len(f) == 1 && f[0] == "sync":
			if err := waitAll(func(c *simClient) bool { return c.synced.Load() }); err != nil {
				return err
			}
			fmt.Printf("synced %f\n", time.Since(start).Seconds())
			bytesAtSync = bytes.Load()
		case len(f) == 2 && f[0] == "wait":
			r, _ := strconv.Atoi(f[1])
			if err := waitAll(func(c *simClient) bool { return c.arrived[r].Load() != 0 }); err != nil {
				return err
			}
			rounds = append(rounds, r)
			fmt.Printf("arrived %d\n", r)
		case len(f) == 2 && f[0] == "stats":
			t0 := map[int]int64{}
			for _, kv := range strings.Split(f[1], ",") {
				k, v, _ := strings.Cut(kv, "=")
				r, _ := strconv.Atoi(k)
				t, _ := strconv.ParseInt(v, 10, 64)
				t0[r] = t
			}
			var lat []float64
			var roundMax []string
			for _, r := range rounds {
				slowest := 0.0
				for _, c := range clients {
					l := float64(c.arrived[r].Load()-t0[r]) / 1e9
					lat = append(lat, l)
					slowest = max(slowest, l)
				}
				roundMax = append(roundMax, fmt.Sprintf("%.0f", slowest*1000))
			}
			slices.Sort(lat)
			q := func(p float64) float64 { return lat[min(len(lat)-1, int(p*float64(len(lat))))] }
			perRound := float64(bytes.Load()-bytesAtSync) / float64(max(1, len(rounds)))
			fmt.Printf("lat %f %f %f %f %s\n", q(0.5), q(0.99), lat[len(lat)-1], perRound, strings.Join(roundMax, ","))
		}
	}
	cancel()
	wg.Wait()
	return nil
}
