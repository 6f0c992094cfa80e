// Package iptables programs a pod's transparent interception, as an init container does: the nat table
// sends inbound TCP to the proxy's inbound port and outbound TCP to its outbound port, except the
// proxy's own traffic (by uid), loopback, the admin port and whatever the user asked to skip.
//
// The middle is pure: Rules turns Options into a RuleSet, and Plan turns a RuleSet and the table as
// iptables-save prints it into the iptables-restore input that makes the table right (nothing when it
// already is). The Applier at the edge picks the backend (nft or legacy), saves, plans and restores.
package iptables

import (
	"fmt"
	"net/netip"
	"slices"
	"sort"
	"strconv"
	"strings"
)

// The chains Weft owns in the nat table, in the spirit of Istio's ISTIO_* and Linkerd's PROXY_INIT_*.
const (
	ChainInbound    = "WEFT_INBOUND"     // jumped to from PREROUTING: decides which inbound TCP to capture
	ChainInRedirect = "WEFT_IN_REDIRECT" // REDIRECT to the inbound port
	ChainOutput     = "WEFT_OUTPUT"      // jumped to from OUTPUT: decides which outbound TCP to capture
	ChainRedirect   = "WEFT_REDIRECT"    // REDIRECT to the outbound port
)

// Defaults from DESIGN.md ("Conventions").
const (
	DefaultProxyUID     = 2102
	DefaultInboundPort  = 15006
	DefaultOutboundPort = 15001
	DefaultAdminPort    = 15000
)

// PortRange is one TCP port or an inclusive range of them, as in the config.weft.io/skip-*-ports
// annotations ("25", "8000-9000").
type PortRange struct{ From, To uint16 }

// String is the iptables spelling: "25" or "8000:9000".
func (r PortRange) String() string {
	if r.From == r.To {
		return strconv.Itoa(int(r.From))
	}
	return fmt.Sprintf("%d:%d", r.From, r.To)
}

// Contains reports whether port lies in the range.
func (r PortRange) Contains(port uint16) bool { return r.From <= port && port <= r.To }

// Options describe a pod's interception. The zero value of a port means its default.
type Options struct {
	ProxyUID     uint32 // traffic of this uid is never captured (the proxy's own connections)
	InboundPort  uint16 // where captured inbound TCP goes
	OutboundPort uint16 // where captured outbound TCP goes
	AdminPort    uint16 // never captured inbound (probes and scrapes reach the admin server directly)

	SkipInboundPorts  []PortRange    // inbound destination ports that bypass the proxy
	SkipOutboundPorts []PortRange    // outbound destination ports that bypass the proxy
	SkipSubnets       []netip.Prefix // outbound destinations that bypass the proxy (IPv4)
}

// DefaultOptions are the options with DESIGN.md's ports and uid and nothing skipped.
func DefaultOptions() Options {
	return Options{ProxyUID: DefaultProxyUID, InboundPort: DefaultInboundPort, OutboundPort: DefaultOutboundPort, AdminPort: DefaultAdminPort}
}

// Rule is one rule of a chain, spelled exactly as iptables-save prints it after "-A <chain> ", so that
// the rules found in a saved table can be compared with the wanted ones as strings.
type Rule = string

// Chain is one of Weft's chains with its rules in order.
type Chain struct {
	Name  string
	Rules []Rule
}

// Jump is a rule Weft adds to a built-in chain to enter its own chains.
type Jump struct {
	Chain string // built-in chain: PREROUTING or OUTPUT
	Rule  Rule
}

// RuleSet is the complete wanted state of Weft's part of the nat table.
type RuleSet struct {
	Chains []Chain
	Jumps  []Jump
}

// Rules returns the rule set for opts, or an error naming the first option that makes no sense.
func Rules(opts Options) (RuleSet, error) {
	o, err := opts.normalize()
	if err != nil {
		return RuleSet{}, err
	}

	inbound := []Rule{tcpPortReturn(PortRange{o.AdminPort, o.AdminPort})}
	for _, r := range o.SkipInboundPorts {
		inbound = append(inbound, tcpPortReturn(r))
	}
	inbound = append(inbound, "-p tcp -j "+ChainInRedirect)

	output := []Rule{
		fmt.Sprintf("-m owner --uid-owner %d -j RETURN", o.ProxyUID),
		"-o lo -j RETURN",
	}
	for _, p := range o.SkipSubnets {
		output = append(output, fmt.Sprintf("-d %s -j RETURN", p))
	}
	for _, r := range o.SkipOutboundPorts {
		output = append(output, tcpPortReturn(r))
	}
	output = append(output, "-p tcp -j "+ChainRedirect)

	return RuleSet{
		Chains: []Chain{
			{Name: ChainInbound, Rules: inbound},
			{Name: ChainInRedirect, Rules: []Rule{fmt.Sprintf("-p tcp -j REDIRECT --to-ports %d", o.InboundPort)}},
			{Name: ChainOutput, Rules: output},
			{Name: ChainRedirect, Rules: []Rule{fmt.Sprintf("-p tcp -j REDIRECT --to-ports %d", o.OutboundPort)}},
		},
		Jumps: []Jump{
			{Chain: "PREROUTING", Rule: "-p tcp -j " + ChainInbound},
			{Chain: "OUTPUT", Rule: "-p tcp -j " + ChainOutput},
		},
	}, nil
}

