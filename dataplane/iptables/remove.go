package iptables

import (
	"context"
	"fmt"
	"slices"
	"sort"
	"strings"
)

// weftChains are the chains Weft owns, in the order Rules declares them.
var weftChains = []string{ChainInbound, ChainInRedirect, ChainOutput, ChainRedirect}

// RemovePlan returns the iptables-restore input (for --noflush) that takes Weft's part out of the
// current nat table: every rule of another chain that jumps to one of Weft's chains is deleted, and
// Weft's chains are flushed and deleted. It returns "" when the table holds nothing of Weft's, so a
// second removal changes nothing. Nothing else in the table is touched.
func RemovePlan(current Table) string {
	var present []string
	for _, c := range weftChains {
		if _, ok := current.Chains[c]; ok {
			present = append(present, c)
		}
	}
	type del struct{ chain, rule string }
	var dels []del
	others := make([]string, 0, len(current.Chains))
	for name := range current.Chains {
		if !slices.Contains(weftChains, name) {
			others = append(others, name)
		}
	}
	sort.Strings(others)
	for _, name := range others {
		for _, r := range current.Chains[name] {
			if target := jumpTarget(r); slices.Contains(weftChains, target) {
				dels = append(dels, del{name, r})
			}
		}
	}
	if len(present) == 0 && len(dels) == 0 {
		return ""
	}
	var b strings.Builder
	b.WriteString("*nat\n")
	for _, c := range present { // declaring a chain with --noflush empties it, so -X can delete it
		fmt.Fprintf(&b, ":%s - [0:0]\n", c)
	}
	for _, d := range dels {
		fmt.Fprintf(&b, "-D %s %s\n", d.chain, d.rule)
	}
	for _, c := range present {
		fmt.Fprintf(&b, "-X %s\n", c)
	}
	b.WriteString("COMMIT\n")
	return b.String()
}

// jumpTarget is the chain a rule jumps to ("-j NAME" or "-g NAME"), or "".
func jumpTarget(r Rule) string {
	f := strings.Fields(r)
	for i := 0; i+1 < len(f); i++ {
		if f[i] == "-j" || f[i] == "-g" {
			return f[i+1]
		}
	}
	return ""
}

// Check reads the nat table of the current network namespace and returns nil when it holds rs, else
// an error saying what is missing. In auto mode it reads the backend Apply would have chosen.
func (a *Applier) Check(ctx context.Context, rs RuleSet) error {
	b, err := a.Backend(ctx)
	if err != nil {
		return err
	}
	table, err := a.save(ctx, b)
	if err != nil {
		return err
	}
	if left := Plan(table, rs); left != "" {
		return fmt.Errorf("the nat table (%s backend) does not hold Weft's interception rules; what is missing or different, as iptables-restore input:\n%s", b.Mode, left)
	}
	return nil
}

// Remove takes Weft's chains and the jumps to them out of the nat table of the current network
// namespace, in every backend that holds them (nft and legacy both, if an earlier run used both),
// and checks they are gone. Removing from a table without them changes nothing. Result.Applied holds
// what was restored, backend by backend.
func (a *Applier) Remove(ctx context.Context) (Result, error) {
	var (
		res      Result
		usable   int
		lastErr  error
		appliedB strings.Builder
	)
	wait := a.Wait
	if wait <= 0 {
		wait = 10
	}
	modes := []Mode{ModeNFT, ModeLegacy}
	if a.Mode == ModeNFT || a.Mode == ModeLegacy {
		modes = []Mode{a.Mode}
	}
	seen := map[string]bool{}
	for _, m := range modes {
		b, err := a.resolve(ctx, m)
		if err != nil {
			lastErr = err
			continue
		}
		if seen[b.Save] { // plain iptables-save serving as both names
			continue
		}
		seen[b.Save] = true
		table, err := a.save(ctx, b)
		if err != nil {
			lastErr = err
			continue
		}
		usable++
		if res.Backend.Mode == "" {
			res.Backend = b
		}
		plan := RemovePlan(table)
		if plan == "" {
			continue
		}
		res.Backend = b
		if _, err := a.runner().Run(ctx, plan, b.Restore, "--noflush", "--wait", fmt.Sprint(wait)); err != nil {
			return res, explain(fmt.Errorf("removing Weft's rules with %s: %w", b.Restore, err))
		}
		res.Changed = true
		appliedB.WriteString(plan)
		after, err := a.save(ctx, b)
		if err != nil {
			return res, err
		}
		if left := RemovePlan(after); left != "" {
			return res, fmt.Errorf("%s succeeded but %s still shows Weft's rules; is another tool rewriting the nat table? still there:\n%s", b.Restore, b.Save, left)
		}
		a.log().Info("iptables rules removed", "backend", b.Mode)
	}
	res.Applied = appliedB.String()
	if usable == 0 {
		if lastErr == nil {
			lastErr = fmt.Errorf("no iptables backend found")
		}
		return res, lastErr
	}
	return res, nil
}
