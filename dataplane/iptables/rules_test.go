package iptables

import (
	"flag"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata/")

func golden(t *testing.T, name, got string) {
	t.Helper()
	path := filepath.Join("testdata", name+".golden")
	if *update {
		if err := os.WriteFile(path, []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run `go test ./dataplane/iptables -update` to create it)", err)
	}
	if d := cmp.Diff(string(want), got); d != "" {
		t.Errorf("%s differs from the golden file (-want +got); if the change is meant, rerun with -update:\n%s", path, d)
	}
}

func mustPorts(t *testing.T, s string) []PortRange {
	t.Helper()
	p, err := ParsePorts(s)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func mustSubnets(t *testing.T, s string) []netip.Prefix {
	t.Helper()
	p, err := ParseSubnets(s)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func TestRulesGolden(t *testing.T) {
	for _, tc := range []struct {
		name string
		opts func(*Options)
	}{
		{"defaults", func(*Options) {}},
		{"skips", func(o *Options) {
			o.SkipInboundPorts = mustPorts(t, "9090, 22,8000-8100,22")
			o.SkipOutboundPorts = mustPorts(t, "5432,3306")
			o.SkipSubnets = mustSubnets(t, "192.168.1.7/16, 10.0.0.0/8,169.254.169.254")
		}},
		{"custom-ports", func(o *Options) {
			o.ProxyUID = 1337
			o.InboundPort = 4143
			o.OutboundPort = 4140
			o.AdminPort = 4191
		}},
		{"zero-ports-mean-defaults", func(o *Options) { *o = Options{ProxyUID: DefaultProxyUID} }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			o := DefaultOptions()
			tc.opts(&o)
			rs, err := Rules(o)
			if err != nil {
				t.Fatal(err)
			}
			golden(t, tc.name, rs.Restore())
		})
	}
}

func TestRulesNeverCaptureProxyLoopbackAdminOrSkipped(t *testing.T) {
	o := DefaultOptions()
	o.SkipInboundPorts = mustPorts(t, "22")
	o.SkipOutboundPorts = mustPorts(t, "5432")
	o.SkipSubnets = mustSubnets(t, "10.0.0.0/8")
	rs, err := Rules(o)
	if err != nil {
		t.Fatal(err)
	}
	chains := map[string][]Rule{}
	for _, c := range rs.Chains {
		chains[c.Name] = c.Rules
	}
	// Every exemption must come before the final capture rule of its chain.
	for _, tc := range []struct{ chain, exemption string }{
		{ChainOutput, "-m owner --uid-owner 2102 -j RETURN"},
		{ChainOutput, "-o lo -j RETURN"},
		{ChainOutput, "-d 10.0.0.0/8 -j RETURN"},
		{ChainOutput, "-p tcp -m tcp --dport 5432 -j RETURN"},
		{ChainInbound, "-p tcp -m tcp --dport 15000 -j RETURN"},
		{ChainInbound, "-p tcp -m tcp --dport 22 -j RETURN"},
	} {
		rules := chains[tc.chain]
		i := indexOf(rules, tc.exemption)
		if i < 0 {
			t.Errorf("%s lacks %q: %q", tc.chain, tc.exemption, rules)
			continue
		}
		if last := len(rules) - 1; i >= last || !strings.HasPrefix(rules[last], "-p tcp -j WEFT_") {
			t.Errorf("%s: exemption %q is not before the capture rule: %q", tc.chain, tc.exemption, rules)
		}
	}
}

func indexOf(rules []Rule, r Rule) int {
	for i, x := range rules {
		if x == r {
			return i
		}
	}
	return -1
}

func TestRulesRejectsNonsense(t *testing.T) {
	for _, tc := range []struct {
		name string
		opts func(*Options)
		want string
	}{
		{"root uid", func(o *Options) { o.ProxyUID = 0 }, "proxy uid 0"},
		{"same ports", func(o *Options) { o.OutboundPort = o.InboundPort }, "must differ"},
		{"admin is inbound", func(o *Options) { o.AdminPort = o.InboundPort }, "inbound port and admin port"},
		{"backwards range", func(o *Options) { o.SkipOutboundPorts = []PortRange{{9000, 8000}} }, "backwards"},
		{"port zero", func(o *Options) { o.SkipInboundPorts = []PortRange{{0, 0}} }, "not a TCP port"},
		{"ipv6 subnet", func(o *Options) { o.SkipSubnets = []netip.Prefix{netip.MustParsePrefix("fd00::/8")} }, "IPv6"},
		{"invalid subnet", func(o *Options) { o.SkipSubnets = []netip.Prefix{{}} }, "not a valid CIDR"},
		{"ipv4-mapped subnet wider than IPv4", func(o *Options) { o.SkipSubnets = []netip.Prefix{netip.MustParsePrefix("::ffff:10.0.0.0/90")} }, "IPv6"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			o := DefaultOptions()
			tc.opts(&o)
			_, err := Rules(o)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Rules() error = %v, want one containing %q", err, tc.want)
			}
		})
	}
}

