// Command control is the `make bench-control` harness. It measures weft-control's xDS server beside a
// naive go-control-plane baseline (one SnapshotCache entry shared by every node, a new whole snapshot
// per change, SotW) in the same run. Each server runs in its own process; the simulated proxies (SotW
// ADS clients that ACK everything, as Envoy does) run in a third, all over loopback.
//
// Per N proxies it reports: initial sync time (connect → every proxy has all clusters and endpoints),
// one-endpoint-change convergence p50/p99 (change handed to the server → every proxy has ACKed it),
// bytes sent per change, and server RSS per connected proxy. A last scenario updates a 10k-endpoint
// Service for 100 proxies.
//
//	go run ./bench/control [-n 100,1000,5000] [-rounds 10] [-services 100] [-endpoints 10] [-big 10000]
package main

import (
	"bufio"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"time"
)

func main() {
	role := flag.String("role", "", "internal: server-weft, server-baseline or clients")
	addr := flag.String("addr", "", "internal: server address for -role=clients")
	ns := flag.String("n", "100,1000,5000", "comma-separated numbers of simulated proxies")
	rounds := flag.Int("rounds", 10, "one-endpoint changes per scenario")
	services := flag.Int("services", 100, "Services in the mesh")
	endpoints := flag.Int("endpoints", 10, "endpoints per Service")
	big := flag.Int("big", 10000, "endpoints of the big Service scenario (0: skip)")
	bigN := flag.Int("big-proxies", 100, "proxies in the big Service scenario")
	servers := flag.String("servers", "weft,baseline", "the servers to measure, comma-separated (ratios need both)")
	nFlag := flag.Int("clients", 0, "internal: clients for -role=clients")
	bigFlag := flag.Int("big-size", 0, "internal: big Service size for the roles")
	flag.Parse()

	var err error
	switch *role {
	case "server-weft":
		err = runServer("weft", *services, *endpoints, *bigFlag)
	case "server-baseline":
		err = runServer("baseline", *services, *endpoints, *bigFlag)
	case "clients":
		err = runClients(*addr, *nFlag, markedCluster(*bigFlag))
	case "":
		err = orchestrate(strings.Split(*servers, ","), *ns, *rounds, *services, *endpoints, *big, *bigN)
	default:
		err = fmt.Errorf("unknown -role %q", *role)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench-control:", err)
		os.Exit(1)
	}
}

type result struct {
	sync             time.Duration
	p50, p99, maxLat float64
	bytesPerChange   float64
	roundMax         string  // the slowest proxy of each round, in ms
	rssPerProxy      float64 // bytes
	// CPU seconds used by the server and by the client process during the initial sync, and per
	// change (rounds averaged): tells whether the server or the simulated proxies are the bottleneck.
	syncCPU, changeCPU [2]float64
}

type child struct {
	cmd *exec.Cmd
	in  io.WriteCloser
	out *bufio.Scanner
}

func spawn(args ...string) (*child, error) {
	self, err := os.Executable()
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(self, args...)
	cmd.Stderr = os.Stderr
	in, err := cmd.StdinPipe()
	if err != nil {
		return nil, err
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	sc := bufio.NewScanner(out)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	return &child{cmd: cmd, in: in, out: sc}, nil
}

func (c *child) say(format string, a ...any) error {
	_, err := fmt.Fprintf(c.in, format+"\n", a...)
	return err
}

// expect reads lines until one starts with prefix and returns its fields.
func (c *child) expect(prefix string) ([]string, error) {
	for c.out.Scan() {
		f := strings.Fields(c.out.Text())
		if len(f) > 0 && f[0] == prefix {
			return f, nil
		}
	}
	return nil, fmt.Errorf("child %v ended while waiting for %q", c.cmd.Args[1:], prefix)
}

func (c *child) stop() {
	c.in.Close()
	done := make(chan struct{})
	go func() { _ = c.cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(30 * time.Second):
		_ = c.cmd.Process.Kill()
		<-done
	}
}

func rssBytes(pid int) float64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			kb, _ := strconv.ParseFloat(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 64)
			return kb * 1024
		}
	}
	return 0
}

