package iptables

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// fakeIPTables stands in for the iptables commands: one nat table per backend, iptables-restore
// --noflush semantics (a declared chain is created or flushed, -A appends).
type fakeIPTables struct {
	installed  map[string]bool              // command name → present
	tables     map[Mode]map[string][]string // backend → chain → rules
	order      map[Mode][]string
	other      map[Mode]string // extra rules other tables show in a full save (e.g. kube-proxy)
	failSave   map[Mode]bool
	restoreErr string
	calls      []string
}

func newFake(cmds ...string) *fakeIPTables {
	f := &fakeIPTables{installed: map[string]bool{}, tables: map[Mode]map[string][]string{}, order: map[Mode][]string{}, other: map[Mode]string{}, failSave: map[Mode]bool{}}
	for _, c := range cmds {
		f.installed[c] = true
	}
	return f
}

func (f *fakeIPTables) lookPath(name string) (string, error) {
	if f.installed[name] {
		return "/usr/sbin/" + name, nil
	}
	return "", fmt.Errorf("exec: %q: executable file not found in $PATH", name)
}

func (f *fakeIPTables) mode(name string) Mode {
	if strings.Contains(name, "legacy") {
		return ModeLegacy
	}
	return ModeNFT
}

func (f *fakeIPTables) Run(_ context.Context, stdin, path string, args ...string) (string, error) {
	name := filepath.Base(path)
	f.calls = append(f.calls, strings.TrimSpace(name+" "+strings.Join(args, " ")))
	m := f.mode(name)
	if f.tables[m] == nil {
		f.tables[m] = map[string][]string{}
	}
	t := f.tables[m]
	switch {
	case strings.HasSuffix(name, "-save"):
		if len(args) == 1 && args[0] == "--version" {
			return fmt.Sprintf("%s v1.8.9 (nf_tables)\n", name), nil
		}
		if f.failSave[m] {
			return "", errors.New(name + ": exit status 1: Protocol not supported")
		}
		var b strings.Builder
		if len(args) == 0 {
			b.WriteString(f.other[m])
		}
		b.WriteString("*nat\n:PREROUTING ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n")
		for _, c := range f.order[m] {
			fmt.Fprintf(&b, ":%s - [0:0]\n", c)
		}
		for _, c := range append([]string{"PREROUTING", "OUTPUT"}, f.order[m]...) {
			for _, r := range t[c] {
				fmt.Fprintf(&b, "-A %s %s\n", c, r)
			}
		}
		b.WriteString("COMMIT\n")
		return b.String(), nil
	case strings.HasSuffix(name, "-restore"):
		if f.restoreErr != "" {
			return "", errors.New(name + ": exit status 1: " + f.restoreErr)
		}
		for _, line := range strings.Split(stdin, "\n") {
			switch {
			case strings.HasPrefix(line, ":"):
				c, _, _ := strings.Cut(line[1:], " ")
				if _, ok := t[c]; !ok {
					f.order[m] = append(f.order[m], c)
				}
				t[c] = []string{}
			case strings.HasPrefix(line, "-A "):
				c, r, _ := strings.Cut(strings.TrimPrefix(line, "-A "), " ")
				t[c] = append(t[c], r)
			case strings.HasPrefix(line, "-D "):
				c, r, _ := strings.Cut(strings.TrimPrefix(line, "-D "), " ")
				i := slices.Index(t[c], r)
				if i < 0 {
					return "", fmt.Errorf("%s: -D %s %s: no such rule", name, c, r)
				}
				t[c] = slices.Delete(t[c], i, i+1)
			case strings.HasPrefix(line, "-X "):
				c := strings.TrimPrefix(line, "-X ")
				if len(t[c]) != 0 {
					return "", fmt.Errorf("%s: -X %s: chain not empty", name, c)
				}
				delete(t, c)
				f.order[m] = slices.DeleteFunc(f.order[m], func(s string) bool { return s == c })
			}
		}
		return "", nil
	}
	return "", fmt.Errorf("unexpected command %s", name)
}

func applier(f *fakeIPTables, m Mode) *Applier {
	return &Applier{Mode: m, Runner: f, LookPath: f.lookPath, Log: slog.New(slog.NewTextHandler(io.Discard, nil))}
}

var allCommands = []string{"iptables-nft-save", "iptables-nft-restore", "iptables-legacy-save", "iptables-legacy-restore"}

func TestApplyIsIdempotent(t *testing.T) {
	rs, err := Rules(DefaultOptions())
	if err != nil {
		t.Fatal(err)
	}
	f := newFake(allCommands...)
	a := applier(f, ModeNFT)
	first, err := a.Apply(context.Background(), rs)
	if err != nil {
		t.Fatal(err)
	}
	if !first.Changed || first.Backend.Mode != ModeNFT {
		t.Fatalf("first Apply = %+v, want a change with nft", first)
	}
	if got := f.tables[ModeNFT]["OUTPUT"]; len(got) != 1 {
		t.Fatalf("OUTPUT after first run = %q, want one jump", got)
	}
	f.calls = nil
	second, err := a.Apply(context.Background(), rs)
	if err != nil {
		t.Fatal(err)
	}
	if second.Changed {
		t.Errorf("second Apply changed the table:\n%s", second.Applied)
	}
	for _, c := range f.calls {
		if strings.Contains(c, "restore") {
			t.Errorf("second Apply ran %q; want only a save", c)
		}
	}
	if got := f.tables[ModeNFT]["OUTPUT"]; len(got) != 1 {
		t.Errorf("OUTPUT after second run = %q, want still one jump", got)
	}
	if len(f.tables[ModeLegacy]) != 0 {
		t.Errorf("nft mode touched the legacy table: %v", f.tables[ModeLegacy])
	}
}

