package prebuilt

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
)

// MeshBinaries returns weft-control and weft-proxy for a test that runs them as processes: root's bin/
// when `make build` made them from the current sources, else both built into a new temp dir (weft-proxy
// the way the Makefile builds it), which tmp names for the caller to remove ("" when nothing was built).
func MeshBinaries(root string) (control, proxy, tmp string, err error) {
	control, proxy = filepath.Join(root, "bin", "weft-control"), filepath.Join(root, "bin", "weft-proxy")
	if Fresh(root, control, proxy) {
		return control, proxy, "", nil
	}
	tmp, err = os.MkdirTemp("", "weft-mesh-bin-")
	if err != nil {
		return "", "", "", err
	}
	build := func(pkg string, env ...string) error {
		cmd := exec.Command("go", "build", "-o", tmp+"/", pkg)
		cmd.Dir = root
		cmd.Env = append(os.Environ(), env...)
		if out, err := cmd.CombinedOutput(); err != nil {
			return fmt.Errorf("building %s: %v\n%s", pkg, err, out)
		}
		return nil
	}
	if err := build("./cmd/weft-control"); err != nil {
		return "", "", tmp, err
	}
	if err := build("./cmd/weft-proxy", "CGO_ENABLED=0", "GOEXPERIMENT=nogreenteagc"); err != nil {
		return "", "", tmp, err
	}
	return filepath.Join(tmp, "weft-control"), filepath.Join(tmp, "weft-proxy"), tmp, nil
}
