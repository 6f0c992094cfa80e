// Command identity is the `make bench-identity` harness: it runs a real Certify server (TLS on
// loopback, static tokens) and measures certificates per second and issuance latency for bursts of CSRs,
// beside two baselines measured in the same run on the same machine: raw ECDSA P-256 sign+verify (the
// bound of any CA: one CSR verify, one leaf signature) and issuance in-process without gRPC. It then
// measures new mutual-TLS connections per second between two workload certificates, full and resumed:
// the bound a proxy's connection rate is compared with.
//
//	go run ./bench/identity [-bursts 1000,10000] [-concurrency 64] [-conns 4]
package main

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"runtime"
	"runtime/pprof"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"

	"github.com/weftmesh/weft/identity"
	identityv1 "github.com/weftmesh/weft/proto/weft/identity/v1"
)

func main() {
	bursts := flag.String("bursts", "1000,10000", "comma-separated burst sizes (CSRs per burst)")
	concurrency := flag.Int("concurrency", 64, "requests in flight")
	conns := flag.Int("conns", 4, "gRPC connections the requests are spread over")
	distinct := flag.Int("distinct-csrs", 1000, "distinct CSRs (keys) made before timing; bursts cycle through them")
	cpuprofile := flag.String("cpuprofile", "", "write a CPU profile of the whole run to this file")
	flag.Parse()
	if *cpuprofile != "" {
		f, err := os.Create(*cpuprofile)
		if err != nil {
			fmt.Fprintln(os.Stderr, "bench-identity:", err)
			os.Exit(1)
		}
		if err := pprof.StartCPUProfile(f); err != nil {
			fmt.Fprintln(os.Stderr, "bench-identity:", err)
			os.Exit(1)
		}
		defer pprof.StopCPUProfile()
	}
	if err := run(*bursts, *concurrency, *conns, *distinct); err != nil {
		fmt.Fprintln(os.Stderr, "bench-identity:", err)
		pprof.StopCPUProfile()
		os.Exit(1)
	}
}

func run(burstList string, concurrency, conns, distinct int) error {
	var bursts []int
	for _, s := range strings.Split(burstList, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(s))
		if err != nil || n <= 0 {
			return fmt.Errorf("-bursts: %q is not a positive number", s)
		}
		bursts = append(bursts, n)
	}
	dir, err := os.MkdirTemp("", "weft-bench-identity-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	if err := identity.Bootstrap(dir, identity.BootstrapOptions{}); err != nil {
		return err
	}
	ca, err := identity.NewCA(identity.DefaultTrustDomain)
	if err != nil {
		return err
	}
	if err := identity.LoadDirInto(ca, dir); err != nil {
		return err
	}
	tokensFile := filepath.Join(dir, "tokens")
	if err := os.WriteFile(tokensFile, []byte("bench-token,default,bench\n"), 0o600); err != nil {
		return err
	}
	tokens, err := identity.LoadStaticTokens(tokensFile)
	if err != nil {
		return err
	}
	id := identity.ID{TrustDomain: identity.DefaultTrustDomain, Namespace: "default", ServiceAccount: "bench"}

	fmt.Printf("weft identity benchmark: GOMAXPROCS=%d, concurrency %d over %d connections, %d distinct CSRs\n\n", runtime.GOMAXPROCS(0), concurrency, conns, distinct)
	csrs, err := makeCSRs(id, distinct)
	if err != nil {
		return err
	}

	// Baseline 1: the raw crypto bound, one ECDSA P-256 verify + one sign per certificate, on all cores.
	rawRate := parallelRate(2*time.Second, rawSignVerify())
	// Baseline 2: issuance in-process (CheckCSR + Authorize + Sign), no gRPC, no TLS.
	srv := identity.NewServer(ca, tokens, identity.WithLogger(slog.New(slog.DiscardHandler)))
	var k atomic.Int64
	inProcRate := parallelRate(2*time.Second, func() error {
		csr := csrs[int(k.Add(1))%len(csrs)]
		_, err := srv.Certify(context.Background(), &identityv1.CertifyRequest{Identity: id.String(), Token: []byte("bench-token"), CertificateSigningRequest: csr})
		return err
	})

	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	g := grpc.NewServer(grpc.Creds(credentials.NewTLS(ca.ServerTLSConfig(identity.ID{}, "127.0.0.1"))))
	srv.Register(g)
	go g.Serve(lis)
	defer g.Stop()
	var clients []identityv1.IdentityClient
	for range conns {
		cc, err := grpc.NewClient(lis.Addr().String(), grpc.WithTransportCredentials(credentials.NewTLS(&tls.Config{RootCAs: ca.TrustBundle(), ServerName: "127.0.0.1", MinVersion: tls.VersionTLS13})))
		if err != nil {
			return err
		}
		defer cc.Close()
		clients = append(clients, identityv1.NewIdentityClient(cc))
	}
	// Warm up connections and TLS.
	if _, err := burst(clients, csrs, id, 2*concurrency, concurrency); err != nil {
		return err
	}

	fmt.Printf("%-34s %12s %10s %10s %10s\n", "", "certs/s", "p50", "p99", "vs raw")
	fmt.Printf("%-34s %12.0f %10s %10s %9.2fx\n", "baseline: ECDSA P-256 sign+verify", rawRate, "-", "-", 1.0)
	fmt.Printf("%-34s %12.0f %10s %10s %9.2fx\n", "in-process issuance (no gRPC)", inProcRate, "-", "-", inProcRate/rawRate)
	for _, n := range bursts {
		r, err := burst(clients, csrs, id, n, concurrency)
		if err != nil {
			return err
		}
		fmt.Printf("%-34s %12.0f %10s %10s %9.2fx\n", fmt.Sprintf("Certify over gRPC+TLS, burst %d", n), r.rate, r.p50.Round(10*time.Microsecond), r.p99.Round(10*time.Microsecond), r.rate/rawRate)
	}
	g.Stop()

	full, resumed, err := handshakeRates(ca, 2*time.Second)
	if err != nil {
		return err
	}
	fmt.Printf("\n%-52s %12s %10s\n", "mTLS 1.3 between two workload certs (Go, loopback)", "conns/s", "vs full")
	fmt.Printf("%-52s %12.0f %9.2fx\n", "full handshake (ECDHE + 2 signatures + 2 chain checks)", full, 1.0)
	fmt.Printf("%-52s %12.0f %9.2fx\n", "session resumption", resumed, resumed/full)
	return nil
}

