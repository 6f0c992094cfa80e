// Package kubeenv runs a real Kubernetes control plane for tests: etcd (Debian's etcd-server) and a
// kube-apiserver built from the Go module proxy (see build-kube.sh), both on free loopback ports, and in
// cluster mode the real controllers next to them.
//
// One instance of each mode is shared per test package and started on first use:
//
//	func TestMain(m *testing.M) { os.Exit(kubeenv.Main(m)) }
//
//	func TestSomething(t *testing.T) {
//		env := kubeenv.Get(t)             // *rest.Config for an admin user in env.Config
//		client := env.Client              // a ready kubernetes.Interface
//	}
//
// Get is the apiserver-only mode (starts in ~2 s): there is no controller-manager, scheduler or kubelet,
// tests create EndpointSlices themselves, and the ServiceAccount admission plugin is off so that Pods
// need no ServiceAccount object. ServiceAccount token signing is on: TokenRequest and TokenReview work.
//
// GetCluster is the cluster mode (starts in ~5 s): kube-controller-manager (Deployments → ReplicaSets →
// Pods, EndpointSlices, ServiceAccounts and their tokens, namespace deletion, garbage collection),
// kube-scheduler, and kwok playing the kubelet of one fake Node: scheduled Pods become Running and
// Ready with an IP from PodCIDR, without containers. The ServiceAccount admission plugin is on, as in a
// real cluster. Pod IPs are not loopback (EndpointSlices reject 127.0.0.0/8), so nothing answers on
// them unless a test makes network namespaces with those addresses.
//
// A missing prerequisite skips the test with a message naming `make deps`, or fails it under
// WEFT_REQUIRE_ALL=1.
package kubeenv

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"github.com/weftmesh/weft/conformance/netns"
	"github.com/weftmesh/weft/conformance/prereq"
)

// Env is a running etcd and kube-apiserver.
type Env struct {
	// Config is for an admin user (group system:masters).
	Config *rest.Config
	// Client is a clientset built from Config.
	Client kubernetes.Interface
	// Dir holds the certificates, keys, data and logs; it is removed at the end.
	Dir string
	// ServiceAccountIssuer is the issuer of ServiceAccount tokens.
	ServiceAccountIssuer string
	// Kubeconfig is a kubeconfig file for the admin user, for tools such as kubectl.
	Kubeconfig string
	// CAFile is the PEM file of the cluster's CA (the apiserver's serving certificate's issuer).
	CAFile string
	// Cluster reports the cluster mode (GetCluster): controllers, scheduler and kwok run.
	Cluster bool
	// PodCIDR is where kwok takes Pod IPs from (cluster mode).
	PodCIDR string
	// NodeName is the fake Node that Pods are scheduled to (cluster mode).
	NodeName string

	bin             string // the folder with the Kubernetes binaries (build-kube.sh)
	etcd, apiserver *exec.Cmd
	controllers     []*exec.Cmd     // kube-controller-manager, kube-scheduler, kwok
	apiserverExited <-chan struct{} // closed when the current apiserver process has exited
	apiserverBin    string
	apiserverArgs   []string
	apiserverLog    string
}

// instance is one lazily started environment of a mode.
type instance struct {
	env     *Env
	err     error
	started bool
}

var (
	mu      sync.Mutex
	shared  instance // Get
	cluster instance // GetCluster
	inMain  bool
)

// Main runs the package's tests, then stops the shared environment and removes netns.WorldDir. Call it
// from TestMain.
func Main(m *testing.M) int {
	mu.Lock()
	inMain = true
	mu.Unlock()
	code := m.Run()
	mu.Lock()
	defer mu.Unlock()
	for _, in := range []*instance{&shared, &cluster} {
		if in.env != nil {
			in.env.stop()
			in.env = nil
		}
	}
	// Packages with a cluster often run pods as network namespaces too: remove the binaries
	// netns.GoBuild made for them (nothing when the package made none).
	netns.RemoveWorldDir()
	return code
}

// Get returns the package's shared apiserver-only environment, starting it on first use. It stops the
// test (skip, or failure under WEFT_REQUIRE_ALL=1) when etcd or kube-apiserver is not installed.
func Get(t testing.TB) *Env {
	t.Helper()
	return get(t, &shared, false)
}

// GetCluster returns the package's shared cluster-mode environment (controllers, scheduler, kwok),
// starting it on first use; see the package comment.
func GetCluster(t testing.TB) *Env {
	t.Helper()
	return get(t, &cluster, true)
}