func tcpPortReturn(r PortRange) Rule { return fmt.Sprintf("-p tcp -m tcp --dport %s -j RETURN", r) }

// normalize fills defaults, checks the options, and sorts and deduplicates the skip lists so that the
// same options always give the same rules.
func (o Options) normalize() (Options, error) {
	if o.InboundPort == 0 {
		o.InboundPort = DefaultInboundPort
	}
	if o.OutboundPort == 0 {
		o.OutboundPort = DefaultOutboundPort
	}
	if o.AdminPort == 0 {
		o.AdminPort = DefaultAdminPort
	}
	if o.ProxyUID == 0 {
		return o, fmt.Errorf("proxy uid 0 (root) would exempt every root process from interception; run the proxy as its own uid (default %d)", DefaultProxyUID)
	}
	if o.InboundPort == o.OutboundPort {
		return o, fmt.Errorf("inbound port and outbound port are both %d; they must differ", o.InboundPort)
	}
	for name, port := range map[string]uint16{"inbound": o.InboundPort, "outbound": o.OutboundPort} {
		if port == o.AdminPort {
			return o, fmt.Errorf("%s port and admin port are both %d; they must differ", name, port)
		}
	}
	var err error
	if o.SkipInboundPorts, err = normalizePorts("skip inbound port", o.SkipInboundPorts); err != nil {
		return o, err
	}
	if o.SkipOutboundPorts, err = normalizePorts("skip outbound port", o.SkipOutboundPorts); err != nil {
		return o, err
	}
	subnets := make([]netip.Prefix, 0, len(o.SkipSubnets))
	for _, p := range o.SkipSubnets {
		if !p.IsValid() {
			return o, fmt.Errorf("skip subnet %v is not a valid CIDR", p)
		}
		bits := p.Bits()
		if p.Addr().Is4In6() { // ::ffff:10.0.0.0/104 is 10.0.0.0/8
			bits -= 96
		}
		if !p.Addr().Unmap().Is4() || bits < 0 {
			return o, fmt.Errorf("skip subnet %s is IPv6; weft-proxy init programs IPv4 iptables only, remove it", p)
		}
		subnets = append(subnets, netip.PrefixFrom(p.Addr().Unmap(), bits).Masked())
	}
	// sort.Slice, not slices.SortFunc: a generic sort of a struct type links its own copy of the sort
	// into weft-proxy (resident in every sidecar); sort.Slice is linked anyway.
	sort.Slice(subnets, func(i, j int) bool {
		if c := subnets[i].Addr().Compare(subnets[j].Addr()); c != 0 {
			return c < 0
		}
		return subnets[i].Bits() < subnets[j].Bits()
	})
	o.SkipSubnets = slices.Compact(subnets)
	return o, nil
}

func normalizePorts(what string, in []PortRange) ([]PortRange, error) {
	out := make([]PortRange, 0, len(in))
	for _, r := range in {
		if r.From == 0 || r.To == 0 {
			return nil, fmt.Errorf("%s 0 is not a TCP port (use 1-65535)", what)
		}
		if r.From > r.To {
			return nil, fmt.Errorf("%s range %d-%d is backwards; write it %d-%d", what, r.From, r.To, r.To, r.From)
		}
		out = append(out, r)
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].From != out[j].From {
			return out[i].From < out[j].From
		}
		return out[i].To < out[j].To
	})
	return slices.Compact(out), nil
}

// ParsePorts reads a list of ports and ranges as the config.weft.io/skip-*-ports annotations write
// them: "25,587,8000-9000" (spaces allowed, empty means none).
func ParsePorts(s string) ([]PortRange, error) {
	var out []PortRange
	for _, f := range strings.Split(s, ",") {
		f = strings.TrimSpace(f)
		if f == "" {
			continue
		}
		lo, hi, isRange := strings.Cut(f, "-")
		from, err := parsePort(lo)
		if err != nil {
			return nil, fmt.Errorf("port %q: %w", f, err)
		}
		to := from
		if isRange {
			if to, err = parsePort(hi); err != nil {
				return nil, fmt.Errorf("port range %q: %w", f, err)
			}
		}
		if from > to {
			return nil, fmt.Errorf("port range %q is backwards; write it %d-%d", f, to, from)
		}
		out = append(out, PortRange{from, to})
	}
	return out, nil
}

func parsePort(s string) (uint16, error) {
	n, err := strconv.ParseUint(strings.TrimSpace(s), 10, 16)
	if err != nil || n == 0 {
		return 0, fmt.Errorf("%q is not a TCP port (use 1-65535)", s)
	}
	return uint16(n), nil
}

