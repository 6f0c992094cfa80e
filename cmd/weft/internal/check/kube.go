package check

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"time"

	authorizationv1 "k8s.io/api/authorization/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/version"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
)

// MinKubernetes is the oldest Kubernetes Weft supports: native sidecars (SidecarContainers) are on by
// default from 1.29.
var MinKubernetes = version.MajorMinor(1, 29)

// The clock skew that warns, and that fails: workload certificates start DefaultSkew (1 min) in the
// past, so a node clock more than that behind the CA's refuses fresh certificates.
const (
	SkewWarn = time.Minute
	SkewFail = 5 * time.Minute
)

// ServerClock tells the apiserver's time.
type ServerClock interface {
	// ServerTime is the apiserver's clock and the local clock at the same moment (the middle of a
	// request), with the uncertainty of the comparison (the apiserver's Date header has whole seconds).
	ServerTime(ctx context.Context) (server, local time.Time, uncertainty time.Duration, err error)
}

// Target is the cluster the checks look at, and what earlier checks found for later ones. Checks of
// one run share it; they run one at a time.
type Target struct {
	// Namespace is the control plane's namespace.
	Namespace string
	// ProbeNamespace is where the webhook check creates its dry-run Pod.
	ProbeNamespace string
	// ProxyNamespace limits the data plane checks to one namespace; empty: every namespace.
	ProxyNamespace string
	// CNI: weft is (to be) installed in CNI mode (the pre checks then also ask for DaemonSets).
	CNI bool
	// Now is the local clock (time.Now when nil).
	Now func() time.Time

	// Connect makes the clients; the first check calls it. Tests set Client, Clock and Admin directly
	// and leave Connect nil.
	Connect func() (kubernetes.Interface, ServerClock, error)
	Client  kubernetes.Interface
	Clock   ServerClock
	Admin   Admin

	server    *version.Version // the apiserver's version (k8s-api-reachable)
	serverRaw string           // as it reports it
	cfg       *proxyConfig     // weft-config (cp-config)
}

func (t *Target) now() time.Time {
	if t.Now != nil {
		return t.Now()
	}
	return time.Now()
}

// Sections.
const (
	SectionAPI        = "kubernetes-api"
	SectionVersion    = "kubernetes-version"
	SectionPre        = "pre-kubernetes-setup"
	SectionControl    = "weft-control-plane"
	SectionWebhook    = "weft-webhook"
	SectionIdentity   = "weft-identity"
	SectionXDS        = "weft-xds"
	SectionDataPlane  = "weft-data-plane"
	kubeconfigHint    = "check --kubeconfig and --context (or KUBECONFIG), and that the cluster is up: kubectl version"
	reinstallHintText = "weft install | kubectl apply -f -"
)

// KubernetesChecks come first in every mode: the client, the apiserver, its version and clock.
func KubernetesChecks(t *Target) []Check {
	return []Check{
		{ID: "k8s-api-client", Section: SectionAPI, Description: "can initialize the client", Fatal: true, Run: t.checkClient},
		{ID: "k8s-api-reachable", Section: SectionAPI, Description: "can query the Kubernetes API", Fatal: true, Run: t.checkReachable},
		{ID: "k8s-clock-skew", Section: SectionAPI, Description: "the local clock agrees with the apiserver's (skew under 1 minute)", Run: t.checkClockSkew},
		{ID: "k8s-version", Section: SectionVersion, Description: fmt.Sprintf("is running Kubernetes %s or later", MinKubernetes), Run: t.checkVersion},
	}
}

func (t *Target) checkClient(context.Context) Result {
	if t.Client != nil {
		return Passed()
	}
	if t.Connect == nil {
		return Failed("no Kubernetes client", kubeconfigHint)
	}
	client, clock, err := t.Connect()
	if err != nil {
		return Failed(err.Error(), kubeconfigHint)
	}
	t.Client, t.Clock = client, clock
	if t.Admin == nil {
		t.Admin = APIServerProxy{Client: client}
	}
	return Passed()
}

