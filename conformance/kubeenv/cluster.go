package kubeenv

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// The fake Node of cluster mode, and the annotation kwok manages Nodes by.
const (
	fakeNodeName       = "kwok-node-0"
	kwokNodeAnnotation = "kwok.x-k8s.io/node"
	podCIDR            = "10.44.0.0/24"
)

// startControllers starts kube-controller-manager, kube-scheduler and kwok against the running
// apiserver, registers the fake Node, and returns once the Node is Ready and the controllers have
// made the default ServiceAccount (so that Pods can be created).
func (e *Env) startControllers(pki pkiFiles) error {
	e.PodCIDR, e.NodeName = podCIDR, fakeNodeName
	stages, err := e.kwokStages()
	if err != nil {
		return err
	}
	procs := []struct {
		name string
		args []string
	}{
		{"kube-controller-manager", []string{
			"--kubeconfig=" + e.Kubeconfig,
			"--controllers=*",
			"--leader-elect=false",
			"--secure-port=0",
			"--use-service-account-credentials=false",
			"--service-account-private-key-file=" + pki.saKey,
			"--root-ca-file=" + pki.caCert,
			"--cluster-name=weft-test",
			"-v=1",
		}},
		{"kube-scheduler", []string{
			"--kubeconfig=" + e.Kubeconfig,
			"--leader-elect=false",
			"--secure-port=0",
			"-v=1",
		}},
		{filepath.Join("kwok-"+KwokVersion, "kwok"), []string{
			"--kubeconfig=" + e.Kubeconfig,
			"--config=" + stages,
			"--manage-all-nodes=false",
			"--manage-nodes-with-annotation-selector=" + kwokNodeAnnotation + "=fake",
			"--cidr=" + podCIDR,
			"--node-ip=127.0.0.1",
			"--node-lease-duration-seconds=40",
		}},
	}
	for _, p := range procs {
		cmd := exec.Command(filepath.Join(e.bin, p.name), p.args...)
		cmd.Env = append(os.Environ(), "HOME="+e.Dir) // kwok reads ~/.kwok; keep it to this run
		logPath := filepath.Join(e.Dir, filepath.Base(p.name)+".log")
		if _, err := startLogged(cmd, logPath); err != nil {
			return fmt.Errorf("starting %s: %w", p.name, err)
		}
		e.controllers = append(e.controllers, cmd)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	if err := e.registerNode(ctx); err != nil {
		return err
	}
	if err := poll(ctx, func() (bool, error) {
		n, err := e.Client.CoreV1().Nodes().Get(ctx, fakeNodeName, metav1.GetOptions{})
		if err != nil {
			return false, nil
		}
		for _, c := range n.Status.Conditions {
			if c.Type == corev1.NodeReady && c.Status == corev1.ConditionTrue {
				return true, nil
			}
		}
		return false, nil
	}); err != nil {
		return fmt.Errorf("kwok did not make Node %s Ready: %w\n%s", fakeNodeName, err, tail(filepath.Join(e.Dir, "kwok.log")))
	}
	if err := e.waitServiceAccount(ctx, "default"); err != nil {
		return fmt.Errorf("kube-controller-manager made no default ServiceAccount: %w\n%s", err, tail(filepath.Join(e.Dir, "kube-controller-manager.log")))
	}
	return nil
}

// kwokStages writes the stage configurations build-kube.sh copied from kwok's module into one file:
// Nodes become Ready and renew a lease; Pods become Running and Ready, Jobs' Pods complete, deleted
// Pods go away.
func (e *Env) kwokStages() (string, error) {
	files, err := filepath.Glob(filepath.Join(e.bin, "kwok-"+KwokVersion, "stages", "*.yaml"))
	if err != nil || len(files) == 0 {
		return "", fmt.Errorf("no kwok stage configurations in %s; run `make deps`", filepath.Join(e.bin, "kwok-"+KwokVersion, "stages"))
	}
	var all bytes.Buffer
	for _, f := range files {
		data, err := os.ReadFile(f)
		if err != nil {
			return "", err
		}
		all.WriteString("---\n")
		all.Write(data)
		all.WriteString("\n")
	}
	path := filepath.Join(e.Dir, "kwok-stages.yaml")
	return path, os.WriteFile(path, all.Bytes(), 0o644)
}

func (e *Env) registerNode(ctx context.Context) error {
	node := &corev1.Node{
		ObjectMeta: metav1.ObjectMeta{
			Name:        fakeNodeName,
			Annotations: map[string]string{kwokNodeAnnotation: "fake", "node.alpha.kubernetes.io/ttl": "0"},
			Labels: map[string]string{
				"kubernetes.io/hostname": fakeNodeName,
				"kubernetes.io/os":       "linux",
				"kubernetes.io/arch":     "amd64",
				"type":                   "kwok",
			},
		},
		Spec: corev1.NodeSpec{PodCIDR: podCIDR, PodCIDRs: []string{podCIDR}},
		Status: corev1.NodeStatus{
			Capacity:    fakeNodeResources(),
			Allocatable: fakeNodeResources(),
			NodeInfo:    corev1.NodeSystemInfo{KubeletVersion: "fake", OperatingSystem: "linux", Architecture: "amd64"},
		},
	}
	_, err := e.Client.CoreV1().Nodes().Create(ctx, node, metav1.CreateOptions{})
	if err != nil && !apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("registering the fake Node: %w", err)
	}
	return nil
}

