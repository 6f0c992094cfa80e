package iptables

import (
	"context"
	"strings"
	"testing"
)

func TestRemovePlan(t *testing.T) {
	noJumps := strings.NewReplacer("-A PREROUTING -p tcp -j WEFT_INBOUND\n", "", "[4:240] -A OUTPUT -p tcp -j WEFT_OUTPUT\n", "").Replace(savedDefaults)
	twoJumps := strings.Replace(savedDefaults, "-A POSTROUTING -o eth9 -j MASQUERADE\n", "-A POSTROUTING -o eth9 -j MASQUERADE\n-A OUTPUT -d 10.0.0.0/8 -j WEFT_OUTPUT\n", 1)
	for _, tc := range []struct {
		name, saved string
	}{
		{"remove-everything", savedDefaults},
		{"remove-chains-without-jumps", noJumps},
		{"remove-a-second-jump", twoJumps},
		{"remove-from-empty-table", "*nat\n:PREROUTING ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n-A POSTROUTING -o eth9 -j MASQUERADE\nCOMMIT\n"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			table, err := ParseSave(tc.saved)
			if err != nil {
				t.Fatal(err)
			}
			golden(t, tc.name, RemovePlan(table))
		})
	}
}

func TestRemoveAfterApplyLeavesTheTableAsBefore(t *testing.T) {
	rs, _ := Rules(DefaultOptions())
	f := newFake(allCommands...)
	f.tables[ModeNFT] = map[string][]string{"POSTROUTING": {"-o eth0 -j MASQUERADE"}}
	if _, err := applier(f, ModeNFT).Apply(context.Background(), rs); err != nil {
		t.Fatal(err)
	}
	if err := applier(f, ModeAuto).Check(context.Background(), rs); err != nil {
		t.Fatalf("Check after Apply: %v", err)
	}
	res, err := applier(f, ModeAuto).Remove(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if !res.Changed {
		t.Fatalf("Remove = %+v, want a change", res)
	}
	tbl := f.tables[ModeNFT]
	for _, c := range weftChains {
		if _, ok := tbl[c]; ok {
			t.Errorf("chain %s still there after Remove", c)
		}
	}
	if len(tbl["OUTPUT"]) != 0 || len(tbl["PREROUTING"]) != 0 {
		t.Errorf("jumps left: OUTPUT %q PREROUTING %q", tbl["OUTPUT"], tbl["PREROUTING"])
	}
	if got := tbl["POSTROUTING"]; len(got) != 1 {
		t.Errorf("Remove touched another chain: POSTROUTING %q", got)
	}
	err = applier(f, ModeAuto).Check(context.Background(), rs)
	if err == nil || !strings.Contains(err.Error(), "does not hold Weft's interception rules") || !strings.Contains(err.Error(), "-A OUTPUT -p tcp -j WEFT_OUTPUT") {
		t.Errorf("Check after Remove = %v; want it to say the rules are missing and show them", err)
	}
	f.calls = nil
	if res, err := applier(f, ModeAuto).Remove(context.Background()); err != nil || res.Changed {
		t.Errorf("second Remove = %+v, %v; want no change", res, err)
	}
	for _, c := range f.calls {
		if strings.Contains(c, "restore") {
			t.Errorf("second Remove ran %q", c)
		}
	}
}

func TestRemoveCleansBothBackends(t *testing.T) {
	rs, _ := Rules(DefaultOptions())
	f := newFake(allCommands...)
	for _, m := range []Mode{ModeNFT, ModeLegacy} {
		if _, err := applier(f, m).Apply(context.Background(), rs); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := applier(f, ModeAuto).Remove(context.Background()); err != nil {
		t.Fatal(err)
	}
	for _, m := range []Mode{ModeNFT, ModeLegacy} {
		for c, rules := range f.tables[m] {
			if strings.HasPrefix(c, "WEFT_") || strings.Contains(strings.Join(rules, "\n"), "WEFT_") {
				t.Errorf("%s table still holds %s: %q", m, c, rules)
			}
		}
	}
}
