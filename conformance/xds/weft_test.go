package xds_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"path/filepath"
	"runtime"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"

	xdsconf "github.com/weftmesh/weft/conformance/xds"
	"github.com/weftmesh/weft/conformance/xds/localmode"
	"github.com/weftmesh/weft/discovery"
	"github.com/weftmesh/weft/xds/server"
)

// weftExpected is the truth about weft-control in local mode: every check passes. A check that fails
// goes here with its reason until xds/server is fixed.
var weftExpected = map[string]string{}

// weftControl is weft-control in local mode, in this process: the same parts cmd/weft-control wires
// (a discovery.FileSource feeding an xds/server.Server behind a gRPC server), so a restart is a fresh
// Server, as after a process restart.
type weftControl struct {
	path string

	mu     sync.Mutex
	addr   string
	g      *grpc.Server
	cancel context.CancelFunc
	done   sync.WaitGroup
}

func startWeft(addr, path string) (*weftControl, error) {
	w := &weftControl{path: path}
	return w, w.start(addr)
}

func (w *weftControl) start(addr string) error {
	lis, err := net.Listen("tcp", addr)
	if err != nil {
		return err
	}
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	srv := server.New(server.Options{Logger: quiet})
	g := grpc.NewServer(server.GRPCServerOptions()...) // as weft-control serves: shared pre-encoded responses
	srv.Register(g)
	src := &discovery.FileSource{Path: w.path, Logger: quiet}
	ctx, cancel := context.WithCancel(context.Background())
	w.mu.Lock()
	w.addr, w.g, w.cancel = lis.Addr().String(), g, cancel
	w.mu.Unlock()
	srcErr := make(chan error, 1)
	w.done.Add(2)
	go func() { defer w.done.Done(); _ = g.Serve(lis) }()
	go func() { defer w.done.Done(); srcErr <- src.Run(ctx, srv.Update) }()
	// Serve once the first State is in, as a client of a started weft-control would find it.
	deadline := time.Now().Add(10 * time.Second)
	for !srv.Synced() {
		select {
		case err := <-srcErr:
			return fmt.Errorf("weft-control's file source ended: %v", err)
		case <-time.After(10 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			return errors.New("weft-control did not sync within 10s")
		}
	}
	return nil
}

func (w *weftControl) stop() {
	w.mu.Lock()
	g, cancel := w.g, w.cancel
	w.mu.Unlock()
	cancel()
	g.Stop()
	w.done.Wait()
}

func (w *weftControl) restart(context.Context) error {
	w.mu.Lock()
	addr := w.addr
	w.mu.Unlock()
	w.stop()
	if err := w.start(addr); err != nil {
		return errors.Join(errors.New("restarting weft-control"), err)
	}
	return nil
}

func TestWeftControl(t *testing.T) {
	path := filepath.Join(t.TempDir(), "discovery.yaml")
	driver, err := localmode.New(path, fixture)
	if err != nil {
		t.Fatal(err)
	}
	w, err := startWeft("127.0.0.1:0", path)
	if err != nil {
		t.Fatal(err)
	}
	defer w.stop()
	driver.OnRestart = w.restart
	driver.CountGoroutines = func(context.Context) (int, error) { return runtime.NumGoroutine(), nil }
	results, err := xdsconf.Run(context.Background(), xdsconf.Config{Target: w.addr, Driver: driver, Quiet: *quiet, Timeout: *timeout, Out: testWriter{t}, Match: match()})
	if err != nil {
		t.Fatal(err)
	}
	assertExpected(t, results, weftExpected)
	writeTable(t, "weft-control", results)
}