// cpuSeconds is the user+system CPU time process pid has used so far.
func cpuSeconds(pid int) float64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	// Fields after the command name (which may hold spaces) start after the last ')'.
	i := strings.LastIndexByte(string(b), ')')
	if i < 0 {
		return 0
	}
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 13 {
		return 0
	}
	utime, _ := strconv.ParseFloat(f[11], 64)
	stime, _ := strconv.ParseFloat(f[12], 64)
	return (utime + stime) / 100 // USER_HZ is 100 on Linux
}

func scenario(kind string, n, rounds, services, endpoints, big int) (result, error) {
	var r result
	srv, err := spawn("-role=server-"+kind, "-services", strconv.Itoa(services), "-endpoints", strconv.Itoa(endpoints), "-big-size", strconv.Itoa(big))
	if err != nil {
		return r, err
	}
	defer srv.stop()
	f, err := srv.expect("addr")
	if err != nil {
		return r, err
	}
	gc := func() error {
		if err := srv.say("gc"); err != nil {
			return err
		}
		_, err := srv.expect("gcdone")
		return err
	}
	if err := gc(); err != nil {
		return r, err
	}
	rssBefore := rssBytes(srv.cmd.Process.Pid)
	if p := os.Getenv("WEFT_BENCH_CLIENT_CPUPROFILE"); p != "" {
		// The clients of each server get their own profile: <path>.weft, <path>.baseline.
		os.Setenv("WEFT_BENCH_CLIENT_CPUPROFILE_FILE", p+"."+kind)
	}
	cl, err := spawn("-role=clients", "-addr", f[1], "-clients", strconv.Itoa(n), "-big-size", strconv.Itoa(big))
	if err != nil {
		return r, err
	}
	defer cl.stop()
	cpu := func() [2]float64 { return [2]float64{cpuSeconds(srv.cmd.Process.Pid), cpuSeconds(cl.cmd.Process.Pid)} }
	sub := func(a, b [2]float64, div float64) [2]float64 {
		return [2]float64{(a[0] - b[0]) / div, (a[1] - b[1]) / div}
	}
	cpu0 := cpu()
	if err := cl.say("sync"); err != nil {
		return r, err
	}
	f, err = cl.expect("synced")
	if err != nil {
		return r, err
	}
	secs, _ := strconv.ParseFloat(f[1], 64)
	r.sync = time.Duration(secs * float64(time.Second))
	r.syncCPU = sub(cpu(), cpu0, 1)

	var t0s []string
	cpu0 = cpu()
	for round := 1; round <= rounds; round++ {
		if err := srv.say("change %d", round); err != nil {
			return r, err
		}
		f, err := srv.expect("changed")
		if err != nil {
			return r, err
		}
		t0s = append(t0s, fmt.Sprintf("%d=%s", round, f[2]))
		if err := cl.say("wait %d", round); err != nil {
			return r, err
		}
		if _, err := cl.expect("arrived"); err != nil {
			return r, err
		}
	}
	r.changeCPU = sub(cpu(), cpu0, float64(rounds))
	// Memory is measured after the changes, not between the sync and the first change: the forced
	// GC and return of free memory to the OS would make the first change pay page faults (~15 ms of
	// system time for 1000 proxies) that no server meets in service.
	if err := gc(); err != nil {
		return r, err
	}
	r.rssPerProxy = (rssBytes(srv.cmd.Process.Pid) - rssBefore) / float64(n)
	if err := cl.say("stats %s", strings.Join(t0s, ",")); err != nil {
		return r, err
	}
	f, err = cl.expect("lat")
	if err != nil {
		return r, err
	}
	r.p50, _ = strconv.ParseFloat(f[1], 64)
	r.p99, _ = strconv.ParseFloat(f[2], 64)
	r.maxLat, _ = strconv.ParseFloat(f[3], 64)
	r.bytesPerChange, _ = strconv.ParseFloat(f[4], 64)
	if len(f) > 5 {
		r.roundMax = f[5]
	}
	return r, nil
}