func TestApplyUpdatesChangedOptionsWithoutDuplicatingJumps(t *testing.T) {
	f := newFake(allCommands...)
	a := applier(f, ModeLegacy)
	rs1, _ := Rules(DefaultOptions())
	o := DefaultOptions()
	o.SkipOutboundPorts = []PortRange{{5432, 5432}}
	rs2, _ := Rules(o)
	for _, rs := range []RuleSet{rs1, rs2} {
		if _, err := a.Apply(context.Background(), rs); err != nil {
			t.Fatal(err)
		}
	}
	tbl := f.tables[ModeLegacy]
	if len(tbl["OUTPUT"]) != 1 || len(tbl["PREROUTING"]) != 1 {
		t.Errorf("jumps duplicated: OUTPUT %q PREROUTING %q", tbl["OUTPUT"], tbl["PREROUTING"])
	}
	if !strings.Contains(strings.Join(tbl[ChainOutput], "\n"), "--dport 5432 -j RETURN") {
		t.Errorf("WEFT_OUTPUT lacks the new skip: %q", tbl[ChainOutput])
	}
}

func TestAutoMode(t *testing.T) {
	kubeLegacy := "*filter\n:INPUT ACCEPT [0:0]\n-A INPUT -j KUBE-FIREWALL\nCOMMIT\n"
	for _, tc := range []struct {
		name   string
		cmds   []string
		setup  func(*fakeIPTables)
		want   Mode
		errHas string
	}{
		{name: "both empty: nft", cmds: allCommands, want: ModeNFT},
		{name: "rules only in legacy: legacy", cmds: allCommands, setup: func(f *fakeIPTables) { f.other[ModeLegacy] = kubeLegacy }, want: ModeLegacy},
		{name: "rules in both: nft", cmds: allCommands, setup: func(f *fakeIPTables) { f.other[ModeLegacy] = kubeLegacy; f.other[ModeNFT] = kubeLegacy }, want: ModeNFT},
		{name: "nft kernel support missing: legacy", cmds: allCommands, setup: func(f *fakeIPTables) { f.failSave[ModeNFT] = true }, want: ModeLegacy},
		{name: "only legacy installed", cmds: []string{"iptables-legacy-save", "iptables-legacy-restore"}, want: ModeLegacy},
		{name: "plain names reporting nf_tables", cmds: []string{"iptables-save", "iptables-restore"}, want: ModeNFT},
		{name: "nothing installed", cmds: nil, errHas: "no iptables found"},
		{name: "nothing works", cmds: allCommands, setup: func(f *fakeIPTables) { f.failSave[ModeNFT] = true; f.failSave[ModeLegacy] = true }, errHas: "NET_ADMIN"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := newFake(tc.cmds...)
			if tc.setup != nil {
				tc.setup(f)
			}
			b, err := applier(f, ModeAuto).Backend(context.Background())
			if tc.errHas != "" {
				if err == nil || !strings.Contains(err.Error(), tc.errHas) {
					t.Fatalf("Backend() = %+v, %v; want an error containing %q", b, err, tc.errHas)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if b.Mode != tc.want {
				t.Errorf("Backend() = %+v, want %s", b, tc.want)
			}
		})
	}
}

func TestForcedModeMissingSaysWhatToDo(t *testing.T) {
	f := newFake("iptables-nft-save", "iptables-nft-restore")
	_, err := applier(f, ModeLegacy).Apply(context.Background(), RuleSet{})
	if err == nil || !strings.Contains(err.Error(), "no legacy iptables found") || !strings.Contains(err.Error(), "--iptables-mode") {
		t.Errorf("err = %v, want it to name legacy and --iptables-mode", err)
	}
}

func TestApplyPermissionDeniedSaysWhatToDo(t *testing.T) {
	f := newFake(allCommands...)
	f.restoreErr = "iptables-restore v1.8.9 (nf_tables): Could not fetch rule set generation id: Permission denied (you must be root)"
	rs, _ := Rules(DefaultOptions())
	_, err := applier(f, ModeNFT).Apply(context.Background(), rs)
	if err == nil || !strings.Contains(err.Error(), "NET_ADMIN") {
		t.Errorf("err = %v, want it to name NET_ADMIN", err)
	}
}

func TestParseMode(t *testing.T) {
	for in, want := range map[string]Mode{"": ModeAuto, "auto": ModeAuto, "NFT": ModeNFT, " legacy ": ModeLegacy} {
		if got, err := ParseMode(in); err != nil || got != want {
			t.Errorf("ParseMode(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
	if _, err := ParseMode("ipvs"); err == nil || !strings.Contains(err.Error(), "auto, nft, legacy") {
		t.Errorf("ParseMode(ipvs) error = %v", err)
	}
}

func TestApplyWarnsWhenTheOtherBackendHoldsWeftChains(t *testing.T) {
	rs, _ := Rules(DefaultOptions())
	f := newFake(allCommands...)
	if res, err := applier(f, ModeNFT).Apply(context.Background(), rs); err != nil || res.Warning != "" {
		t.Fatalf("first Apply = %+v, %v; want no warning", res, err)
	}
	res, err := applier(f, ModeLegacy).Apply(context.Background(), rs)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(res.Warning, "nft nat table also holds Weft's chains") {
		t.Errorf("Warning = %q, want it to name the nft table", res.Warning)
	}
}