func fakeNodeResources() corev1.ResourceList {
	return corev1.ResourceList{
		corev1.ResourceCPU:    resource.MustParse("32"),
		corev1.ResourceMemory: resource.MustParse("256Gi"),
		corev1.ResourcePods:   resource.MustParse("250"),
	}
}

func (e *Env) waitServiceAccount(ctx context.Context, namespace string) error {
	return poll(ctx, func() (bool, error) {
		_, err := e.Client.CoreV1().ServiceAccounts(namespace).Get(ctx, "default", metav1.GetOptions{})
		return err == nil, nil
	})
}

// CreateNamespace creates a namespace with the given annotations and waits, in cluster mode, until the
// controllers have made its default ServiceAccount: before that, the ServiceAccount admission plugin
// refuses Pods in it (a real cluster has the same race; kubectl users retry).
func (e *Env) CreateNamespace(t testing.TB, name string, annotations map[string]string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name, Annotations: annotations}}
	if _, err := e.Client.CoreV1().Namespaces().Create(ctx, ns, metav1.CreateOptions{}); err != nil {
		t.Fatalf("creating namespace %s: %v", name, err)
	}
	if e.Cluster {
		if err := e.waitServiceAccount(ctx, name); err != nil {
			t.Fatalf("namespace %s got no default ServiceAccount: %v", name, err)
		}
	}
}

// Kubectl runs the harness's kubectl (cluster mode's Kubernetes version) as the admin user with stdin,
// and returns its standard output; a failure returns an error carrying its standard error.
func (e *Env) Kubectl(ctx context.Context, stdin io.Reader, args ...string) (string, error) {
	path := filepath.Join(e.bin, "kubectl")
	if _, err := os.Stat(path); err != nil {
		return "", fmt.Errorf("kubectl is not built (%s); run `make deps`", path)
	}
	cmd := exec.CommandContext(ctx, path, append([]string{"--kubeconfig=" + e.Kubeconfig}, args...)...)
	cmd.Env = append(os.Environ(), "HOME="+e.Dir, "KUBECACHEDIR="+filepath.Join(e.Dir, "kubectl-cache"))
	cmd.Stdin = stdin
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return stdout.String(), fmt.Errorf("kubectl %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(stderr.String()))
	}
	return stdout.String(), nil
}

// Logs returns the end of a component's log (kube-apiserver, kube-controller-manager, kube-scheduler,
// kwok, etcd), for a failing test's message.
func (e *Env) Logs(component string) string { return tail(filepath.Join(e.Dir, component+".log")) }

// poll calls cond every 100 ms until it returns true or an error, or ctx ends.
func poll(ctx context.Context, cond func() (bool, error)) error {
	for {
		ok, err := cond()
		if err != nil {
			return err
		}
		if ok {
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
}

func writeKubeconfig(path, host string, pki pkiFiles) error {
	cfg := fmt.Sprintf(`apiVersion: v1
kind: Config
clusters:
- name: weft-test
  cluster:
    server: %s
    certificate-authority: %s
users:
- name: admin
  user:
    client-certificate: %s
    client-key: %s
contexts:
- name: weft-test
  context: {cluster: weft-test, user: admin}
current-context: weft-test
`, host, pki.caCert, pki.adminCert, pki.adminKey)
	return os.WriteFile(path, []byte(cfg), 0o600)
}