func orchestrate(servers []string, ns string, rounds, services, endpoints, big, bigN int) error {
	fmt.Printf("bench-control: %d Services × %d endpoints, %d one-endpoint changes per scenario; weft beside a naive SnapshotCache baseline, same run\n\n", services, endpoints, rounds)
	fmt.Println("| scenario | server | initial sync | change p50 | change p99 | bytes/change | RSS/proxy |")
	fmt.Println("|---|---|---|---|---|---|---|")
	type sc struct {
		name string
		n    int
		big  int
	}
	var scs []sc
	for _, s := range strings.Split(ns, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(s))
		if err != nil || n <= 0 {
			return fmt.Errorf("-n: %q is not a positive number", s)
		}
		scs = append(scs, sc{fmt.Sprintf("%d proxies", n), n, 0})
	}
	if big > 0 {
		scs = append(scs, sc{fmt.Sprintf("%d-endpoint Service, %d proxies", big, bigN), bigN, big})
	}
	for _, kind := range servers {
		if kind != "weft" && kind != "baseline" {
			return fmt.Errorf("-servers: %q is not a server; use weft, baseline or both", kind)
		}
	}
	var cpuNotes, slowest []string
	for _, s := range scs {
		res := map[string]result{}
		for _, kind := range servers {
			r, err := scenario(kind, s.n, rounds, services, endpoints, s.big)
			if err != nil {
				return fmt.Errorf("%s, %s: %w", s.name, kind, err)
			}
			res[kind] = r
			cpuNotes = append(cpuNotes, fmt.Sprintf("| %s | %s | %.2f s | %.2f s | %.1f ms | %.1f ms |", s.name, kind, r.syncCPU[0], r.syncCPU[1], r.changeCPU[0]*1000, r.changeCPU[1]*1000))
			fmt.Printf("| %s | %s | %s | %s | %s | %s | %s |\n", s.name, kind, r.sync.Round(time.Millisecond), ms(r.p50), ms(r.p99), kb(r.bytesPerChange), mb(r.rssPerProxy))
			slowest = append(slowest, fmt.Sprintf("%s, %s: %s", s.name, kind, r.roundMax))
		}
		w, okW := res["weft"]
		b, okB := res["baseline"]
		if okW && okB {
			fmt.Printf("| %s | **baseline ÷ weft** | %.1f× | %.1f× | %.1f× | %.1f× | %.1f× |\n", s.name,
				ratio(b.sync.Seconds(), w.sync.Seconds()), ratio(b.p50, w.p50), ratio(b.p99, w.p99), ratio(b.bytesPerChange, w.bytesPerChange), ratio(b.rssPerProxy, w.rssPerProxy))
		}
	}
	fmt.Println()
	fmt.Println("CPU time (user+system) of each process; per change: averaged over the rounds, including the ACKs.")
	fmt.Println()
	fmt.Println("| scenario | server | sync: server CPU | sync: clients CPU | change: server CPU | change: clients CPU |")
	fmt.Println("|---|---|---|---|---|---|")
	for _, n := range cpuNotes {
		fmt.Println(n)
	}
	fmt.Println()
	fmt.Println("The slowest proxy of each round, in ms (p99 over all proxies and rounds is decided by the slowest rounds):")
	fmt.Println()
	for _, n := range slowest {
		fmt.Println("- " + n)
	}
	return nil
}

func ratio(a, b float64) float64 {
	if b <= 0 {
		return 0
	}
	return a / b
}

func ms(s float64) string { return fmt.Sprintf("%.1f ms", s*1000) }
func kb(b float64) string { return fmt.Sprintf("%.1f KB", b/1024) }
func mb(b float64) string { return fmt.Sprintf("%.3f MB", b/(1<<20)) }
