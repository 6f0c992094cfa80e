package main

import (
	"debug/elf"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"sort"
	"strings"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
)

// `weft-proxy init` (the weft-init container) programs the pod's nat table with iptables-restore, so
// the weft-proxy image carries iptables: this machine's iptables-nft and iptables-legacy (Debian's
// iptables package), their extension modules, the shared libraries they load (glibc included) and the
// dynamic loader, copied from the host at their paths with the symlinks leading to them. The proxy
// itself stays a static binary that uses none of it.

// iptablesCommands are the commands dataplane/iptables runs (both backends) and the plain names, as
// Debian's alternatives point them (nft).
var iptablesCommands = []string{
	"iptables-nft-save", "iptables-nft-restore", "ip6tables-nft-save", "ip6tables-nft-restore", "iptables-nft", "ip6tables-nft",
	"iptables-legacy-save", "iptables-legacy-restore", "ip6tables-legacy-save", "ip6tables-legacy-restore", "iptables-legacy", "ip6tables-legacy",
}

// plainIptables are the names without a backend, linked to the nft one as Debian does by default.
var plainIptables = map[string]string{
	"iptables": "xtables-nft-multi", "iptables-save": "xtables-nft-multi", "iptables-restore": "xtables-nft-multi",
	"ip6tables": "xtables-nft-multi", "ip6tables-save": "xtables-nft-multi", "ip6tables-restore": "xtables-nft-multi",
}

// multiarch is Debian's library folder name of a GOARCH.
var multiarch = map[string]string{"amd64": "x86_64-linux-gnu", "arm64": "aarch64-linux-gnu"}

// hostTree collects files of the host's file system, each with the folders and symlinks on its path,
// into layer entries.
type hostTree struct {
	root    string           // the host's root, "/" but in tests
	entries map[string]entry // by path in the image, without a leading /
}

