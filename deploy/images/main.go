// Command images builds Weft's container images without Docker (`make images`): each binary built
// static (CGO_ENABLED=0) for linux on this machine's architecture, on an empty base with what a
// distroless static base gives (users, groups, CA certificates, /tmp), with fixed timestamps so that the
// same binaries always give the same image digest. Each image is written as a docker-archive tarball
// (bin/images/NAME.tar: what `docker load`, `kind load image-archive` and `ctr images import` read)
// and all of them into one OCI image layout (bin/images/oci), tagged REGISTRY/NAME:VERSION as the chart
// names them.
//
//	go run ./deploy/images --version v1.2.3 [--registry ghcr.io/weftmesh] [--out bin/images] [--ldflags ...]
package main

import (
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"time"
)

// images are Weft's images, built in this order. An image whose package does not exist (yet) in this
// tree is skipped.
var images = []Spec{
	{Name: "weft-control", Package: "./cmd/weft-control", User: NonRootUID},
	// weft-proxy is built as the Makefile's PROXY_BUILD builds it (see there why); its image is also the
	// weft-init container's (weft-proxy init), which runs iptables.
	{Name: "weft-proxy", Package: "./cmd/weft-proxy", User: ProxyUID, GoEnv: []string{"GOEXPERIMENT=nogreenteagc"}, Iptables: true},
	// weft-cni copies itself onto the node (the chart's DaemonSet runs it as root).
	{Name: "weft-cni", Package: "./cmd/weft-cni", User: 0},
}

func main() {
	if err := run(os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "images:", err)
		os.Exit(1)
	}
}

func run(args []string) error {
	fs := flag.NewFlagSet("images", flag.ContinueOnError)
	var (
		opts    Options
		out     string
		ldflags string
		dir     string
	)
	fs.StringVar(&opts.Version, "version", "", "the images' tag and org.opencontainers.image.version (the Makefile's VERSION)")
	fs.StringVar(&opts.Registry, "registry", "ghcr.io/weftmesh", "registry the images are tagged for (the chart's image.registry)")
	fs.StringVar(&out, "out", "bin/images", "folder for NAME.tar and the OCI layout oci/")
	fs.StringVar(&ldflags, "ldflags", "", "go build -ldflags for every binary (the Makefile's LDFLAGS)")
	fs.StringVar(&dir, "C", ".", "the module's root folder")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected arguments %q", fs.Args())
	}
	if opts.Version == "" {
		return fmt.Errorf("--version is required (make images passes the Makefile's VERSION)")
	}
	opts.Arch = runtime.GOARCH
	epoch, err := sourceDateEpoch(os.Getenv("SOURCE_DATE_EPOCH"))
	if err != nil {
		return err
	}
	opts.Created = epoch
	certs, err := os.ReadFile(HostCACertificates)
	if err != nil {
		return fmt.Errorf("the images carry this machine's CA certificates: %w (install Debian's ca-certificates: make apt)", err)
	}
	opts.CACertificates = certs

	binDir, err := os.MkdirTemp("", "weft-images-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(binDir)
	var built []Built
	for _, spec := range images {
		if _, err := os.Stat(filepath.Join(dir, spec.Package)); err != nil {
			fmt.Fprintf(os.Stderr, "images: skipping %s: %s is not in this tree\n", spec.Name, spec.Package)
			continue
		}
		bin := filepath.Join(binDir, spec.Name)
		if err := GoBuild(dir, spec, opts.Arch, ldflags, bin); err != nil {
			return err
		}
		b, err := Build(spec, bin, opts)
		if err != nil {
			return fmt.Errorf("%s: %w", spec.Name, err)
		}
		built = append(built, b)
	}
	if err := Write(out, built); err != nil {
		return err
	}
	for _, b := range built {
		st, err := os.Stat(filepath.Join(out, b.Spec.Name+".tar"))
		if err != nil {
			return err
		}
		digest, err := b.Image.Digest()
		if err != nil {
			return err
		}
		fmt.Printf("%-13s %s  %s  linux/%s  %.1f MB  %s\n", b.Spec.Name, b.Tag, digest, opts.Arch, float64(st.Size())/1e6, filepath.Join(out, b.Spec.Name+".tar"))
	}
	fmt.Printf("OCI layout: %s\n", filepath.Join(out, "oci"))
	return nil
}

// sourceDateEpoch is the images' timestamp: $SOURCE_DATE_EPOCH (reproducible-builds.org), else 0.
func sourceDateEpoch(s string) (time.Time, error) {
	if strings.TrimSpace(s) == "" {
		return time.Unix(0, 0).UTC(), nil
	}
	sec, err := strconv.ParseInt(strings.TrimSpace(s), 10, 64)
	if err != nil || sec < 0 {
		return time.Time{}, fmt.Errorf("SOURCE_DATE_EPOCH %q: want seconds since 1970 (or unset it for 0)", s)
	}
	return time.Unix(sec, 0).UTC(), nil
}