func (t *Target) checkReachable(ctx context.Context) Result {
	info, err := serverVersion(ctx, t.Client)
	if err != nil {
		return Failed(fmt.Sprintf("the apiserver did not answer: %v", err), kubeconfigHint)
	}
	v, err := version.ParseGeneric(info)
	if err != nil {
		return Failed(fmt.Sprintf("the apiserver reports version %q, which is not a version: %v", info, err), "")
	}
	t.server, t.serverRaw = v, info
	return Passed()
}

// serverVersion asks /version with ctx (Discovery().ServerVersion() takes none).
func serverVersion(ctx context.Context, client kubernetes.Interface) (string, error) {
	rc := client.Discovery().RESTClient()
	if rc == nil || isNilRESTClient(rc) { // client-go's fake has no REST client
		info, err := client.Discovery().ServerVersion()
		if err != nil {
			return "", err
		}
		return info.GitVersion, nil
	}
	var info struct {
		GitVersion string `json:"gitVersion"`
	}
	body, err := rc.Get().AbsPath("/version").DoRaw(ctx)
	if err != nil {
		return "", err
	}
	if err := json.Unmarshal(body, &info); err != nil {
		return "", fmt.Errorf("reading /version: %w", err)
	}
	return info.GitVersion, nil
}

func isNilRESTClient(rc rest.Interface) bool {
	c, ok := rc.(*rest.RESTClient)
	return ok && c == nil
}

// unstamped is true for a Kubernetes built without its version (go build of k8s.io/kubernetes from
// the module proxy reports v0.0.0-master+$Format:%H$): its version says nothing.
func unstamped(v *version.Version) bool { return v.Major() == 0 && v.Minor() == 0 }

func (t *Target) checkVersion(context.Context) Result {
	if t.server == nil {
		return Failed("the apiserver's version is not known", kubeconfigHint)
	}
	if unstamped(t.server) {
		return Warned(fmt.Sprintf("the apiserver reports version %s, a build without a version stamp: cannot tell whether it is %s or later", t.serverRaw, MinKubernetes),
			"pre-native-sidecars tries the feature itself; kubectl version shows what the cluster runs")
	}
	if !t.server.AtLeast(MinKubernetes) {
		return Failed(fmt.Sprintf("the cluster runs Kubernetes %s; Weft needs %s or later (native sidecars)", t.server, MinKubernetes),
			"upgrade the cluster's control plane to 1.29 or later")
	}
	return Passed()
}

func (t *Target) checkClockSkew(ctx context.Context) Result {
	if t.Clock == nil {
		return Warned("cannot read the apiserver's clock from this client", "")
	}
	server, local, uncertainty, err := t.Clock.ServerTime(ctx)
	if err != nil {
		return Warned(fmt.Sprintf("cannot read the apiserver's clock: %v", err), "")
	}
	skew := server.Sub(local)
	abs := skew
	if abs < 0 {
		abs = -abs
	}
	abs -= uncertainty
	if abs <= SkewWarn {
		return Passed()
	}
	msg := fmt.Sprintf("the apiserver's clock is %s %s this machine's (apiserver %s, here %s)",
		roundDuration(abs), map[bool]string{true: "ahead of", false: "behind"}[skew > 0],
		server.UTC().Format(time.RFC3339), local.UTC().Format(time.RFC3339))
	hint := "synchronize the clocks (NTP) of this machine and the cluster's nodes; certificates are checked against them"
	if abs > SkewFail {
		return Failed(msg, hint)
	}
	return Warned(msg, hint)
}

func roundDuration(d time.Duration) time.Duration {
	if d > time.Hour {
		return d.Round(time.Minute)
	}
	return d.Round(time.Second)
}

// DateClock reads the apiserver's Date header (of GET /version).
type DateClock struct {
	Config *rest.Config
	Now    func() time.Time
}

