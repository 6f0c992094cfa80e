package main

import (
	"archive/tar"
	"bytes"
	"debug/elf"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"strings"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
)

// The users of the images, as in distroless: nonroot (65532) runs weft-control; weft-proxy runs as the
// proxy user that interception never captures (DESIGN.md: uid 2102).
const (
	NonRootUID = 65532
	ProxyUID   = 2102
)

// HostCACertificates is the CA bundle copied into every image (Debian's ca-certificates).
const HostCACertificates = "/etc/ssl/certs/ca-certificates.crt"

// BinDir is where each image's binary lives; it is on the images' PATH.
const BinDir = "/usr/local/bin"

// SourceURL is the images' org.opencontainers.image.source.
const SourceURL = "https://github.com/weftmesh/weft"

// Spec is one image: a Go main package built into BinDir/Name, run as User.
type Spec struct {
	Name    string   // image and binary name: weft-control
	Package string   // Go package to build, relative to the module root: ./cmd/weft-control
	User    int      // uid (and gid) the image runs as
	GoEnv   []string // extra go build environment, such as GOEXPERIMENT
	// Iptables adds this machine's iptables (see IptablesLayer) for a binary that runs it.
	Iptables bool
}

// Options apply to every image.
type Options struct {
	Registry       string    // ghcr.io/weftmesh
	Version        string    // tag and org.opencontainers.image.version
	Arch           string    // GOARCH, the image's architecture (linux only)
	Created        time.Time // every timestamp in the image (SOURCE_DATE_EPOCH, or 0)
	CACertificates []byte    // /etc/ssl/certs/ca-certificates.crt
	HostRoot       string    // where IptablesLayer copies from: "/" ("" means "/")
}

// Built is an image and the tag it is written under.
type Built struct {
	Spec  Spec
	Tag   name.Tag
	Image v1.Image
}

// GoBuild builds spec's package as a static linux binary at out: CGO_ENABLED=0, -trimpath (no build
// folder in the binary, so that the same sources give the same bytes anywhere).
func GoBuild(moduleDir string, spec Spec, arch, ldflags, out string) error {
	args := []string{"build", "-trimpath", "-o", out}
	if ldflags != "" {
		args = append(args, "-ldflags", ldflags)
	}
	cmd := exec.Command("go", append(args, spec.Package)...)
	cmd.Dir = moduleDir
	cmd.Env = append(append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux", "GOARCH="+arch), spec.GoEnv...)
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("go build %s: %w", spec.Package, err)
	}
	return nil
}

// Build makes spec's image from the binary at bin: the base layer (users, groups, CA certificates,
// /tmp; the same for every image) and the binary's layer, entrypoint the binary, user spec.User.
func Build(spec Spec, bin string, o Options) (Built, error) {
	tag, err := name.NewTag(o.Registry+"/"+spec.Name+":"+o.Version, name.StrictValidation)
	if err != nil {
		return Built{}, fmt.Errorf("--registry %q, --version %q do not make an image reference: %w", o.Registry, o.Version, err)
	}
	exe, err := os.ReadFile(bin)
	if err != nil {
		return Built{}, err
	}
	if err := checkStatic(exe, o.Arch); err != nil {
		return Built{}, fmt.Errorf("%s: %w", bin, err)
	}
	base, err := baseLayer(o)
	if err != nil {
		return Built{}, err
	}
	app, err := layerOf(o.Created, []entry{{path: path.Join(BinDir, spec.Name), mode: 0o755, data: exe}})
	if err != nil {
		return Built{}, err
	}
	created := v1.Time{Time: o.Created}
	layers := []mutate.Addendum{{Layer: base, History: v1.History{Created: created, CreatedBy: "weft deploy/images: base", Comment: "users, groups, CA certificates, /tmp"}}}
	if spec.Iptables {
		root := o.HostRoot
		if root == "" {
			root = "/"
		}
		ipt, err := IptablesLayer(root, o.Arch, o.Created)
		if err != nil {
			return Built{}, err
		}
		layers = append(layers, mutate.Addendum{Layer: ipt, History: v1.History{Created: created, CreatedBy: "weft deploy/images: iptables", Comment: "this machine's iptables-nft and iptables-legacy with their libraries, for weft-proxy init"}})
	}
	layers = append(layers, mutate.Addendum{Layer: app, History: v1.History{Created: created, CreatedBy: "weft deploy/images: " + spec.Package}})
	img, err := mutate.Append(empty.Image, layers...)
	if err != nil {
		return Built{}, err
	}
	cf, err := img.ConfigFile()
	if err != nil {
		return Built{}, err
	}
	cf = cf.DeepCopy()
	cf.OS, cf.Architecture = "linux", o.Arch
	cf.Created = created
	cf.Author = ""
	cf.Config = v1.Config{
		User:       fmt.Sprintf("%d:%d", spec.User, spec.User),
		Entrypoint: []string{path.Join(BinDir, spec.Name)},
		Env: []string{
			"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
			"SSL_CERT_FILE=" + HostCACertificates,
		},
		WorkingDir: "/",
		Labels: map[string]string{
			"org.opencontainers.image.title":   spec.Name,
			"org.opencontainers.image.version": o.Version,
			"org.opencontainers.image.source":  SourceURL,
		},
	}
	img, err = mutate.ConfigFile(img, cf)
	if err != nil {
		return Built{}, err
	}
	return Built{Spec: spec, Tag: tag, Image: img}, nil
}

