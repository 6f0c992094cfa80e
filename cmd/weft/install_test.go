package main

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"
	"sigs.k8s.io/yaml"

	"github.com/weftmesh/weft/conformance/prereq"
)

// TestInstallBadInput: each user mistake is one line that names the flag (and says what to do),
// never a stack trace or a half-written manifest.
func TestInstallBadInput(t *testing.T) {
	dir := t.TempDir()
	notYAML := filepath.Join(dir, "values.yaml")
	if err := os.WriteFile(notYAML, []byte("controlPlane: [replicas: 2\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	notAMap := filepath.Join(dir, "list.yaml")
	if err := os.WriteFile(notAMap, []byte("- a\n- b\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	expiring := filepath.Join(dir, "expiring-ca")
	if _, err := runWeft(t, "identity", "bootstrap", "--out", expiring, "--issuer-lifetime", "240h"); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		args []string
		want []string // each in the error
	}{
		{"no replicas", []string{"--replicas", "0"}, []string{"--replicas 0: want at least 1"}},
		{"negative replicas", []string{"--replicas", "-2"}, []string{"--replicas -2: want at least 1"}},
		{"replicas not a number", []string{"--replicas", "three"}, []string{`invalid argument "three" for "--replicas"`}},
		{"bad namespace", []string{"--namespace", "Bad_NS"}, []string{`--namespace "Bad_NS"`, "RFC 1123"}},
		{"bad memory limit", []string{"--proxy-memory-limit", "64XB"}, []string{`--proxy-memory-limit "64XB": want a Kubernetes quantity`}},
		{"bad cpu request", []string{"--proxy-cpu-request", "ten"}, []string{`--proxy-cpu-request "ten"`}},
		{"bad log level", []string{"--log-level", "loud"}, []string{`--log-level "loud": want debug, info, warn or error`}},
		{"bad proxy log level", []string{"--proxy-log-level", "trace"}, []string{`--proxy-log-level "trace"`}},
		{"bad trust domain", []string{"--trust-domain", "Not A Domain"}, []string{"--trust-domain"}},
		{"values not YAML", []string{"--values", notYAML}, []string{"--values " + notYAML + " is not YAML: yaml: line 1"}},
		{"values not a map", []string{"--values", notAMap}, []string{"--values " + notAMap + ": want a map of chart values"}},
		{"values missing", []string{"--values", filepath.Join(dir, "nope.yaml")}, []string{"--values", "no such file"}},
		{"set without =", []string{"--set", "controlPlane.replicas"}, []string{"--set controlPlane.replicas", "want key=value"}},
		{"set of a misspelt value", []string{"--set", "contolPlane.replicas=2"}, []string{"contolPlane", "values.yaml"}},
		{"set of the identity", []string{"--set", "identity.issuerKeyPEM=x"}, []string{"--identity-dir"}},
		{"identity dir missing", []string{"--identity-dir", filepath.Join(dir, "nope")}, []string{"--identity-dir", "nope"}},
		{"identity dir expiring", []string{"--identity-dir", expiring}, []string{"--identity-dir " + expiring, "the issuer expires in", "--rotate-issuer"}},
		{"argument", []string{"extra"}, []string{`unknown command "extra"`}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			out, err := runWeft(t, append([]string{"install"}, tc.args...)...)
			if err == nil {
				t.Fatalf("weft install %s succeeded; want an error", strings.Join(tc.args, " "))
			}
			msg := err.Error()
			if strings.Contains(msg, "\n") {
				t.Errorf("error is more than one line:\n%s", msg)
			}
			for _, w := range tc.want {
				if !strings.Contains(msg, w) {
					t.Errorf("error %q does not say %q", msg, w)
				}
			}
			if strings.Contains(out, "kind:") {
				t.Errorf("manifests were printed despite the error:\n%s", out)
			}
		})
	}
}

// TestInstallRefusesTerminal: the manifests hold the issuer's key, so they are not printed to a
// terminal unless -o - says so.
func TestInstallRefusesTerminal(t *testing.T) {
	tty := openTTY(t)
	root := newRootCmd()
	root.SetOut(tty)
	root.SetErr(&bytes.Buffer{})
	root.SetArgs([]string{"install"})
	err := root.Execute()
	if err == nil || !strings.Contains(err.Error(), "standard output is a terminal: pipe them (weft install | kubectl apply -f -), write them with -o FILE, or pass -o - to print them anyway") {
		t.Fatalf("weft install to a terminal: %v; want the refusal", err)
	}
	if strings.Contains(err.Error(), "\n") {
		t.Errorf("the refusal is more than one line: %q", err)
	}
}

// openTTY opens a new pseudo-terminal and returns its terminal end.
func openTTY(t *testing.T) *os.File {
	t.Helper()
	ptmx, err := os.OpenFile("/dev/ptmx", os.O_RDWR|syscall.O_NOCTTY, 0)
	if err != nil {
		prereq.Missing(t, "no pseudo-terminals here (/dev/ptmx: %v)", err)
	}
	t.Cleanup(func() { ptmx.Close() })
	if err := unix.IoctlSetPointerInt(int(ptmx.Fd()), unix.TIOCSPTLCK, 0); err != nil {
		t.Fatal(err)
	}
	n, err := unix.IoctlGetInt(int(ptmx.Fd()), unix.TIOCGPTN)
	if err != nil {
		t.Fatal(err)
	}
	tty, err := os.OpenFile(fmt.Sprintf("/dev/pts/%d", n), os.O_RDWR|syscall.O_NOCTTY, 0)
	if err != nil {
		prereq.Missing(t, "cannot open the pseudo-terminal /dev/pts/%d: %v", n, err)
	}
	t.Cleanup(func() { tty.Close() })
	return tty
}

// TestInstallOutputFile: -o writes the manifests into a file only its owner can read, also when the
// file was there before with a looser mode, and prints nothing to standard output.
func TestInstallOutputFile(t *testing.T) {
	for _, existing := range []bool{false, true} {
		file := filepath.Join(t.TempDir(), "weft.yaml")
		if existing {
			if err := os.WriteFile(file, []byte("old"), 0o644); err != nil {
				t.Fatal(err)
			}
			if err := os.Chmod(file, 0o644); err != nil {
				t.Fatal(err)
			}
		}
		out, err := runWeft(t, "install", "-o", file)
		if err != nil {
			t.Fatal(err)
		}
		if strings.Contains(out, "kind:") {
			t.Errorf("-o %s: manifests on standard output too", file)
		}
		st, err := os.Stat(file)
		if err != nil {
			t.Fatal(err)
		}
		if st.Mode().Perm() != 0o600 {
			t.Errorf("existing file %v: mode %v, want -rw-------", existing, st.Mode().Perm())
		}
		data, err := os.ReadFile(file)
		if err != nil {
			t.Fatal(err)
		}
		kinds := map[string]bool{}
		for _, doc := range strings.Split(string(data), "\n---\n") {
			var obj struct{ Kind string }
			if err := yaml.Unmarshal([]byte(doc), &obj); err != nil {
				t.Fatal(err)
			}
			kinds[obj.Kind] = true
		}
		if !kinds["Secret"] || !kinds["Deployment"] || !kinds["MutatingWebhookConfiguration"] {
			t.Errorf("%s holds kinds %v, want the whole install", file, kinds)
		}
		if strings.Contains(string(data), "old") && !strings.Contains(string(data), "kind:") {
			t.Error("the old content was not replaced")
		}
	}
}

// TestInstallDeterministic: with the same CA (--identity-dir) and flags, weft install prints the same
// bytes, so re-running `weft install --identity-dir DIR | kubectl apply -f -` changes nothing on the
// cluster (conformance/install applies them twice).
func TestInstallDeterministic(t *testing.T) {
	ca := filepath.Join(t.TempDir(), "ca")
	if _, err := runWeft(t, "identity", "bootstrap", "--out", ca); err != nil {
		t.Fatal(err)
	}
	first, err := runWeft(t, "install", "--identity-dir", ca, "--cni", "--replicas", "2")
	if err != nil {
		t.Fatal(err)
	}
	second, err := runWeft(t, "install", "--identity-dir", ca, "--cni", "--replicas", "2")
	if err != nil {
		t.Fatal(err)
	}
	if first != second {
		t.Error("two renders with the same CA and flags differ")
	}
	if !strings.Contains(first, "replicas: 2") || !strings.Contains(first, "kind: DaemonSet") {
		t.Error("the flags did not reach the manifests")
	}
}