// An IPv4-mapped IPv6 skip subnet is its IPv4 CIDR (it rendered "-d invalid Prefix" before).
func TestRulesTakeIPv4MappedSubnets(t *testing.T) {
	o := DefaultOptions()
	o.SkipSubnets = []netip.Prefix{netip.MustParsePrefix("::ffff:10.1.2.3/104"), netip.MustParsePrefix("::ffff:192.168.1.7/128")}
	rs, err := Rules(o)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, r := range rs.Chains[2].Rules {
		if strings.HasPrefix(r, "-d ") {
			got = append(got, r)
		}
	}
	if d := cmp.Diff([]string{"-d 10.0.0.0/8 -j RETURN", "-d 192.168.1.7/32 -j RETURN"}, got); d != "" {
		t.Errorf("subnet rules (-want +got):\n%s", d)
	}
}

func TestParsePorts(t *testing.T) {
	for _, tc := range []struct {
		in      string
		want    []PortRange
		wantErr string
	}{
		{in: "", want: nil},
		{in: " 25, 587 ,8000-9000,", want: []PortRange{{25, 25}, {587, 587}, {8000, 9000}}},
		{in: "http", wantErr: `"http" is not a TCP port`},
		{in: "70000", wantErr: "not a TCP port"},
		{in: "0", wantErr: "not a TCP port"},
		{in: "9-3", wantErr: "backwards; write it 3-9"},
		{in: "5-", wantErr: "not a TCP port"},
	} {
		got, err := ParsePorts(tc.in)
		if tc.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Errorf("ParsePorts(%q) error = %v, want %q", tc.in, err, tc.wantErr)
			}
			continue
		}
		if err != nil {
			t.Errorf("ParsePorts(%q): %v", tc.in, err)
		}
		if d := cmp.Diff(tc.want, got); d != "" {
			t.Errorf("ParsePorts(%q) (-want +got):\n%s", tc.in, d)
		}
	}
}

func TestParseSubnets(t *testing.T) {
	got, err := ParseSubnets("10.0.0.0/8, 1.2.3.4 ,")
	if err != nil {
		t.Fatal(err)
	}
	want := []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8"), netip.MustParsePrefix("1.2.3.4/32")}
	if d := cmp.Diff(want, got, cmp.Comparer(func(a, b netip.Prefix) bool { return a == b })); d != "" {
		t.Errorf("(-want +got):\n%s", d)
	}
	if _, err := ParseSubnets("10.0.0.0/33"); err == nil || !strings.Contains(err.Error(), "not a CIDR") {
		t.Errorf("ParseSubnets(10.0.0.0/33) error = %v", err)
	}
}

