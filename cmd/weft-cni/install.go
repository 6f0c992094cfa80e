package main

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/fsnotify/fsnotify"
	"github.com/spf13/pflag"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"

	"github.com/weftmesh/weft/dataplane/iptables"
)

// Files weft-cni install writes into the CNI configuration folder beside the conflist (runtimes read
// only *.conf, *.conflist and *.json there).
const (
	KubeconfigFile = "weft-cni.kubeconfig"
	TokenFile      = "weft-cni.token"
)

const serviceAccountDir = "/var/run/secrets/kubernetes.io/serviceaccount"

type installFlags struct {
	binDir, netDir, hostRoot   string
	apiserver, tokenFile, ca   string
	excludeNamespaces, iptMode string
	once                       bool
	resync                     time.Duration
}

func defaultAPIServer() string {
	host, port := os.Getenv("KUBERNETES_SERVICE_HOST"), os.Getenv("KUBERNETES_SERVICE_PORT")
	if host == "" || port == "" {
		return ""
	}
	return "https://" + net.JoinHostPort(host, port)
}

// addInstallFlags defines install's flags on fs.
func addInstallFlags(fs *pflag.FlagSet, f *installFlags) {
	fs.StringVar(&f.binDir, "cni-bin-dir", "/opt/cni/bin", "the node's CNI plugin folder (as mounted here); weft-cni copies itself there")
	fs.StringVar(&f.netDir, "cni-net-dir", "/etc/cni/net.d", "the node's CNI configuration folder (as mounted here); weft-cni chains itself to the lexically first configuration there")
	fs.StringVar(&f.hostRoot, "host-root", "", `where the node's folders are mounted in this container ("/host"): removed from the paths written into the configuration, which the node's runtime reads`)
	fs.StringVar(&f.apiserver, "apiserver", defaultAPIServer(), "the apiserver URL the plugin uses (default: this Pod's https://$KUBERNETES_SERVICE_HOST:$KUBERNETES_SERVICE_PORT)")
	fs.StringVar(&f.tokenFile, "token-file", serviceAccountDir+"/token", "the ServiceAccount token the plugin reads Pods with (copied next to the configuration, again whenever it changes)")
	fs.StringVar(&f.ca, "ca-file", serviceAccountDir+"/ca.crt", "the CA bundle of the apiserver")
	fs.StringVar(&f.excludeNamespaces, "exclude-namespaces", "kube-system", "comma-separated namespaces whose Pods the plugin never looks up or meshes")
	fs.StringVar(&f.iptMode, "iptables-mode", string(iptables.ModeAuto), "iptables backend the plugin uses in Pods: auto, nft or legacy")
	fs.BoolVar(&f.once, "once", false, "install, print what was done and exit (no watching, no removal on exit)")
	fs.DurationVar(&f.resync, "resync", 30*time.Second, "how often to check the installation again besides watching the configuration folder")
}

// parseInstallFlags reads and checks install's flags (not yet the folders they name), as the install
// command does.
func parseInstallFlags(args []string, stderr io.Writer) (installFlags, error) {
	var f installFlags
	fs := pflag.NewFlagSet("install", pflag.ContinueOnError)
	fs.SetOutput(stderr)
	addInstallFlags(fs, &f)
	if err := fs.Parse(args); err != nil {
		return f, err
	}
	if fs.NArg() > 0 {
		return f, fmt.Errorf("unexpected argument %q (flags only)", fs.Arg(0))
	}
	return f, f.check()
}

// check checks the flags' values (not yet the folders they name).
func (f installFlags) check() error {
	if _, err := iptables.ParseMode(f.iptMode); err != nil {
		return fmt.Errorf("--iptables-mode: %w", err)
	}
	if f.apiserver == "" {
		return errors.New("--apiserver: not given and KUBERNETES_SERVICE_HOST is not set (not running in a Pod); pass the apiserver's URL")
	}
	if f.resync <= 0 {
		return fmt.Errorf("--resync %s: want a positive duration such as 30s", f.resync)
	}
	return nil
}