// IptablesLayer is the layer of iptables described above, read from the file system at root ("/").
func IptablesLayer(root, arch string, created time.Time) (v1.Layer, error) {
	tri, ok := multiarch[arch]
	if !ok {
		return nil, fmt.Errorf("no Debian library folder known for %s", arch)
	}
	h := &hostTree{root: root, entries: map[string]entry{}}
	var multis []string
	for _, name := range iptablesCommands {
		p, err := h.lookPath(name)
		if err != nil {
			return nil, fmt.Errorf("%s is not installed: the weft-proxy image needs iptables for weft-proxy init (make apt installs Debian's iptables): %w", name, err)
		}
		real, err := h.add(p)
		if err != nil {
			return nil, err
		}
		if !contains(multis, real) {
			multis = append(multis, real)
		}
	}
	for name, target := range plainIptables {
		h.entries[path.Join("usr/sbin", name)] = entry{path: path.Join("usr/sbin", name), link: target}
	}
	// The extension modules (-j REDIRECT, -m owner, ...) are loaded at run time from here.
	extDir := path.Join("/usr/lib", tri, "xtables")
	exts, err := os.ReadDir(filepath.Join(root, extDir))
	if err != nil {
		return nil, fmt.Errorf("iptables' extension modules: %w", err)
	}
	elfs := append([]string(nil), multis...)
	for _, e := range exts {
		p := path.Join(extDir, e.Name())
		real, err := h.add(p)
		if err != nil {
			return nil, err
		}
		if strings.HasSuffix(e.Name(), ".so") {
			elfs = append(elfs, real)
		}
	}
	// The shared libraries all of them need, and the dynamic loader.
	libDirs := []string{path.Join("/lib", tri), path.Join("/usr/lib", tri), "/lib64", "/lib", "/usr/lib"}
	done := map[string]bool{}
	for len(elfs) > 0 {
		p := elfs[0]
		elfs = elfs[1:]
		if done[p] {
			continue
		}
		done[p] = true
		interp, needed, err := h.elfDeps(p)
		if err != nil {
			return nil, err
		}
		if interp != "" {
			real, err := h.add(interp)
			if err != nil {
				return nil, err
			}
			done[real] = true
		}
		for _, lib := range needed {
			found := ""
			for _, d := range libDirs {
				if _, err := os.Stat(filepath.Join(root, d, lib)); err == nil {
					found = path.Join(d, lib)
					break
				}
			}
			if found == "" {
				return nil, fmt.Errorf("%s needs %s, which is not in %s", p, lib, strings.Join(libDirs, ", "))
			}
			real, err := h.add(found)
			if err != nil {
				return nil, err
			}
			elfs = append(elfs, real)
		}
	}
	// getprotobyname (-p tcp) and the legacy backend's lock file.
	if _, err := os.Stat(filepath.Join(root, "etc/protocols")); err == nil {
		if _, err := h.add("/etc/protocols"); err != nil {
			return nil, err
		}
	}
	h.entries["run"] = entry{path: "run/", mode: 0o755}

	paths := make([]string, 0, len(h.entries))
	for p := range h.entries {
		paths = append(paths, p)
	}
	sort.Strings(paths) // a folder before what it holds
	list := make([]entry, 0, len(paths))
	for _, p := range paths {
		list = append(list, h.entries[p])
	}
	return layerOf(created, list)
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// lookPath finds a command in the host's sbin and bin folders.
func (h *hostTree) lookPath(name string) (string, error) {
	if h.root == "/" {
		return exec.LookPath(name)
	}
	for _, d := range []string{"/usr/sbin", "/usr/bin", "/sbin", "/bin"} {
		if _, err := os.Stat(filepath.Join(h.root, d, name)); err == nil {
			return path.Join(d, name), nil
		}
	}
	return "", fmt.Errorf("%s not found under %s", name, h.root)
}

// add records the file at p (absolute) and every folder and symlink on the way to it, and returns its
// real path.
func (h *hostTree) add(p string) (string, error) {
	return h.addPath(p, 0)
}

func (h *hostTree) addPath(p string, depth int) (string, error) {
	if depth > 40 {
		return "", fmt.Errorf("%s: too many symlinks", p)
	}
	p = path.Clean(p)
	if p == "/" {
		return "/", nil
	}
	dir, err := h.addPath(path.Dir(p), depth+1)
	if err != nil {
		return "", err
	}
	full := path.Join(dir, path.Base(p))
	rel := strings.TrimPrefix(full, "/")
	st, err := os.Lstat(filepath.Join(h.root, full))
	if err != nil {
		return "", err
	}
	switch {
	case st.Mode()&fs.ModeSymlink != 0:
		target, err := os.Readlink(filepath.Join(h.root, full))
		if err != nil {
			return "", err
		}
		h.entries[rel] = entry{path: rel, link: target}
		if !path.IsAbs(target) {
			target = path.Join(dir, target)
		}
		return h.addPath(target, depth+1)
	case st.IsDir():
		if _, ok := h.entries[rel]; !ok {
			h.entries[rel] = entry{path: rel + "/", mode: 0o755}
		}
	case st.Mode().IsRegular():
		if _, ok := h.entries[rel]; !ok {
			data, err := os.ReadFile(filepath.Join(h.root, full))
			if err != nil {
				return "", err
			}
			mode := int64(0o644)
			if st.Mode()&0o111 != 0 {
				mode = 0o755
			}
			h.entries[rel] = entry{path: rel, mode: mode, data: data}
		}
	default:
		return "", fmt.Errorf("%s is not a file, folder or symlink", full)
	}
	return full, nil
}

// elfDeps is the dynamic loader and the DT_NEEDED libraries of the ELF file at p.
func (h *hostTree) elfDeps(p string) (interp string, needed []string, err error) {
	f, err := elf.Open(filepath.Join(h.root, p))
	if err != nil {
		return "", nil, fmt.Errorf("%s: %w", p, err)
	}
	defer f.Close()
	for _, prog := range f.Progs {
		if prog.Type == elf.PT_INTERP {
			b := make([]byte, prog.Filesz)
			if _, err := prog.ReadAt(b, 0); err != nil {
				return "", nil, fmt.Errorf("%s: %w", p, err)
			}
			interp = strings.TrimRight(string(b), "\x00")
		}
	}
	needed, err = f.ImportedLibraries()
	if err != nil {
		return "", nil, fmt.Errorf("%s: %w", p, err)
	}
	return interp, needed, nil
}