// saved is what iptables-save prints for a nat table that holds exactly the default rule set, plus
// someone else's rule, with counters.
const savedDefaults = `# Generated by iptables-save v1.8.9 on Mon Nov 23 15:39:19 2026
*filter
:INPUT ACCEPT [0:0]
-A INPUT -j ACCEPT
COMMIT
*nat
:PREROUTING ACCEPT [3:180]
:INPUT ACCEPT [0:0]
:OUTPUT ACCEPT [1:60]
:POSTROUTING ACCEPT [1:60]
:WEFT_INBOUND - [0:0]
:WEFT_IN_REDIRECT - [0:0]
:WEFT_OUTPUT - [0:0]
:WEFT_REDIRECT - [0:0]
-A PREROUTING -p tcp -j WEFT_INBOUND
[4:240] -A OUTPUT -p tcp -j WEFT_OUTPUT
-A POSTROUTING -o eth9 -j MASQUERADE
-A WEFT_INBOUND -p tcp -m tcp --dport 15000 -j RETURN
-A WEFT_INBOUND -p tcp -j WEFT_IN_REDIRECT
-A WEFT_IN_REDIRECT -p tcp -j REDIRECT --to-ports 15006
-A WEFT_OUTPUT -m owner --uid-owner 2102 -j RETURN
-A WEFT_OUTPUT -o lo -j RETURN
-A WEFT_OUTPUT -p tcp -j WEFT_REDIRECT
-A WEFT_REDIRECT -p tcp -j REDIRECT --to-ports 15001
COMMIT
# Completed on Mon Nov 23 15:39:19 2026
`

func TestPlan(t *testing.T) {
	defaults, err := Rules(DefaultOptions())
	if err != nil {
		t.Fatal(err)
	}
	withSkip := DefaultOptions()
	withSkip.SkipOutboundPorts = []PortRange{{5432, 5432}}
	skipping, err := Rules(withSkip)
	if err != nil {
		t.Fatal(err)
	}
	noJumps := strings.NewReplacer("-A PREROUTING -p tcp -j WEFT_INBOUND\n", "", "[4:240] -A OUTPUT -p tcp -j WEFT_OUTPUT\n", "").Replace(savedDefaults)
	onlyOutputJump := strings.Replace(savedDefaults, "-A PREROUTING -p tcp -j WEFT_INBOUND\n", "", 1)

	for _, tc := range []struct {
		name  string
		saved string
		rs    RuleSet
	}{
		{"plan-empty-table", "*nat\n:PREROUTING ACCEPT [0:0]\n:INPUT ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n:POSTROUTING ACCEPT [0:0]\nCOMMIT\n", defaults},
		{"plan-nothing-saved", "", defaults},
		{"plan-already-done", savedDefaults, defaults},
		{"plan-options-changed", savedDefaults, skipping},
		{"plan-jumps-removed", noJumps, defaults},
		{"plan-one-jump-removed", onlyOutputJump, defaults},
	} {
		t.Run(tc.name, func(t *testing.T) {
			table, err := ParseSave(tc.saved)
			if err != nil {
				t.Fatal(err)
			}
			golden(t, tc.name, Plan(table, tc.rs))
		})
	}
}

func TestPlanAfterApplyingItIsEmpty(t *testing.T) {
	// Simulate iptables-restore --noflush: apply the plan to the saved table, then plan again.
	rs, err := Rules(DefaultOptions())
	if err != nil {
		t.Fatal(err)
	}
	table, err := ParseSave(rs.Restore())
	if err != nil {
		t.Fatal(err)
	}
	if p := Plan(table, rs); p != "" {
		t.Errorf("planning against the table Restore() describes gave\n%s\nwant nothing", p)
	}
}

func TestParseSaveRejectsGarbageInNat(t *testing.T) {
	if _, err := ParseSave("*nat\n-I OUTPUT -j X\nCOMMIT\n"); err == nil {
		t.Error("ParseSave accepted a line that is not -A in the nat table")
	}
}

func TestPlanToleratesSpellingDifferences(t *testing.T) {
	rs, err := Rules(DefaultOptions())
	if err != nil {
		t.Fatal(err)
	}
	other := strings.NewReplacer(" -m tcp --dport", " --dport", "-o lo -j RETURN", "-o lo  -j RETURN").Replace(savedDefaults)
	table, err := ParseSave(other)
	if err != nil {
		t.Fatal(err)
	}
	if p := Plan(table, rs); p != "" {
		t.Errorf("a save without the implicit -m tcp was not recognised as done; plan:\n%s", p)
	}
}