func runInstall(ctx context.Context, f installFlags, stdout, stderr io.Writer) error {
	if err := f.check(); err != nil {
		return err
	}
	for _, d := range []struct{ flag, dir string }{{"--cni-bin-dir", f.binDir}, {"--cni-net-dir", f.netDir}} {
		if st, err := os.Stat(d.dir); err != nil || !st.IsDir() {
			return fmt.Errorf("%s %s: not a folder; mount the node's folder there", d.flag, d.dir)
		}
	}
	in := &installer{f: f, log: slog.New(slog.NewTextHandler(stderr, nil))}
	for _, ns := range strings.Split(f.excludeNamespaces, ",") {
		if ns = strings.TrimSpace(ns); ns != "" {
			in.exclude = append(in.exclude, ns)
		}
	}
	in.removeStaleTemp()
	if f.once {
		conf, err := in.ensure()
		if err != nil {
			return err
		}
		fmt.Fprintf(stdout, "weft-cni installed: %s, chained in %s\n", filepath.Join(f.binDir, PluginType), conf)
		return nil
	}
	return in.run(ctx)
}

type installer struct {
	f       installFlags
	exclude []string
	log     *slog.Logger
}

// hostPath is where the node sees a path of this container.
func (in *installer) hostPath(p string) string {
	root := strings.TrimSuffix(in.f.hostRoot, "/")
	if root == "" {
		return p
	}
	if rel, ok := strings.CutPrefix(p, root); ok && strings.HasPrefix(rel, "/") {
		return rel
	}
	return p
}

func (in *installer) entry() Entry {
	return Entry{
		Type:              PluginType,
		Kubeconfig:        in.hostPath(filepath.Join(in.f.netDir, KubeconfigFile)),
		IptablesMode:      in.f.iptMode,
		ExcludeNamespaces: in.exclude,
	}
}

// run installs, then keeps the installation right until ctx ends, and then removes it.
func (in *installer) run(ctx context.Context) error {
	w, err := fsnotify.NewWatcher()
	if err != nil {
		return fmt.Errorf("watching %s: %w", in.f.netDir, err)
	}
	defer w.Close()
	if err := w.Add(in.f.netDir); err != nil {
		return fmt.Errorf("watching %s: %w", in.f.netDir, err)
	}
	check := func() {
		if _, err := in.ensure(); errors.Is(err, errNoConfig) {
			in.log.Info("waiting for the node's CNI network configuration (the network plugin writes it)", "dir", in.f.netDir)
		} else if err != nil {
			in.log.Error("installing weft-cni", "err", err)
		}
	}
	check()
	tick := time.NewTicker(in.f.resync)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return in.uninstall()
		case ev := <-w.Events:
			name := filepath.Base(ev.Name)
			if isConfigFile(name) || name == KubeconfigFile || name == TokenFile {
				check()
			}
		case err := <-w.Errors:
			in.log.Error("watching the CNI configuration folder", "err", err)
		case <-tick.C:
			check()
		}
	}
}

// ensure makes the node hold the binary, the kubeconfig and the chained entry; it writes only what
// differs, and returns the configuration file that chains weft-cni.
func (in *installer) ensure() (string, error) {
	self, err := os.Executable()
	if err != nil {
		return "", fmt.Errorf("finding this binary: %w", err)
	}
	if err := copyIfChanged(self, in.f.binDir, PluginType); err != nil {
		return "", fmt.Errorf("copying weft-cni into %s: %w", in.f.binDir, err)
	}
	token, err := os.ReadFile(in.f.tokenFile)
	if err != nil {
		return "", fmt.Errorf("--token-file: %w", err)
	}
	ca, err := os.ReadFile(in.f.ca)
	if err != nil {
		return "", fmt.Errorf("--ca-file: %w", err)
	}
	if err := writeIfChanged(in.f.netDir, TokenFile, token, 0o600); err != nil {
		return "", err
	}
	kc, err := kubeconfig(in.f.apiserver, ca, in.hostPath(filepath.Join(in.f.netDir, TokenFile)))
	if err != nil {
		return "", err
	}
	if err := writeIfChanged(in.f.netDir, KubeconfigFile, kc, 0o600); err != nil {
		return "", err
	}

	entries, err := os.ReadDir(in.f.netDir)
	if err != nil {
		return "", err
	}
	var names []string
	for _, e := range entries {
		if !e.IsDir() {
			names = append(names, e.Name())
		}
	}
	name := primaryConfig(names)
	if name == "" {
		return "", errNoConfig
	}
	data, err := os.ReadFile(filepath.Join(in.f.netDir, name))
	if err != nil {
		return "", err
	}
	p, err := patchConfig(name, data, in.entry())
	if err != nil {
		return "", err
	}
	if p.Write == "" {
		return name, nil
	}
	if err := writeAtomic(in.f.netDir, p.Write, p.Data, 0o644); err != nil {
		return "", err
	}
	if p.Remove != "" {
		if err := os.Remove(filepath.Join(in.f.netDir, p.Remove)); err != nil && !errors.Is(err, os.ErrNotExist) {
			return "", err
		}
	}
	in.log.Info("chained weft-cni to the node's CNI configuration", "file", filepath.Join(in.f.netDir, p.Write), "replaced", p.Remove)
	return p.Write, nil
}