func get(t testing.TB, in *instance, clusterMode bool) *Env {
	t.Helper()
	mu.Lock()
	defer mu.Unlock()
	if !inMain {
		t.Fatal("kubeenv.Get needs kubeenv.Main: add `func TestMain(m *testing.M) { os.Exit(kubeenv.Main(m)) }` to the package")
	}
	etcdBin, err := exec.LookPath("etcd")
	if err != nil {
		prereq.Missing(t, "etcd is not installed (Debian package etcd-server); run `make deps`")
	}
	bin, err := binDir(clusterMode)
	if err != nil {
		prereq.Missing(t, "%v; run `make deps` (builds the Kubernetes binaries once, about fifteen minutes)", err)
	}
	if !in.started {
		in.started = true
		in.env, in.err = start(etcdBin, bin, clusterMode)
	}
	if in.err != nil {
		t.Fatalf("starting the test Kubernetes control plane: %v", in.err)
	}
	return in.env
}

// KwokVersion is the kwok release build-kube.sh builds.
const KwokVersion = "v0.8.0"

// binDir finds the folder of Kubernetes binaries that build-kube.sh fills: $WEFT_KUBE_BIN, else the
// cache keyed by the Kubernetes version of kube/go.mod and the Go version (-stamped: binaries that
// report their version). It checks that the binaries of the mode are there.
func binDir(clusterMode bool) (string, error) {
	dir := os.Getenv("WEFT_KUBE_BIN")
	if dir == "" {
		version, err := kubernetesVersion()
		if err != nil {
			return "", err
		}
		cache := os.Getenv("WEFT_CACHE_DIR")
		if cache == "" {
			base := os.Getenv("XDG_CACHE_HOME")
			if base == "" {
				home, err := os.UserHomeDir()
				if err != nil {
					return "", err
				}
				base = filepath.Join(home, ".cache")
			}
			cache = filepath.Join(base, "weft")
		}
		dir = filepath.Join(cache, "kubernetes", version+"-"+runtime.Version()+"-stamped")
	}
	need := []string{"kube-apiserver"}
	if clusterMode {
		need = append(need, "kube-controller-manager", "kube-scheduler", "kubectl", filepath.Join("kwok-"+KwokVersion, "kwok"))
	}
	for _, b := range need {
		if _, err := os.Stat(filepath.Join(dir, b)); err != nil {
			return "", fmt.Errorf("%s is not built (looked for %s)", filepath.Base(b), filepath.Join(dir, b))
		}
	}
	return dir, nil
}

// KubectlPath is the kubectl of the harness's Kubernetes version, or an error naming `make deps`.
func KubectlPath() (string, error) {
	dir, err := binDir(true)
	if err != nil {
		return "", err
	}
	return filepath.Join(dir, "kubectl"), nil
}

// kubernetesVersion reads the k8s.io/kubernetes version that apiserver/go.mod requires.
func kubernetesVersion() (string, error) {
	_, self, _, ok := runtime.Caller(0)
	if !ok {
		return "", errors.New("cannot locate the kubeenv sources")
	}
	gomod := filepath.Join(filepath.Dir(self), "kube", "go.mod")
	data, err := os.ReadFile(gomod)
	if err != nil {
		return "", err
	}
	for _, line := range strings.Split(string(data), "\n") {
		f := strings.Fields(strings.TrimPrefix(strings.TrimSpace(line), "require "))
		if len(f) >= 2 && f[0] == "k8s.io/kubernetes" && strings.HasPrefix(f[1], "v") {
			return f[1], nil
		}
	}
	return "", fmt.Errorf("%s does not require k8s.io/kubernetes", gomod)
}

