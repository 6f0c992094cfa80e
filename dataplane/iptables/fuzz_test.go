package iptables

import (
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"testing"
)

// FuzzRules: the config.weft.io/skip-inbound-ports, skip-outbound-ports and skip-subnets annotations
// as weft-proxy init reads them, through ParsePorts/ParseSubnets, Rules and Restore. Whatever the
// values, nothing panics; for values that are accepted, the restore text parses back (ParseSave) to
// exactly the rule set, so that Plan then has nothing to do; it returns only for the admin port and
// the ports given, and only for IPv4 subnets given; and it has no line but the ones Weft writes.
func FuzzRules(f *testing.F) {
	f.Add("", "", "")
	f.Add("25,587,8000-9000", "3306", "10.0.0.0/8, 192.168.0.0/16")
	f.Add(" 22 , 22,1-65535", "80-80", "169.254.169.254")
	f.Add("0", "65536", "10.0.0.0/40")
	f.Add("9000-8000", "-", "fd00::/8")
	f.Add("80\n-A OUTPUT -j ACCEPT", "1-2-3", "")
	f.Add("", "", "::ffff:10.0.0.0/104")
	f.Add("+80", "0x50", "10.0.0.1/32,10.0.0.1")
	f.Fuzz(func(t *testing.T, inbound, outbound, subnets string) {
		in, err1 := ParsePorts(inbound)
		out, err2 := ParsePorts(outbound)
		nets, err3 := ParseSubnets(subnets)
		for _, err := range []error{err1, err2, err3} {
			if err != nil && err.Error() == "" {
				t.Fatal("empty error")
			}
		}
		if err1 != nil || err2 != nil || err3 != nil {
			return
		}
		opts := DefaultOptions()
		opts.SkipInboundPorts, opts.SkipOutboundPorts, opts.SkipSubnets = in, out, nets
		rs, err := Rules(opts)
		if err != nil {
			if !strings.Contains(err.Error(), "IPv6") {
				t.Fatalf("parsed values %q %q %q rejected by Rules: %v", inbound, outbound, subnets, err)
			}
			return
		}
		text := rs.Restore()
		table, err := ParseSave(text)
		if err != nil {
			t.Fatalf("restore text does not parse back: %v\n%s", err, text)
		}
		lines := 2 + len(rs.Chains) + len(rs.Jumps)
		for _, c := range rs.Chains {
			lines += len(c.Rules)
			if !slices.Equal(table.Chains[c.Name], c.Rules) {
				t.Fatalf("chain %s parsed back as %q, want %q", c.Name, table.Chains[c.Name], c.Rules)
			}
		}
		if n := strings.Count(text, "\n"); n != lines {
			t.Fatalf("restore text has %d lines, want %d:\n%s", n, lines, text)
		}
		if p := Plan(table, rs); p != "" {
			t.Fatalf("Plan after applying the rules is not empty:\n%s", p)
		}
		for _, c := range rs.Chains {
			for _, r := range c.Rules {
				f := strings.Fields(r)
				for i := 0; i+1 < len(f); i++ {
					switch f[i] {
					case "--dport":
						from, to, _ := strings.Cut(f[i+1], ":")
						if to == "" {
							to = from
						}
						a, err1 := strconv.ParseUint(from, 10, 16)
						b, err2 := strconv.ParseUint(to, 10, 16)
						if err1 != nil || err2 != nil || a == 0 || a > b {
							t.Fatalf("rule %q: bad port %q", r, f[i+1])
						}
						given := out
						if c.Name == ChainInbound {
							given = append([]PortRange{{DefaultAdminPort, DefaultAdminPort}}, in...)
						}
						if !slices.ContainsFunc(given, func(g PortRange) bool { return g.Contains(uint16(a)) && g.Contains(uint16(b)) }) {
							t.Fatalf("rule %q in %s returns ports %s, not among those given %v", r, c.Name, f[i+1], given)
						}
					case "-d":
						p, err := netip.ParsePrefix(f[i+1])
						if err != nil || !p.Addr().Is4() || p != p.Masked() {
							t.Fatalf("rule %q: %q is not a masked IPv4 CIDR", r, f[i+1])
						}
						if !slices.ContainsFunc(nets, func(g netip.Prefix) bool { return asIPv4(g) == p }) {
							t.Fatalf("rule %q returns %s, not among the subnets given %v", r, p, nets)
						}
					}
				}
			}
		}
	})
}

// asIPv4 is g as an IPv4 CIDR (an IPv4-mapped IPv6 one converted), masked.
func asIPv4(g netip.Prefix) netip.Prefix {
	bits := g.Bits()
	if g.Addr().Is4In6() {
		bits -= 96
	}
	return netip.PrefixFrom(g.Addr().Unmap(), bits).Masked()
}