// ParseSubnets reads a list of IPv4 CIDRs as config.weft.io/skip-subnets writes them:
// "10.0.0.0/8, 192.168.0.0/16". A bare address means that one host (/32).
func ParseSubnets(s string) ([]netip.Prefix, error) {
	var out []netip.Prefix
	for _, f := range strings.Split(s, ",") {
		f = strings.TrimSpace(f)
		if f == "" {
			continue
		}
		var p netip.Prefix
		var err error
		if strings.Contains(f, "/") {
			p, err = netip.ParsePrefix(f)
		} else {
			var a netip.Addr
			if a, err = netip.ParseAddr(f); err == nil {
				p = netip.PrefixFrom(a, a.BitLen())
			}
		}
		if err != nil {
			return nil, fmt.Errorf("subnet %q is not a CIDR such as 10.0.0.0/8", f)
		}
		out = append(out, p)
	}
	return out, nil
}

// Restore renders the whole rule set as iptables-restore input for the nat table (what --dry-run
// prints). Applied with --noflush to a table that lacks Weft's chains it gives the wanted state;
// Plan is what the applier uses, since it also copes with a table that already has them.
func (rs RuleSet) Restore() string {
	return rs.render(nil)
}

func (rs RuleSet) render(jumps []Jump) string {
	if jumps == nil {
		jumps = rs.Jumps
	}
	var b strings.Builder
	b.WriteString("*nat\n")
	for _, c := range rs.Chains {
		fmt.Fprintf(&b, ":%s - [0:0]\n", c.Name)
	}
	for _, c := range rs.Chains {
		for _, r := range c.Rules {
			fmt.Fprintf(&b, "-A %s %s\n", c.Name, r)
		}
	}
	for _, j := range jumps {
		fmt.Fprintf(&b, "-A %s %s\n", j.Chain, j.Rule)
	}
	b.WriteString("COMMIT\n")
	return b.String()
}

// Table is the nat table as iptables-save printed it: each chain's rules in order (without "-A chain").
type Table struct {
	Chains map[string][]Rule
}

// ParseSave reads the nat table out of iptables-save output (which may hold other tables too).
// Counters ("-c" or "[p:b]" prefixes) are ignored.
func ParseSave(save string) (Table, error) {
	t := Table{Chains: map[string][]Rule{}}
	inNat := false
	for i, line := range strings.Split(save, "\n") {
		line = strings.TrimSpace(line)
		switch {
		case line == "" || strings.HasPrefix(line, "#"):
		case strings.HasPrefix(line, "*"):
			inNat = line == "*nat"
		case !inNat:
		case line == "COMMIT":
			inNat = false
		case strings.HasPrefix(line, ":"):
			name, _, _ := strings.Cut(line[1:], " ")
			if _, ok := t.Chains[name]; !ok {
				t.Chains[name] = nil
			}
		default:
			if strings.HasPrefix(line, "[") { // iptables-save -c: "[packets:bytes] -A ..."
				if _, rest, ok := strings.Cut(line, "] "); ok {
					line = rest
				}
			}
			rest, ok := strings.CutPrefix(line, "-A ")
			if !ok {
				return Table{}, fmt.Errorf("iptables-save line %d: unexpected %q in the nat table", i+1, line)
			}
			name, rule, _ := strings.Cut(rest, " ")
			t.Chains[name] = append(t.Chains[name], rule)
		}
	}
	return t, nil
}

// Plan returns the iptables-restore input (for --noflush) that turns the current nat table into one
// holding rs, and "" when the table already holds it, so a second run changes nothing. Weft's chains
// are declared, which creates or flushes them, and refilled; a jump from a built-in chain is added only
// when it is absent. Nothing else in the table is touched.
func Plan(current Table, rs RuleSet) string {
	var missing []Jump
	for _, j := range rs.Jumps {
		if !slices.ContainsFunc(current.Chains[j.Chain], func(r Rule) bool { return sameRule(r, j.Rule) }) {
			missing = append(missing, j)
		}
	}
	chainsRight := true
	for _, c := range rs.Chains {
		have, ok := current.Chains[c.Name]
		if !ok || !slices.EqualFunc(have, c.Rules, sameRule) {
			chainsRight = false
			break
		}
	}
	if chainsRight && len(missing) == 0 {
		return ""
	}
	if missing == nil {
		missing = []Jump{}
	}
	return rs.render(missing)
}

// sameRule compares two rules as iptables-save versions may print them: whitespace and the implicit
// "-m tcp" match that some versions print and others omit do not matter.
func sameRule(a, b Rule) bool {
	return slices.Equal(ruleFields(a), ruleFields(b))
}

func ruleFields(r Rule) []string {
	f := strings.Fields(r)
	out := f[:0:0]
	for i := 0; i < len(f); i++ {
		if f[i] == "-m" && i+1 < len(f) && f[i+1] == "tcp" {
			i++
			continue
		}
		out = append(out, f[i])
	}
	return out
}