func start(etcdBin, bin string, clusterMode bool) (_ *Env, err error) {
	base := ""
	if st, err := os.Stat("/dev/shm"); err == nil && st.IsDir() {
		base = "/dev/shm" // etcd fsyncs; memory makes it fast
	}
	dir, err := os.MkdirTemp(base, "weft-kubeenv-")
	if err != nil {
		return nil, err
	}
	env := &Env{Dir: dir, ServiceAccountIssuer: "https://kubernetes.default.svc.cluster.local", Cluster: clusterMode, bin: bin}
	defer func() {
		if err != nil {
			env.stop()
		}
	}()

	pki, err := writePKI(dir)
	if err != nil {
		return nil, fmt.Errorf("writing certificates: %w", err)
	}

	clientPort, peerPort := freePort(), freePort()
	etcdURL := "http://127.0.0.1:" + strconv.Itoa(clientPort)
	peerURL := "http://127.0.0.1:" + strconv.Itoa(peerPort)
	env.etcd = exec.Command(etcdBin,
		"--name=weft-test",
		"--data-dir="+filepath.Join(dir, "etcd"),
		"--listen-client-urls="+etcdURL,
		"--advertise-client-urls="+etcdURL,
		"--listen-peer-urls="+peerURL,
		"--initial-advertise-peer-urls="+peerURL,
		"--initial-cluster=weft-test="+peerURL,
		"--log-level=warn",
	)
	env.etcd.Env = append(os.Environ(), "ETCD_UNSUPPORTED_ARCH="+runtime.GOARCH)
	if _, err := startLogged(env.etcd, filepath.Join(dir, "etcd.log")); err != nil {
		return nil, fmt.Errorf("starting etcd: %w", err)
	}
	if err := waitTCP("127.0.0.1:"+strconv.Itoa(clientPort), 30*time.Second); err != nil {
		return nil, fmt.Errorf("etcd did not start: %w\n%s", err, tail(filepath.Join(dir, "etcd.log")))
	}

	securePort := freePort()
	env.CAFile = pki.caCert
	env.apiserverBin = filepath.Join(bin, "kube-apiserver")
	env.apiserverLog = filepath.Join(dir, "kube-apiserver.log")
	env.apiserverArgs = []string{
		"--etcd-servers=" + etcdURL,
		"--bind-address=127.0.0.1",
		"--advertise-address=127.0.0.1",
		"--secure-port=" + strconv.Itoa(securePort),
		"--tls-cert-file=" + pki.servingCert,
		"--tls-private-key-file=" + pki.servingKey,
		"--client-ca-file=" + pki.caCert,
		"--service-account-issuer=" + env.ServiceAccountIssuer,
		"--service-account-key-file=" + pki.saPub,
		"--service-account-signing-key-file=" + pki.saKey,
		"--service-cluster-ip-range=10.96.0.0/16",
		"--authorization-mode=RBAC",
		"--endpoint-reconciler-type=none",
		"--enable-priority-and-fairness=false",
		"--allow-privileged=true",
		"--profiling=false",
		"--cert-dir=" + filepath.Join(dir, "apiserver-certs"),
		"-v=1",
	}
	if !clusterMode {
		// Pods need no ServiceAccount object: there is no controller to create the default one.
		env.apiserverArgs = append(env.apiserverArgs, "--disable-admission-plugins=ServiceAccount")
	}
	env.Config = &rest.Config{
		Host: "https://127.0.0.1:" + strconv.Itoa(securePort),
		TLSClientConfig: rest.TLSClientConfig{
			CAFile:   pki.caCert,
			CertFile: pki.adminCert,
			KeyFile:  pki.adminKey,
		},
		QPS:   1000,
		Burst: 2000,
	}
	if err := env.startAPIServer(); err != nil {
		return nil, err
	}
	env.Client, err = kubernetes.NewForConfig(env.Config)
	if err != nil {
		return nil, err
	}
	env.Kubeconfig = filepath.Join(dir, "admin.kubeconfig")
	if err := writeKubeconfig(env.Kubeconfig, env.Config.Host, pki); err != nil {
		return nil, err
	}
	if clusterMode {
		if err := env.startControllers(pki); err != nil {
			return nil, err
		}
	}
	return env, nil
}

func (e *Env) startAPIServer() error {
	e.apiserver = exec.Command(e.apiserverBin, e.apiserverArgs...)
	exited, err := startLogged(e.apiserver, e.apiserverLog)
	if err != nil {
		return fmt.Errorf("starting kube-apiserver: %w", err)
	}
	e.apiserverExited = exited
	if err := e.waitReady(90 * time.Second); err != nil {
		return fmt.Errorf("kube-apiserver did not become ready: %w\n%s", err, tail(e.apiserverLog))
	}
	return nil
}

// RestartAPIServer stops kube-apiserver and starts it again on the same port and etcd, as an apiserver
// upgrade or crash would: every watch drops, and clients must relist. It returns once it is ready.
func (e *Env) RestartAPIServer(t testing.TB) {
	t.Helper()
	stopProcess(e.apiserver)
	if err := e.startAPIServer(); err != nil {
		t.Fatalf("restarting kube-apiserver: %v", err)
	}
}

func (e *Env) waitReady(timeout time.Duration) error {
	client, err := kubernetes.NewForConfig(e.Config)
	if err != nil {
		return err
	}
	deadline := time.Now().Add(timeout)
	var last error
	for time.Now().Before(deadline) {
		select {
		case <-e.apiserverExited:
			return errors.New("kube-apiserver exited")
		default:
		}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		body, err := client.Discovery().RESTClient().Get().AbsPath("/readyz").DoRaw(ctx)
		cancel()
		if err == nil && bytes.Equal(bytes.TrimSpace(body), []byte("ok")) {
			return nil
		}
		last = err
		time.Sleep(200 * time.Millisecond)
	}
	return fmt.Errorf("after %s: %v", timeout, last)
}

