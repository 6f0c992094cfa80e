package iptables

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os/exec"
	"strings"
)

// Mode chooses the iptables backend.
type Mode string

const (
	ModeAuto   Mode = "auto"   // legacy when only the legacy tables hold rules, else nft
	ModeNFT    Mode = "nft"    // iptables-nft: the nf_tables kernel API
	ModeLegacy Mode = "legacy" // iptables-legacy: the x_tables kernel API
)

// ParseMode reads --iptables-mode.
func ParseMode(s string) (Mode, error) {
	switch m := Mode(strings.ToLower(strings.TrimSpace(s))); m {
	case ModeAuto, ModeNFT, ModeLegacy:
		return m, nil
	case "":
		return ModeAuto, nil
	}
	return "", fmt.Errorf("iptables mode %q is not one of auto, nft, legacy", s)
}

// Runner runs a command with stdin and returns its standard output. Its error, for a command that
// ran and failed, should carry the command's standard error.
type Runner interface {
	Run(ctx context.Context, stdin, name string, args ...string) (string, error)
}

// ExecRunner runs commands as child processes.
type ExecRunner struct{}

// Run implements Runner.
func (ExecRunner) Run(ctx context.Context, stdin, name string, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Stdin = strings.NewReader(stdin)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		msg := strings.TrimSpace(stderr.String())
		if msg == "" {
			return stdout.String(), fmt.Errorf("%s: %w", name, err)
		}
		return stdout.String(), fmt.Errorf("%s: %w: %s", name, err, msg)
	}
	return stdout.String(), nil
}

// Backend is a resolved iptables backend: the save and restore commands to run.
type Backend struct {
	Mode    Mode // ModeNFT or ModeLegacy
	Save    string
	Restore string
}

// backendCommands lists, per mode, the command pairs to try: the explicit names first, then the plain
// names when `<save> --version` reports the wanted backend (distributions that ship only one).
var backendCommands = map[Mode][][2]string{
	ModeNFT:    {{"iptables-nft-save", "iptables-nft-restore"}, {"iptables-save", "iptables-restore"}},
	ModeLegacy: {{"iptables-legacy-save", "iptables-legacy-restore"}, {"iptables-save", "iptables-restore"}},
}

// versionMarker is what `iptables-save --version` prints for each backend.
var versionMarker = map[Mode]string{ModeNFT: "(nf_tables)", ModeLegacy: "(legacy)"}

// Applier programs a RuleSet into the nat table of the current network namespace.
type Applier struct {
	Mode     Mode                         // "" means ModeAuto
	Runner   Runner                       // nil means ExecRunner
	LookPath func(string) (string, error) // nil means exec.LookPath
	Log      *slog.Logger                 // nil means slog.Default()
	Wait     int                          // seconds to wait for the xtables lock (legacy); 0 means 10
}

// Result says what Apply did.
type Result struct {
	Backend Backend
	Changed bool   // false when the table already held the rule set
	Applied string // the iptables-restore input that was applied ("" when nothing changed)
	// Warning, when not empty, says that the other backend's nat table also holds Weft's chains (an
	// earlier run with another mode): both apply to every packet.
	Warning string
}

func (a *Applier) runner() Runner {
	if a.Runner == nil {
		return ExecRunner{}
	}
	return a.Runner
}

func (a *Applier) log() *slog.Logger {
	if a.Log == nil {
		return slog.Default()
	}
	return a.Log
}

// resolve finds the commands of one backend, or says why there are none.
func (a *Applier) resolve(ctx context.Context, m Mode) (Backend, error) {
	look := a.LookPath
	if look == nil {
		look = exec.LookPath
	}
	var tried []string
	for _, pair := range backendCommands[m] {
		save, err1 := look(pair[0])
		restore, err2 := look(pair[1])
		tried = append(tried, pair[0])
		if err1 != nil || err2 != nil {
			continue
		}
		if pair[0] == "iptables-save" {
			out, err := a.runner().Run(ctx, "", save, "--version")
			if err != nil || !strings.Contains(out, versionMarker[m]) {
				continue
			}
		}
		return Backend{Mode: m, Save: save, Restore: restore}, nil
	}
	return Backend{}, fmt.Errorf("no %s iptables found (looked for %s); install the iptables package or choose another --iptables-mode", m, strings.Join(tried, ", "))
}