// checkStatic refuses a binary that is not a static ELF executable of arch: the images have no libc
// and no dynamic loader.
func checkStatic(exe []byte, arch string) error {
	f, err := elf.NewFile(bytes.NewReader(exe))
	if err != nil {
		return fmt.Errorf("not an ELF executable: %w", err)
	}
	defer f.Close()
	want := map[string]elf.Machine{"amd64": elf.EM_X86_64, "arm64": elf.EM_AARCH64}[arch]
	if want != 0 && f.Machine != want {
		return fmt.Errorf("built for %s, want %s", f.Machine, arch)
	}
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			return fmt.Errorf("dynamically linked (build it with CGO_ENABLED=0): the images have no libc")
		}
	}
	return nil
}

// Write writes each image as a docker-archive tarball out/NAME.tar, and all of them into the OCI image
// layout out/oci (replaced), each annotated with its reference.
func Write(out string, built []Built) error {
	if err := os.MkdirAll(out, 0o755); err != nil { // #nosec G301 -- the output folder of make images, like go build -o's
		return err
	}
	for _, b := range built {
		tmp := filepath.Join(out, "."+b.Spec.Name+".tar.tmp")
		if err := tarball.WriteToFile(tmp, b.Tag, b.Image); err != nil {
			os.Remove(tmp)
			return fmt.Errorf("writing %s: %w", b.Tag, err)
		}
		if err := os.Rename(tmp, filepath.Join(out, b.Spec.Name+".tar")); err != nil {
			return err
		}
	}
	oci := filepath.Join(out, "oci")
	if err := os.RemoveAll(oci); err != nil {
		return err
	}
	p, err := layout.Write(oci, empty.Index)
	if err != nil {
		return err
	}
	for _, b := range built {
		if err := p.AppendImage(b.Image, layout.WithAnnotations(map[string]string{
			"org.opencontainers.image.ref.name": b.Tag.String(),
			"io.containerd.image.name":          b.Tag.String(),
		})); err != nil {
			return fmt.Errorf("writing %s to %s: %w", b.Tag, oci, err)
		}
	}
	return nil
}

// passwd and group are distroless static's, with the proxy's user and group added.
const (
	passwd = "root:x:0:0:root:/root:/sbin/nologin\n" +
		"nobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin\n" +
		"nonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n" +
		"weft-proxy:x:2102:2102:weft-proxy:/nonexistent:/sbin/nologin\n"
	group = "root:x:0:\n" +
		"nobody:x:65534:\n" +
		"tty:x:5:\n" +
		"staff:x:50:\n" +
		"nonroot:x:65532:\n" +
		"weft-proxy:x:2102:\n"
	nsswitch = "hosts: files dns\n"
)

// baseLayer is the part of distroless static that Weft's binaries use.
func baseLayer(o Options) (v1.Layer, error) {
	return layerOf(o.Created, []entry{
		{path: "etc/", mode: 0o755},
		{path: "etc/group", mode: 0o644, data: []byte(group)},
		{path: "etc/nsswitch.conf", mode: 0o644, data: []byte(nsswitch)},
		{path: "etc/passwd", mode: 0o644, data: []byte(passwd)},
		{path: "etc/ssl/", mode: 0o755},
		{path: "etc/ssl/certs/", mode: 0o755},
		{path: "etc/ssl/certs/ca-certificates.crt", mode: 0o644, data: o.CACertificates},
		{path: "home/", mode: 0o755},
		{path: "home/nonroot/", mode: 0o700, uid: NonRootUID},
		{path: "root/", mode: 0o700},
		{path: "tmp/", mode: 0o1777},
		{path: "usr/", mode: 0o755},
		{path: "usr/local/", mode: 0o755},
		{path: "usr/local/bin/", mode: 0o755},
	})
}

// entry is one file, (path ending in /) folder, or (link set) symlink of a layer.
type entry struct {
	path string
	mode int64
	uid  int
	data []byte
	link string
}

// layerOf makes a layer of entries, in the order given, every timestamp at created.
func layerOf(created time.Time, entries []entry) (v1.Layer, error) {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, e := range entries {
		h := &tar.Header{
			Name:    strings.TrimPrefix(e.path, "/"),
			Mode:    e.mode,
			Uid:     e.uid,
			Gid:     e.uid,
			ModTime: created,
			Format:  tar.FormatPAX,
		}
		switch {
		case e.link != "":
			h.Typeflag, h.Linkname, h.Mode = tar.TypeSymlink, e.link, 0o777
		case strings.HasSuffix(e.path, "/"):
			h.Typeflag = tar.TypeDir
		default:
			h.Typeflag = tar.TypeReg
			h.Size = int64(len(e.data))
		}
		if err := tw.WriteHeader(h); err != nil {
			return nil, err
		}
		if _, err := tw.Write(e.data); err != nil {
			return nil, err
		}
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	data := buf.Bytes()
	return tarball.LayerFromOpener(func() (io.ReadCloser, error) {
		return io.NopCloser(bytes.NewReader(data)), nil
	}, tarball.WithCompressedCaching)
}