func (e *Env) stop() {
	for _, c := range e.controllers {
		stopProcess(c)
	}
	stopProcess(e.apiserver)
	stopProcess(e.etcd)
	if e.Dir != "" {
		os.RemoveAll(e.Dir)
	}
}

// startLogged starts cmd with its output in logPath; the channel closes when the process has exited.
func startLogged(cmd *exec.Cmd, logPath string) (<-chan struct{}, error) {
	logFile, err := os.Create(logPath)
	if err != nil {
		return nil, err
	}
	cmd.Stdout, cmd.Stderr = logFile, logFile
	// Its own process group, killed with the test binary if that dies without cleaning up.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		logFile.Close()
		return nil, err
	}
	exited := make(chan struct{})
	go func() {
		_ = cmd.Wait()
		logFile.Close()
		close(exited)
	}()
	return exited, nil
}

func stopProcess(cmd *exec.Cmd) {
	if cmd == nil || cmd.Process == nil {
		return
	}
	_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGTERM)
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		if syscall.Kill(cmd.Process.Pid, 0) != nil {
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
	_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
}

func waitTCP(addr string, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err == nil {
			c.Close()
			return nil
		}
		if time.Now().After(deadline) {
			return err
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func freePort() int {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		panic(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

func tail(path string) string {
	data, _ := os.ReadFile(path)
	if len(data) > 4000 {
		data = data[len(data)-4000:]
	}
	return string(data)
}

type pkiFiles struct {
	caCert, servingCert, servingKey, adminCert, adminKey, saKey, saPub string
}

// writePKI makes a throwaway CA, a serving certificate for 127.0.0.1, an admin client certificate in
// group system:masters, and the ServiceAccount token signing key pair.
func writePKI(dir string) (pkiFiles, error) {
	f := pkiFiles{
		caCert:      filepath.Join(dir, "ca.crt"),
		servingCert: filepath.Join(dir, "apiserver.crt"),
		servingKey:  filepath.Join(dir, "apiserver.key"),
		adminCert:   filepath.Join(dir, "admin.crt"),
		adminKey:    filepath.Join(dir, "admin.key"),
		saKey:       filepath.Join(dir, "sa.key"),
		saPub:       filepath.Join(dir, "sa.pub"),
	}
	now := time.Now()
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return f, err
	}
	caTmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "weft-test-kubernetes-ca"},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(24 * time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		return f, err
	}
	ca, _ := x509.ParseCertificate(caDER)
	if err := writePEM(f.caCert, "CERTIFICATE", caDER); err != nil {
		return f, err
	}
	leaf := func(serial int64, subject pkix.Name, usage x509.ExtKeyUsage, ips []net.IP, certPath, keyPath string) error {
		key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			return err
		}
		tmpl := &x509.Certificate{
			SerialNumber: big.NewInt(serial),
			Subject:      subject,
			NotBefore:    now.Add(-time.Hour),
			NotAfter:     now.Add(24 * time.Hour),
			KeyUsage:     x509.KeyUsageDigitalSignature,
			ExtKeyUsage:  []x509.ExtKeyUsage{usage},
			IPAddresses:  ips,
			DNSNames:     []string{"localhost", "kubernetes.default.svc"},
		}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
		if err != nil {
			return err
		}
		keyDER, err := x509.MarshalECPrivateKey(key)
		if err != nil {
			return err
		}
		if err := writePEM(certPath, "CERTIFICATE", der); err != nil {
			return err
		}
		return writePEM(keyPath, "EC PRIVATE KEY", keyDER)
	}
	if err := leaf(2, pkix.Name{CommonName: "kube-apiserver"}, x509.ExtKeyUsageServerAuth, []net.IP{net.IPv4(127, 0, 0, 1)}, f.servingCert, f.servingKey); err != nil {
		return f, err
	}
	if err := leaf(3, pkix.Name{CommonName: "weft-test-admin", Organization: []string{"system:masters"}}, x509.ExtKeyUsageClientAuth, nil, f.adminCert, f.adminKey); err != nil {
		return f, err
	}
	saKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return f, err
	}
	saDER, err := x509.MarshalECPrivateKey(saKey)
	if err != nil {
		return f, err
	}
	pubDER, err := x509.MarshalPKIXPublicKey(&saKey.PublicKey)
	if err != nil {
		return f, err
	}
	if err := writePEM(f.saKey, "EC PRIVATE KEY", saDER); err != nil {
		return f, err
	}
	return f, writePEM(f.saPub, "PUBLIC KEY", pubDER)
}

func writePEM(path, kind string, der []byte) error {
	return os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: kind, Bytes: der}), 0o600)
}