// ServerTime implements ServerClock.
func (c DateClock) ServerTime(ctx context.Context) (time.Time, time.Time, time.Duration, error) {
	now := c.Now
	if now == nil {
		now = time.Now
	}
	hc, err := rest.HTTPClientFor(c.Config)
	if err != nil {
		return time.Time{}, time.Time{}, 0, err
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, strings.TrimSuffix(c.Config.Host, "/")+"/version", nil)
	if err != nil {
		return time.Time{}, time.Time{}, 0, err
	}
	start := now()
	resp, err := hc.Do(req)
	if err != nil {
		return time.Time{}, time.Time{}, 0, err
	}
	resp.Body.Close()
	end := now()
	date, err := http.ParseTime(resp.Header.Get("Date"))
	if err != nil {
		return time.Time{}, time.Time{}, 0, fmt.Errorf("the apiserver's answer has no Date header: %w", err)
	}
	// Date is truncated to the second: the server's clock lies in [date, date+1s).
	mid := start.Add(end.Sub(start) / 2)
	return date.Add(500 * time.Millisecond), mid, 500*time.Millisecond + end.Sub(start)/2, nil
}

// PreChecks say whether Weft can be installed: nothing of it is there yet, the user may create
// what weft install creates, and the cluster has what Weft needs.
func PreChecks(t *Target) []Check {
	checks := []Check{
		{ID: "pre-namespace", Section: SectionPre, Description: fmt.Sprintf("the control plane namespace %s does not exist yet", t.Namespace), Run: t.checkNoNamespace},
		{ID: "pre-admission-webhooks", Section: SectionPre, Description: "admission webhooks are served (admissionregistration.k8s.io/v1)", Run: t.checkAdmissionAPI},
		{ID: "pre-native-sidecars", Section: SectionPre, Description: "native sidecars are available (Kubernetes 1.29+)", Run: t.checkNativeSidecars},
	}
	type perm struct {
		group, resource, kind string
		namespaced            bool
	}
	perms := []perm{
		{"", "namespaces", "Namespaces", false},
		{"rbac.authorization.k8s.io", "clusterroles", "ClusterRoles", false},
		{"rbac.authorization.k8s.io", "clusterrolebindings", "ClusterRoleBindings", false},
		{"admissionregistration.k8s.io", "mutatingwebhookconfigurations", "MutatingWebhookConfigurations", false},
		{"", "serviceaccounts", "ServiceAccounts", true},
		{"rbac.authorization.k8s.io", "roles", "Roles", true},
		{"rbac.authorization.k8s.io", "rolebindings", "RoleBindings", true},
		{"", "configmaps", "ConfigMaps", true},
		{"", "secrets", "Secrets", true},
		{"", "services", "Services", true},
		{"apps", "deployments", "Deployments", true},
		{"policy", "poddisruptionbudgets", "PodDisruptionBudgets", true},
	}
	if t.CNI {
		perms = append(perms, perm{"apps", "daemonsets", "DaemonSets", true})
	}
	for _, p := range perms {
		ns := ""
		desc := "can create " + p.kind
		if p.namespaced {
			ns = t.Namespace
			desc += " in " + t.Namespace
		}
		checks = append(checks, Check{
			ID: "pre-rbac-" + p.resource, Section: SectionPre, Description: desc,
			Run: func(ctx context.Context) Result { return t.checkCanCreate(ctx, p.group, p.resource, p.kind, ns) },
		})
	}
	return checks
}

func (t *Target) checkNoNamespace(ctx context.Context) Result {
	_, err := t.Client.CoreV1().Namespaces().Get(ctx, t.Namespace, metav1.GetOptions{})
	switch {
	case apierrors.IsNotFound(err):
		return Passed()
	case err != nil:
		return Warned(fmt.Sprintf("cannot tell whether namespace %s exists: %v", t.Namespace, err), "")
	}
	return Warned(fmt.Sprintf("namespace %s already exists: Weft may be installed already (weft check tells)", t.Namespace),
		"to install anew, remove it first (weft uninstall | kubectl delete -f -), or install into another namespace with --namespace")
}

