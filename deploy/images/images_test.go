package main

import (
	"archive/tar"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"

	"github.com/weftmesh/weft/conformance/prereq"
	"github.com/weftmesh/weft/deploy/charts"
)

// buildHello builds testdata/hello as GoBuild builds Weft's binaries (static, for this machine).
func buildHello(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "hello")
	if err := GoBuild(".", Spec{Name: "hello", Package: "./testdata/hello"}, runtime.GOARCH, "-s -w", bin); err != nil {
		t.Fatal(err)
	}
	return bin
}

func testOptions(created time.Time) Options {
	return Options{
		Registry: "registry.example:5000/weft", Version: "v1.2.3", Arch: runtime.GOARCH, Created: created,
		CACertificates: []byte("-----BEGIN CERTIFICATE-----\nnot really\n-----END CERTIFICATE-----\n"),
	}
}

// TestImage builds an image of a tiny static binary, writes it as make images does, and reads the
// docker archive back as docker load would: the tag, the user, the entrypoint, the labels, the
// binary executable where the entrypoint says, the users and CA certificates of the base. A second
// build of the same binary has the same digest; another SOURCE_DATE_EPOCH gives another.
func TestImage(t *testing.T) {
	bin := buildHello(t)
	spec := Spec{Name: "hello", Package: "./testdata/hello", User: ProxyUID}
	epoch := time.Unix(1700000000, 0).UTC()
	built, err := Build(spec, bin, testOptions(epoch))
	if err != nil {
		t.Fatal(err)
	}
	out := t.TempDir()
	if err := Write(out, []Built{built}); err != nil {
		t.Fatal(err)
	}
	tag, err := name.NewTag("registry.example:5000/weft/hello:v1.2.3")
	if err != nil {
		t.Fatal(err)
	}
	archive := filepath.Join(out, "hello.tar")
	img, err := tarball.ImageFromPath(archive, &tag)
	if err != nil {
		t.Fatalf("reading %s back with the tag %s: %v", archive, tag, err)
	}
	manifest, err := tarball.LoadManifest(func() (io.ReadCloser, error) { return os.Open(archive) })
	if err != nil {
		t.Fatal(err)
	}
	if len(manifest) != 1 || !cmp.Equal(manifest[0].RepoTags, []string{"registry.example:5000/weft/hello:v1.2.3"}) {
		t.Errorf("manifest.json = %+v, want one image tagged registry.example:5000/weft/hello:v1.2.3", manifest)
	}

	cf, err := img.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	if cf.OS != "linux" || cf.Architecture != runtime.GOARCH {
		t.Errorf("platform %s/%s, want linux/%s", cf.OS, cf.Architecture, runtime.GOARCH)
	}
	if cf.Config.User != "2102:2102" {
		t.Errorf("user %q, want 2102:2102", cf.Config.User)
	}
	if d := cmp.Diff([]string{"/usr/local/bin/hello"}, cf.Config.Entrypoint); d != "" {
		t.Errorf("entrypoint (-want +got):\n%s", d)
	}
	if cf.Config.Labels["org.opencontainers.image.version"] != "v1.2.3" || cf.Config.Labels["org.opencontainers.image.source"] != SourceURL {
		t.Errorf("labels %v, want version v1.2.3 and source %s", cf.Config.Labels, SourceURL)
	}
	if !cf.Created.Time.Equal(epoch) {
		t.Errorf("created %s, want %s", cf.Created.Time, epoch)
	}

	files := extract(t, img)
	exe, ok := files["usr/local/bin/hello"]
	if !ok {
		t.Fatalf("no usr/local/bin/hello in the image; it holds %v", keys(files))
	}
	if exe.Mode&0o111 != 0o111 || exe.Typeflag != tar.TypeReg {
		t.Errorf("usr/local/bin/hello: mode %o type %c, want an executable regular file", exe.Mode, exe.Typeflag)
	}
	want, err := os.ReadFile(bin)
	if err != nil {
		t.Fatal(err)
	}
	if exe.data != string(want) {
		t.Error("usr/local/bin/hello is not the binary that was built")
	}
	for _, user := range []string{"nonroot:x:65532:65532:", "weft-proxy:x:2102:2102:", "root:x:0:0:"} {
		if !strings.Contains(files["etc/passwd"].data, "\n"+user) && !strings.HasPrefix(files["etc/passwd"].data, user) {
			t.Errorf("etc/passwd lacks %q:\n%s", user, files["etc/passwd"].data)
		}
	}
	for _, g := range []string{"nonroot:x:65532:", "weft-proxy:x:2102:"} {
		if !strings.Contains(files["etc/group"].data, g) {
			t.Errorf("etc/group lacks %q", g)
		}
	}
	if files["etc/ssl/certs/ca-certificates.crt"].data != string(testOptions(epoch).CACertificates) {
		t.Error("etc/ssl/certs/ca-certificates.crt is not the CA bundle given")
	}
	if tmp := files["tmp"]; tmp == nil || tmp.Typeflag != tar.TypeDir || tmp.Mode&0o7777 != 0o1777 {
		t.Errorf("tmp: %+v, want a folder of mode 1777", tmp)
	}
	for p, h := range files {
		if !h.ModTime.Equal(epoch) {
			t.Errorf("%s: modified %s, want %s", p, h.ModTime, epoch)
		}
	}

	// Reproducible: the digest the archive gives back is the one built, and the same again.
	readBack, err := img.Digest()
	if err != nil {
		t.Fatal(err)
	}
	first, err := built.Image.Digest()
	if err != nil {
		t.Fatal(err)
	}
	again, err := Build(spec, bin, testOptions(epoch))
	if err != nil {
		t.Fatal(err)
	}
	second, err := again.Image.Digest()
	if err != nil {
		t.Fatal(err)
	}
	if readBack != first || second != first {
		t.Errorf("digests: built %s, read back %s, built again %s; want one digest", first, readBack, second)
	}
	later, err := Build(spec, bin, testOptions(epoch.Add(time.Second)))
	if err != nil {
		t.Fatal(err)
	}
	if d, _ := later.Image.Digest(); d == first {
		t.Error("another timestamp gave the same digest: the timestamp is not in the image")
	}

	// The OCI layout holds the image under its reference.
	idx, err := layout.ImageIndexFromPath(filepath.Join(out, "oci"))
	if err != nil {
		t.Fatal(err)
	}
	im, err := idx.IndexManifest()
	if err != nil {
		t.Fatal(err)
	}
	if len(im.Manifests) != 1 || im.Manifests[0].Digest != first || im.Manifests[0].Annotations["org.opencontainers.image.ref.name"] != tag.String() {
		t.Errorf("OCI layout index %+v, want %s as %s", im.Manifests, first, tag)
	}

	// An independent reader: crane (go-containerregistry's CLI, pinned in the Makefile's tools).
	crane := prereq.Binary(t, "crane")
	if out, err := exec.Command(crane, "validate", "--tarball", archive).CombinedOutput(); err != nil {
		t.Errorf("crane validate --tarball: %v\n%s", err, out)
	}
}