// Backend resolves the mode to the commands to run. In auto mode it saves with both backends and takes
// legacy only when legacy holds rules and nft holds none (a node whose kubelet and kube-proxy use
// legacy); otherwise nft, the default of current distributions. A backend whose save fails (kernel
// without nf_tables or ip_tables) is not chosen.
func (a *Applier) Backend(ctx context.Context) (Backend, error) {
	mode := a.Mode
	if mode == "" {
		mode = ModeAuto
	}
	if mode != ModeAuto {
		return a.resolve(ctx, mode)
	}
	nft, nftErr := a.resolve(ctx, ModeNFT)
	legacy, legacyErr := a.resolve(ctx, ModeLegacy)
	if nftErr != nil && legacyErr != nil {
		return Backend{}, fmt.Errorf("no iptables found: %w; %w", nftErr, legacyErr)
	}
	count := func(b Backend, err error) (int, bool) {
		if err != nil {
			return 0, false
		}
		out, err := a.runner().Run(ctx, "", b.Save)
		if err != nil {
			a.log().Debug("iptables backend unusable", "backend", b.Mode, "err", err)
			return 0, false
		}
		return strings.Count("\n"+out, "\n-A "), true
	}
	nftRules, nftOK := count(nft, nftErr)
	legacyRules, legacyOK := count(legacy, legacyErr)
	switch ChooseMode(nftRules, nftOK, legacyRules, legacyOK) {
	case ModeLegacy:
		return legacy, nil
	case ModeNFT:
		return nft, nil
	}
	return Backend{}, errors.New("neither iptables-nft-save nor iptables-legacy-save works here; weft-proxy init needs the NET_ADMIN and NET_RAW capabilities and a kernel with nf_tables or ip_tables")
}

// ChooseMode is auto mode's decision from the number of rules each backend's save printed (ok false: it
// failed). It returns "" when neither works.
func ChooseMode(nftRules int, nftOK bool, legacyRules int, legacyOK bool) Mode {
	switch {
	case legacyOK && legacyRules > 0 && (!nftOK || nftRules == 0):
		return ModeLegacy
	case nftOK:
		return ModeNFT
	case legacyOK:
		return ModeLegacy
	}
	return ""
}

// Apply makes the nat table of the current network namespace hold rs: it saves the table, plans, and
// restores the plan with --noflush (nothing else in the table changes). When the table already holds
// rs it changes nothing. Afterwards it saves again and checks the rules are there.
func (a *Applier) Apply(ctx context.Context, rs RuleSet) (Result, error) {
	b, err := a.Backend(ctx)
	if err != nil {
		return Result{}, err
	}
	res := Result{Backend: b}
	table, err := a.save(ctx, b)
	if err != nil {
		return res, err
	}
	res.Warning = a.otherBackendWarning(ctx, b)
	if res.Warning != "" {
		a.log().Warn(res.Warning)
	}
	plan := Plan(table, rs)
	if plan == "" {
		a.log().Info("iptables already programmed; nothing to change", "backend", b.Mode)
		return res, nil
	}
	wait := a.Wait
	if wait <= 0 {
		wait = 10
	}
	if _, err := a.runner().Run(ctx, plan, b.Restore, "--noflush", "--wait", fmt.Sprint(wait)); err != nil {
		return res, explain(fmt.Errorf("programming the nat table with %s: %w", b.Restore, err))
	}
	res.Changed, res.Applied = true, plan
	after, err := a.save(ctx, b)
	if err != nil {
		return res, err
	}
	if left := Plan(after, rs); left != "" {
		return res, fmt.Errorf("%s succeeded but %s does not show the rules; is another tool rewriting the nat table? still missing:\n%s", b.Restore, b.Save, left)
	}
	a.log().Info("iptables programmed", "backend", b.Mode)
	return res, nil
}

// otherBackendWarning looks for Weft's chains in the other backend's nat table.
func (a *Applier) otherBackendWarning(ctx context.Context, b Backend) string {
	other := map[Mode]Mode{ModeNFT: ModeLegacy, ModeLegacy: ModeNFT}[b.Mode]
	ob, err := a.resolve(ctx, other)
	if err != nil || ob.Save == b.Save {
		return ""
	}
	t, err := a.save(ctx, ob)
	if err != nil {
		return ""
	}
	for name := range t.Chains {
		if strings.HasPrefix(name, "WEFT_") {
			return fmt.Sprintf("the %s nat table also holds Weft's chains (from an earlier run with --iptables-mode %s); both backends apply to every packet: use one mode per pod, or delete the %s jumps to WEFT_* chains and the chains themselves", other, other, other)
		}
	}
	return ""
}

func (a *Applier) save(ctx context.Context, b Backend) (Table, error) {
	out, err := a.runner().Run(ctx, "", b.Save, "-t", "nat")
	if err != nil {
		return Table{}, explain(fmt.Errorf("reading the nat table with %s: %w", b.Save, err))
	}
	t, err := ParseSave(out)
	if err != nil {
		return Table{}, fmt.Errorf("reading the nat table with %s: %w", b.Save, err)
	}
	return t, nil
}

// explain adds what to do to the errors users meet most.
func explain(err error) error {
	msg := err.Error()
	switch {
	case strings.Contains(msg, "Permission denied") || strings.Contains(msg, "Operation not permitted"):
		return fmt.Errorf("%w\nweft-proxy init needs the NET_ADMIN and NET_RAW capabilities (run it as root in the init container)", err)
	case strings.Contains(msg, "Protocol not supported") || strings.Contains(msg, "does not exist"):
		return fmt.Errorf("%w\nthis kernel may lack the backend's modules; try the other --iptables-mode (nft or legacy)", err)
	}
	return err
}