func (t *Target) checkCanCreate(ctx context.Context, group, resource, kind, namespace string) Result {
	ssar := &authorizationv1.SelfSubjectAccessReview{Spec: authorizationv1.SelfSubjectAccessReviewSpec{
		ResourceAttributes: &authorizationv1.ResourceAttributes{Group: group, Resource: resource, Verb: "create", Namespace: namespace},
	}}
	got, err := t.Client.AuthorizationV1().SelfSubjectAccessReviews().Create(ctx, ssar, metav1.CreateOptions{})
	if err != nil {
		return Failed(fmt.Sprintf("cannot ask the apiserver whether you may create %s: %v", kind, err), "")
	}
	if got.Status.Allowed {
		return Passed()
	}
	where := ""
	if namespace != "" {
		where = " in namespace " + namespace
	}
	msg := fmt.Sprintf("you may not create %s%s", kind, where)
	if got.Status.Reason != "" {
		msg += ": " + got.Status.Reason
	}
	return Failed(msg, "install Weft as a cluster administrator (weft install creates cluster-wide RBAC and a webhook)")
}

func (t *Target) checkAdmissionAPI(context.Context) Result {
	list, err := t.Client.Discovery().ServerResourcesForGroupVersion("admissionregistration.k8s.io/v1")
	if err != nil {
		return Failed(fmt.Sprintf("the apiserver does not serve admissionregistration.k8s.io/v1: %v", err),
			"Weft's injector is a mutating admission webhook; it needs Kubernetes with admissionregistration.k8s.io/v1")
	}
	for _, r := range list.APIResources {
		if r.Name == "mutatingwebhookconfigurations" {
			return Passed()
		}
	}
	return Failed("admissionregistration.k8s.io/v1 has no mutatingwebhookconfigurations resource",
		"enable the MutatingAdmissionWebhook admission plugin of the apiserver")
}

func (t *Target) checkNativeSidecars(ctx context.Context) Result {
	hint := "install with --native-sidecars=false: the proxy then runs as an ordinary container"
	// The feature itself: an apiserver without SidecarContainers drops an init container's
	// restartPolicy. A user who may not create Pods there falls back on the version.
	if t.ProbeNamespace != "" {
		always := corev1.ContainerRestartPolicyAlways
		probe := ProbePod(t.ProbeNamespace)
		delete(probe.Annotations, InjectAnnotation)
		probe.Spec.InitContainers = []corev1.Container{{Name: "sidecar", Image: probe.Spec.Containers[0].Image, RestartPolicy: &always}}
		got, err := t.Client.CoreV1().Pods(t.ProbeNamespace).Create(ctx, probe, metav1.CreateOptions{DryRun: []string{metav1.DryRunAll}})
		if err == nil {
			if len(got.Spec.InitContainers) == 1 && got.Spec.InitContainers[0].RestartPolicy != nil && *got.Spec.InitContainers[0].RestartPolicy == always {
				return Passed()
			}
			return Warned("the apiserver dropped the restartPolicy of a native sidecar in a dry-run Pod: the SidecarContainers feature is off", hint)
		}
	}
	if t.server == nil || unstamped(t.server) {
		return Warned("cannot tell: the apiserver's version is not known, and a dry-run Pod could not be created in --probe-namespace",
			"run weft check --pre as a user who may create Pods in --probe-namespace; without native sidecars, install with --native-sidecars=false")
	}
	if t.server.AtLeast(MinKubernetes) {
		return Passed()
	}
	return Warned(fmt.Sprintf("Kubernetes %s has no native sidecars on by default (SidecarContainers is beta from 1.29)", t.server), hint)
}