func makeCSRs(id identity.ID, n int) ([][]byte, error) {
	out := make([][]byte, n)
	for i := range out {
		key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			return nil, err
		}
		out[i], err = x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{URIs: []*url.URL{id.URL()}}, key)
		if err != nil {
			return nil, err
		}
	}
	return out, nil
}

func rawSignVerify() func() error {
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	digest := sha256.Sum256([]byte("weft"))
	sig, _ := ecdsa.SignASN1(rand.Reader, key, digest[:])
	return func() error {
		if _, err := ecdsa.SignASN1(rand.Reader, key, digest[:]); err != nil {
			return err
		}
		if !ecdsa.VerifyASN1(&key.PublicKey, digest[:], sig) {
			return fmt.Errorf("verify failed")
		}
		return nil
	}
}

// parallelRate runs op on GOMAXPROCS goroutines for d and returns operations per second.
func parallelRate(d time.Duration, op func() error) float64 {
	var n atomic.Int64
	var wg sync.WaitGroup
	start := time.Now()
	deadline := start.Add(d)
	for range runtime.GOMAXPROCS(0) {
		wg.Go(func() {
			for time.Now().Before(deadline) {
				if err := op(); err != nil {
					fmt.Fprintln(os.Stderr, "bench-identity:", err)
					os.Exit(1)
				}
				n.Add(1)
			}
		})
	}
	wg.Wait()
	return float64(n.Load()) / time.Since(start).Seconds()
}

type result struct {
	rate     float64
	p50, p99 time.Duration
}

// burst sends n Certify calls, concurrency at a time, and reports the rate and latency percentiles.
func burst(clients []identityv1.IdentityClient, csrs [][]byte, id identity.ID, n, concurrency int) (result, error) {
	lat := make([]time.Duration, n)
	var next atomic.Int64
	var firstErr atomic.Value
	var wg sync.WaitGroup
	start := time.Now()
	for w := range concurrency {
		client := clients[w%len(clients)]
		wg.Go(func() {
			for {
				i := int(next.Add(1)) - 1
				if i >= n {
					return
				}
				t0 := time.Now()
				_, err := client.Certify(context.Background(), &identityv1.CertifyRequest{Identity: id.String(), Token: []byte("bench-token"), CertificateSigningRequest: csrs[i%len(csrs)]})
				lat[i] = time.Since(t0)
				if err != nil {
					firstErr.CompareAndSwap(nil, err)
					return
				}
			}
		})
	}
	wg.Wait()
	elapsed := time.Since(start)
	if err, _ := firstErr.Load().(error); err != nil {
		return result{}, fmt.Errorf("certify: %w", err)
	}
	slices.Sort(lat)
	return result{rate: float64(n) / elapsed.Seconds(), p50: lat[n/2], p99: lat[n*99/100]}, nil
}