// TestRefusesDynamicBinary: a binary that needs libc would not start in these images.
func TestRefusesDynamicBinary(t *testing.T) {
	const dynamic = "/bin/true" // coreutils, linked with libc on every Linux distribution
	if err := checkDynamic(dynamic); err != nil {
		t.Fatal(err)
	}
	_, err := Build(Spec{Name: "true", User: NonRootUID}, dynamic, testOptions(time.Unix(0, 0)))
	if err == nil || !strings.Contains(err.Error(), "dynamically linked (build it with CGO_ENABLED=0)") {
		t.Errorf("Build(%s) = %v, want the refusal of a dynamic binary", dynamic, err)
	}
	if _, err := Build(Spec{Name: "x", User: 0}, buildHello(t), Options{Registry: "ghcr.io/weftmesh", Version: "1+bad", Arch: runtime.GOARCH}); err == nil || !strings.Contains(err.Error(), `--version "1+bad"`) {
		t.Errorf("a version that is no tag: %v, want an error naming --version", err)
	}
}

// checkDynamic is nil when the file at path has an ELF interpreter (a dynamic executable).
func checkDynamic(path string) error {
	data, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	if err := checkStatic(data, runtime.GOARCH); err == nil {
		return errors.New(path + " is static here")
	}
	return nil
}