// removeStaleTemp deletes the temporary files of a run that was killed while writing.
func (in *installer) removeStaleTemp() {
	for _, dir := range []string{in.f.binDir, in.f.netDir} {
		stale, _ := filepath.Glob(filepath.Join(dir, ".weft-cni-*"))
		for _, f := range stale {
			_ = os.Remove(f)
		}
	}
}

// uninstall takes weft-cni out of every configuration in the folder and removes its files.
func (in *installer) uninstall() error {
	var errs []error
	entries, err := os.ReadDir(in.f.netDir)
	if err != nil {
		return err
	}
	for _, e := range entries {
		if e.IsDir() || !isConfigFile(e.Name()) {
			continue
		}
		data, err := os.ReadFile(filepath.Join(in.f.netDir, e.Name()))
		if err != nil {
			errs = append(errs, err)
			continue
		}
		out, changed, err := unpatchConfig(e.Name(), data)
		if err != nil || !changed {
			continue // not ours to judge
		}
		if err := writeAtomic(in.f.netDir, e.Name(), out, 0o644); err != nil {
			errs = append(errs, err)
			continue
		}
		in.log.Info("removed weft-cni from the node's CNI configuration", "file", filepath.Join(in.f.netDir, e.Name()))
	}
	for _, p := range []string{filepath.Join(in.f.netDir, KubeconfigFile), filepath.Join(in.f.netDir, TokenFile), filepath.Join(in.f.binDir, PluginType)} {
		if err := os.Remove(p); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// kubeconfig is the plugin's kubeconfig: the apiserver, its CA inline, and the token by file, so a
// rotated token reaches the plugin without rewriting the kubeconfig.
func kubeconfig(server string, ca []byte, tokenFile string) ([]byte, error) {
	cfg := clientcmdapi.NewConfig()
	cfg.Clusters["kubernetes"] = &clientcmdapi.Cluster{Server: server, CertificateAuthorityData: ca}
	cfg.AuthInfos[PluginType] = &clientcmdapi.AuthInfo{TokenFile: tokenFile}
	cfg.Contexts[PluginType] = &clientcmdapi.Context{Cluster: "kubernetes", AuthInfo: PluginType}
	cfg.CurrentContext = PluginType
	return clientcmd.Write(*cfg)
}

// copyIfChanged copies the file src to dir/name (atomically, mode 0755) unless it holds the same
// bytes already. It streams: the binary is large and the DaemonSet's memory limit small.
func copyIfChanged(src, dir, name string) error {
	if same, err := sameFile(src, filepath.Join(dir, name)); err == nil && same {
		return nil
	}
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	tmp, err := os.CreateTemp(dir, ".weft-cni-*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	if _, err := io.Copy(tmp, in); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Chmod(0o755); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), filepath.Join(dir, name))
}

func sameFile(a, b string) (bool, error) {
	sa, err := os.Stat(a)
	if err != nil {
		return false, err
	}
	sb, err := os.Stat(b)
	if err != nil || sa.Size() != sb.Size() {
		return false, err
	}
	ha, err := fileHash(a)
	if err != nil {
		return false, err
	}
	hb, err := fileHash(b)
	return err == nil && ha == hb, err
}

func fileHash(path string) ([sha256.Size]byte, error) {
	var sum [sha256.Size]byte
	f, err := os.Open(path)
	if err != nil {
		return sum, err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return sum, err
	}
	copy(sum[:], h.Sum(nil))
	return sum, nil
}

// writeIfChanged writes data to dir/name (atomically) unless the file already holds it.
func writeIfChanged(dir, name string, data []byte, perm os.FileMode) error {
	if old, err := os.ReadFile(filepath.Join(dir, name)); err == nil && bytes.Equal(old, data) {
		return nil
	}
	return writeAtomic(dir, name, data, perm)
}

// writeAtomic replaces dir/name with data: readers see the old file or the new one, never a part.
func writeAtomic(dir, name string, data []byte, perm os.FileMode) error {
	tmp, err := os.CreateTemp(dir, ".weft-cni-*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name()) // after a successful rename there is nothing left to remove
	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Chmod(perm); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), filepath.Join(dir, name))
}