// TestImagesAreTheChartsImages: every image the chart names (CNI mode on) is one make images builds,
// under the registry weft install names by default.
func TestImagesAreTheChartsImages(t *testing.T) {
	ch, err := charts.Load("v1.2.3")
	if err != nil {
		t.Fatal(err)
	}
	ms, err := charts.Render(ch, "", map[string]any{
		"cni":      map[string]any{"enabled": true},
		"identity": map[string]any{"trustAnchorsPEM": "A", "issuerCertPEM": "C", "issuerKeyPEM": "K"},
	})
	if err != nil {
		t.Fatal(err)
	}
	built := map[string]bool{}
	for _, s := range images {
		built["ghcr.io/weftmesh/"+s.Name+":v1.2.3"] = true
	}
	named := 0
	for _, line := range strings.Split(charts.YAML(ms), "\n") {
		ref, ok := strings.CutPrefix(strings.TrimSpace(line), "image: ")
		if !ok {
			continue
		}
		named++
		if !built[ref] {
			t.Errorf("the chart names %s, which make images does not build (images: %v)", ref, keys(built))
		}
	}
	if named == 0 {
		t.Fatal("the chart names no image")
	}
}

type file struct {
	*tar.Header
	data string
}

// extract reads the image's flattened file system.
func extract(t *testing.T, img v1.Image) map[string]*file {
	t.Helper()
	rc := mutate.Extract(img)
	defer rc.Close()
	files := map[string]*file{}
	tr := tar.NewReader(rc)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			return files
		}
		if err != nil {
			t.Fatal(err)
		}
		data, err := io.ReadAll(tr)
		if err != nil {
			t.Fatal(err)
		}
		files[strings.TrimSuffix(h.Name, "/")] = &file{Header: h, data: string(data)}
	}
}

func keys[V any](m map[string]V) []string {
	var ks []string
	for k := range m {
		ks = append(ks, k)
	}
	return ks
}

// proxyImage is the real weft-proxy image, built once for the tests that run it, at version v1.2.3.
var proxyImage = sync.OnceValues(func() (Built, error) {
	var spec Spec
	for _, s := range images {
		if s.Name == "weft-proxy" {
			spec = s
		}
	}
	dir, err := os.MkdirTemp("", "weft-images-test-")
	if err != nil {
		return Built{}, err
	}
	defer os.RemoveAll(dir)
	bin := filepath.Join(dir, "weft-proxy")
	if err := GoBuild(filepath.Join("..", ".."), spec, runtime.GOARCH, "-X github.com/weftmesh/weft/cmd/internal/buildinfo.Version=v1.2.3", bin); err != nil {
		return Built{}, err
	}
	certs, err := os.ReadFile(HostCACertificates)
	if err != nil {
		return Built{}, fmt.Errorf("%w (Debian's ca-certificates; make apt)", err)
	}
	o := testOptions(time.Unix(0, 0))
	o.CACertificates = certs
	return Build(spec, bin, o)
})

// TestProxyImageRunsInit runs what the weft-init container runs, from the weft-proxy image's own file
// system: `weft-proxy init` chrooted into the image, read-only as the injected container has it
// (readOnlyRootFilesystem), in a new network namespace, with each iptables backend; the image's
// iptables then lists the redirection. It proves that the image's iptables, its extension modules and
// its libraries are complete. The legacy backend takes the lock /run/xtables.lock, so it needs /run
// writable (an emptyDir in a Pod); nft and auto do not.
func TestProxyImageRunsInit(t *testing.T) {
	prereq.Root(t)
	unshare := prereq.Binary(t, "unshare")
	built, err := proxyImage()
	if err != nil {
		t.Fatal(err)
	}
	if !built.Spec.Iptables {
		t.Fatal("the weft-proxy image has no iptables, which weft-proxy init needs")
	}
	rootfs := t.TempDir()
	unpack(t, built.Image, rootfs)
	const script = `set -e
mount --bind "$1" "$1"
mount -o remount,bind,ro "$1"
if [ "$3" = writable-run ]; then mount -t tmpfs tmpfs "$1/run"; fi
chroot "$1" /usr/local/bin/weft-proxy init --iptables-mode "$2"
chroot "$1" /usr/sbin/iptables-save -t nat
chroot "$1" /usr/sbin/iptables-legacy-save -t nat`
	for _, tc := range []struct{ mode, run, backend string }{
		{"nft", "read-only", "nft"},
		{"auto", "read-only", "nft"},
		{"legacy", "writable-run", "legacy"},
	} {
		out, err := exec.Command(unshare, "--net", "--mount", "sh", "-c", script, "sh", rootfs, tc.mode, tc.run).CombinedOutput()
		if err != nil {
			t.Fatalf("weft-proxy init --iptables-mode %s in the read-only image (/run %s): %v\n%s", tc.mode, tc.run, err, out)
		}
		for _, want := range []string{"iptables programmed (" + tc.backend + " backend)", "-m owner --uid-owner 2102 -j RETURN", "-j REDIRECT --to-ports 15001", "-j REDIRECT --to-ports 15006"} {
			if !strings.Contains(string(out), want) {
				t.Errorf("--iptables-mode %s: the output lacks %q:\n%s", tc.mode, want, out)
			}
		}
	}
}

// TestContainerdRunsImage: the docker archive of the real weft-proxy image imports into containerd
// with `ctr images import` (what `kind load image-archive` runs on a kind node) under its tag, keeps
// its image ID (the config digest) with the image's user, and runs as a container (runc).
func TestContainerdRunsImage(t *testing.T) {
	prereq.Root(t)
	containerd := prereq.Binary(t, "containerd")
	ctr := prereq.Binary(t, "ctr")
	prereq.Binary(t, "runc")
	built, err := proxyImage()
	if err != nil {
		t.Fatal(err)
	}
	out := t.TempDir()
	if err := Write(out, []Built{built}); err != nil {
		t.Fatal(err)
	}

	dir := t.TempDir()
	sock := filepath.Join(dir, "containerd.sock")
	config := fmt.Sprintf(`version = 2
root = %q
state = %q
disabled_plugins = ["io.containerd.grpc.v1.cri"]
[grpc]
  address = %q
[ttrpc]
  address = %q
`, filepath.Join(dir, "root"), filepath.Join(dir, "state"), sock, filepath.Join(dir, "ttrpc.sock"))
	if err := os.WriteFile(filepath.Join(dir, "config.toml"), []byte(config), 0o600); err != nil {
		t.Fatal(err)
	}
	logFile, err := os.Create(filepath.Join(dir, "containerd.log"))
	if err != nil {
		t.Fatal(err)
	}
	defer logFile.Close()
	daemon := exec.Command(containerd, "--config", filepath.Join(dir, "config.toml"))
	daemon.Stdout, daemon.Stderr = logFile, logFile
	daemon.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := daemon.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = daemon.Process.Signal(syscall.SIGTERM)
		_ = daemon.Wait()
	})
	ctrRun := func(args ...string) (string, error) {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		out, err := exec.CommandContext(ctx, ctr, append([]string{"--address", sock}, args...)...).CombinedOutput()
		return string(out), err
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		if _, err := ctrRun("version"); err == nil {
			break
		}
		if time.Now().After(deadline) {
			log, _ := os.ReadFile(filepath.Join(dir, "containerd.log"))
			t.Fatalf("containerd did not start:\n%s", log)
		}
		time.Sleep(100 * time.Millisecond)
	}

	if out, err := ctrRun("images", "import", filepath.Join(out, "weft-proxy.tar")); err != nil {
		t.Fatalf("ctr images import: %v\n%s", err, out)
	}
	tag := built.Tag.String()
	list, err := ctrRun("images", "ls")
	if err != nil || !strings.Contains(list, tag+" ") {
		t.Fatalf("ctr images ls does not list %s (%v):\n%s", tag, err, list)
	}
	id, err := built.Image.ConfigName()
	if err != nil {
		t.Fatal(err)
	}
	if cfg, err := ctrRun("content", "get", id.String()); err != nil || !strings.Contains(cfg, `"User":"2102:2102"`) {
		t.Errorf("containerd does not hold the image config %s (%v):\n%.300s", id, err, cfg)
	}
	run, err := ctrRun("run", "--rm", tag, "weft-test-proxy", "/usr/local/bin/weft-proxy", "version")
	if err != nil || !strings.HasPrefix(run, "weft-proxy v1.2.3 ") {
		t.Errorf("ctr run %s weft-proxy version: %v\n%s", tag, err, run)
	}
}

// unpack writes the image's file system under dir, as a container runtime would.
func unpack(t *testing.T, img v1.Image, dir string) {
	t.Helper()
	rc := mutate.Extract(img)
	defer rc.Close()
	tr := tar.NewReader(rc)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			return
		}
		if err != nil {
			t.Fatal(err)
		}
		p := filepath.Join(dir, filepath.Clean("/"+h.Name))
		// Extract yields the top layer first: a file may come before its folder's entry.
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		switch h.Typeflag {
		case tar.TypeDir:
			err = os.MkdirAll(p, os.FileMode(h.Mode&0o777))
		case tar.TypeSymlink:
			err = os.Symlink(h.Linkname, p)
		case tar.TypeReg:
			var data []byte
			if data, err = io.ReadAll(tr); err == nil {
				err = os.WriteFile(p, data, os.FileMode(h.Mode&0o777))
			}
		}
		if err != nil {
			t.Fatal(err)
		}
	}
}
