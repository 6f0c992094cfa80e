package check

import (
	"context"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"sort"
	"strings"
	"time"

	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"sigs.k8s.io/yaml"

	"github.com/weftmesh/weft/identity"
)

// The names weft install gives the control plane's objects (deploy/charts/weft).
const (
	ControlPlaneName  = "weft-control"
	ControlPlaneLabel = "app.kubernetes.io/name=weft-control"
	InjectorName      = "weft-injector"
	WebhookName       = "inject.weft.io"
	IdentitySecret    = "weft-identity"
	ConfigName        = "weft-config"
	ProxyContainer    = "weft-proxy"
	AdminPort         = "15014"
	// ProxyVersionAnnotation is the version of the proxy the injector added to a Pod.
	ProxyVersionAnnotation = "weft.io/proxy-version"
	// InjectAnnotation asks the injector for a proxy.
	InjectAnnotation = "weft.io/inject"
	// ExpiryWarning: a trust anchor or issuer with less left than this is a warning.
	ExpiryWarning = 60 * 24 * time.Hour
)

// Admin reads weft-control's admin endpoints (port 15014) through the apiserver.
type Admin interface {
	// Service GETs path from the weft-control Service (whichever replica it picks).
	Service(ctx context.Context, namespace, path string) ([]byte, error)
	// Pod GETs path from one weft-control Pod.
	Pod(ctx context.Context, namespace, pod, path string) ([]byte, error)
}

// APIServerProxy is Admin through the apiserver's service and pod proxies
// (/api/v1/namespaces/NS/services/http:weft-control:15014/proxy/PATH and .../pods/POD:15014/proxy/PATH).
type APIServerProxy struct{ Client kubernetes.Interface }

// Service implements Admin.
func (a APIServerProxy) Service(ctx context.Context, namespace, path string) ([]byte, error) {
	return withBody(a.Client.CoreV1().Services(namespace).ProxyGet("http", ControlPlaneName, AdminPort, path, nil).DoRaw(ctx))
}

// Pod implements Admin.
func (a APIServerProxy) Pod(ctx context.Context, namespace, pod, path string) ([]byte, error) {
	return withBody(a.Client.CoreV1().Pods(namespace).ProxyGet("http", pod, AdminPort, path, nil).DoRaw(ctx))
}

// withBody adds what weft-control answered (such as "not ready: discovery has not synced") to
// client-go's generic error for a status it does not know ("the server is currently unable to handle
// the request" for a 503).
func withBody(body []byte, err error) ([]byte, error) {
	if err == nil {
		return body, nil
	}
	b := strings.TrimSpace(string(body))
	var st metav1.Status
	if strings.HasPrefix(b, "{") && json.Unmarshal(body, &st) == nil {
		b = st.Message // the apiserver's own: "error trying to reach service: dial tcp ...: connection refused"
	}
	if b != "" && !strings.Contains(err.Error(), b) {
		return body, fmt.Errorf("%w: %s", err, trimBody(b))
	}
	return body, err
}

// proxyConfig is what the checks read of weft-config's config.yaml.
type proxyConfig struct {
	Version     string `json:"version"`
	TrustDomain string `json:"trustDomain"`
	ProxyImage  string `json:"proxyImage"`
}

// ControlPlaneChecks say whether an installed Weft works: its Pods, the webhook, the CA, xDS.
func ControlPlaneChecks(t *Target) []Check {
	ns := t.Namespace
	return []Check{
		{ID: "cp-namespace", Section: SectionControl, Description: fmt.Sprintf("the control plane namespace %s exists", ns), Fatal: true, Run: t.checkNamespace},
		{ID: "cp-config", Section: SectionControl, Description: "the weft-config ConfigMap holds the proxy configuration", Run: t.checkConfig},
		{ID: "cp-deployment", Section: SectionControl, Description: "the weft-control Deployment has all its replicas ready", Run: t.checkDeployment},
		{ID: "cp-pods", Section: SectionControl, Description: "the weft-control Pods are Running and Ready", Run: t.checkControlPods},

		{ID: "webhook-config", Section: SectionWebhook, Description: "the MutatingWebhookConfiguration weft-injector exists", Gate: true, Run: t.checkWebhookConfig},
		{ID: "webhook-service", Section: SectionWebhook, Description: "the injector Service has ready endpoints", Run: t.checkWebhookService},
		{ID: "webhook-ca-bundle", Section: SectionWebhook, Description: "the webhook's caBundle verifies the identity issuer", Run: t.checkWebhookCABundle},
		{ID: "webhook-injects", Section: SectionWebhook, Description: "the apiserver calls the webhook and it injects the proxy (dry-run Pod)", Run: t.checkWebhookInjects},

		{ID: "identity-secret", Section: SectionIdentity, Description: "the Secret weft-identity holds ca.crt, issuer.crt and issuer.key", Gate: true, Run: t.checkIdentitySecret},
		{ID: "identity-chain", Section: SectionIdentity, Description: "the issuer chains to the trust anchors and matches its key", Run: t.identityCheck(checkChain)},
		{ID: "identity-anchors-valid", Section: SectionIdentity, Description: "the trust anchors are within their validity period", Run: t.identityCheck(checkAnchorsValid)},
		{ID: "identity-anchors-60d", Section: SectionIdentity, Description: "the trust anchors are valid for at least 60 days", Run: t.identityCheck(checkAnchors60d)},
		{ID: "identity-issuer-valid", Section: SectionIdentity, Description: "the issuer certificate is within its validity period", Run: t.identityCheck(checkIssuerValid)},
		{ID: "identity-issuer-60d", Section: SectionIdentity, Description: "the issuer certificate is valid for at least 60 days", Run: t.identityCheck(checkIssuer60d)},

		{ID: "xds-ready", Section: SectionXDS, Description: "weft-control answers /ready through its Service (xDS is serving)", Run: t.checkXDSReady},
		{ID: "xds-replicas-ready", Section: SectionXDS, Description: "every weft-control replica answers /ready", Run: t.checkXDSReplicas},
	}
}

func (t *Target) checkNamespace(ctx context.Context) Result {
	_, err := t.Client.CoreV1().Namespaces().Get(ctx, t.Namespace, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return Failed(fmt.Sprintf("namespace %s does not exist: Weft is not installed there", t.Namespace),
			"install Weft (weft check --pre, then "+reinstallHintText+"), or name its namespace with --namespace")
	}
	if err != nil {
		return Failed(fmt.Sprintf("reading namespace %s: %v", t.Namespace, err), "")
	}
	return Passed()
}

func (t *Target) checkConfig(ctx context.Context) Result {
	t.cfg = nil
	cm, err := t.Client.CoreV1().ConfigMaps(t.Namespace).Get(ctx, ConfigName, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return Failed(fmt.Sprintf("ConfigMap %s/%s does not exist: the injector has no proxy configuration", t.Namespace, ConfigName), "re-apply the control plane: "+reinstallHintText)
	}
	if err != nil {
		return Failed(fmt.Sprintf("reading ConfigMap %s/%s: %v", t.Namespace, ConfigName, err), "")
	}
	var c proxyConfig
	if err := yaml.Unmarshal([]byte(cm.Data["config.yaml"]), &c); err != nil {
		return Failed(fmt.Sprintf("ConfigMap %s/%s: config.yaml: %v", t.Namespace, ConfigName, err), "re-apply the control plane: "+reinstallHintText)
	}
	if c.Version == "" || c.ProxyImage == "" {
		return Failed(fmt.Sprintf("ConfigMap %s/%s: config.yaml names no version or proxyImage", t.Namespace, ConfigName), "re-apply the control plane: "+reinstallHintText)
	}
	t.cfg = &c
	return Passed()
}

func (t *Target) checkDeployment(ctx context.Context) Result {
	d, err := t.Client.AppsV1().Deployments(t.Namespace).Get(ctx, ControlPlaneName, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return Failed(fmt.Sprintf("Deployment %s/%s does not exist", t.Namespace, ControlPlaneName), "re-apply the control plane: "+reinstallHintText)
	}
	if err != nil {
		return Failed(fmt.Sprintf("reading Deployment %s/%s: %v", t.Namespace, ControlPlaneName, err), "")
	}
	want := int32(1)
	if d.Spec.Replicas != nil {
		want = *d.Spec.Replicas
	}
	if want == 0 {
		return Failed(fmt.Sprintf("Deployment %s/%s is scaled to 0 replicas: no control plane is running", t.Namespace, ControlPlaneName),
			fmt.Sprintf("kubectl -n %s scale deployment/%s --replicas=3", t.Namespace, ControlPlaneName))
	}
	if d.Status.ReadyReplicas < want || d.Status.UpdatedReplicas < want {
		return Failed(fmt.Sprintf("%d of %d replicas ready (%d up to date)", d.Status.ReadyReplicas, want, d.Status.UpdatedReplicas),
			fmt.Sprintf("kubectl -n %s get pods -l %s; kubectl -n %s logs deployment/%s", t.Namespace, ControlPlaneLabel, t.Namespace, ControlPlaneName))
	}
	return Passed()
}

// controlPods are the weft-control Pods that are not being deleted, sorted by name.
func (t *Target) controlPods(ctx context.Context) ([]corev1.Pod, error) {
	list, err := t.Client.CoreV1().Pods(t.Namespace).List(ctx, metav1.ListOptions{LabelSelector: ControlPlaneLabel})
	if err != nil {
		return nil, err
	}
	var out []corev1.Pod
	for _, p := range list.Items {
		if p.DeletionTimestamp == nil {
			out = append(out, p)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out, nil
}

func (t *Target) checkControlPods(ctx context.Context) Result {
	pods, err := t.controlPods(ctx)
	if err != nil {
		return Failed(fmt.Sprintf("listing the weft-control Pods: %v", err), "")
	}
	if len(pods) == 0 {
		return Failed(fmt.Sprintf("no weft-control Pod in namespace %s", t.Namespace),
			fmt.Sprintf("kubectl -n %s describe deployment/%s (is it scaled to 0, or are its Pods refused?)", t.Namespace, ControlPlaneName))
	}
	var bad []string
	for _, p := range pods {
		if why := podNotReady(p); why != "" {
			bad = append(bad, p.Namespace+"/"+p.Name+": "+why)
		}
	}
	if len(bad) > 0 {
		return Failed(strings.Join(bad, "\n"), fmt.Sprintf("kubectl -n %s describe pod -l %s; kubectl -n %s logs deployment/%s", t.Namespace, ControlPlaneLabel, t.Namespace, ControlPlaneName))
	}
	return Passed()
}

// podNotReady says why a Pod is not Running and Ready, or "" if it is.
func podNotReady(p corev1.Pod) string {
	if p.Status.Phase != corev1.PodRunning {
		return "phase " + string(p.Status.Phase)
	}
	for _, c := range p.Status.Conditions {
		if c.Type == corev1.PodReady {
			if c.Status == corev1.ConditionTrue {
				return ""
			}
			why := "Running but not Ready"
			if c.Message != "" {
				why += " (" + c.Message + ")"
			}
			return why
		}
	}
	return "Running but not Ready"
}

// webhook finds the injector's webhook in the MutatingWebhookConfiguration.
func (t *Target) webhook(ctx context.Context) (*admissionregistrationv1.MutatingWebhook, error) {
	mwc, err := t.Client.AdmissionregistrationV1().MutatingWebhookConfigurations().Get(ctx, InjectorName, metav1.GetOptions{})
	if err != nil {
		return nil, err
	}
	for i := range mwc.Webhooks {
		if mwc.Webhooks[i].Name == WebhookName {
			return &mwc.Webhooks[i], nil
		}
	}
	return nil, fmt.Errorf("MutatingWebhookConfiguration %s has no webhook %s", InjectorName, WebhookName)
}

func (t *Target) checkWebhookConfig(ctx context.Context) Result {
	_, err := t.webhook(ctx)
	if apierrors.IsNotFound(err) {
		return Failed(fmt.Sprintf("MutatingWebhookConfiguration %s does not exist: new Pods get no proxy", InjectorName), "re-apply the control plane: "+reinstallHintText)
	}
	if err != nil {
		return Failed(err.Error(), "re-apply the control plane: "+reinstallHintText)
	}
	return Passed()
}

func (t *Target) checkWebhookService(ctx context.Context) Result {
	wh, err := t.webhook(ctx)
	if err != nil {
		return Failed(err.Error(), "")
	}
	ref := wh.ClientConfig.Service
	if ref == nil {
		return Passed() // a URL webhook (a development setup): there is no Service to look at
	}
	hint := "re-apply the control plane: " + reinstallHintText
	if _, err := t.Client.CoreV1().Services(ref.Namespace).Get(ctx, ref.Name, metav1.GetOptions{}); apierrors.IsNotFound(err) {
		return Failed(fmt.Sprintf("Service %s/%s does not exist: the apiserver cannot call the injector, and new Pods get no proxy", ref.Namespace, ref.Name), hint)
	} else if err != nil {
		return Failed(fmt.Sprintf("reading Service %s/%s: %v", ref.Namespace, ref.Name, err), "")
	}
	slices, err := t.Client.DiscoveryV1().EndpointSlices(ref.Namespace).List(ctx, metav1.ListOptions{LabelSelector: discoveryv1.LabelServiceName + "=" + ref.Name})
	if err != nil {
		return Failed(fmt.Sprintf("listing the EndpointSlices of Service %s/%s: %v", ref.Namespace, ref.Name, err), "")
	}
	ready := 0
	for _, s := range slices.Items {
		for _, e := range s.Endpoints {
			if e.Conditions.Ready == nil || *e.Conditions.Ready {
				ready += len(e.Addresses)
			}
		}
	}
	if ready == 0 {
		return Failed(fmt.Sprintf("Service %s/%s has no ready endpoint: no weft-control Pod is ready to inject", ref.Namespace, ref.Name),
			fmt.Sprintf("kubectl -n %s get pods -l %s; kubectl -n %s logs deployment/%s", t.Namespace, ControlPlaneLabel, t.Namespace, ControlPlaneName))
	}
	return Passed()
}

func (t *Target) checkWebhookCABundle(ctx context.Context) Result {
	wh, err := t.webhook(ctx)
	if err != nil {
		return Failed(err.Error(), "")
	}
	hint := "re-apply the control plane with the CA it runs with: weft install --identity-dir DIR | kubectl apply -f -"
	roots, err := identity.ParseCertificatesPEM(wh.ClientConfig.CABundle)
	if err != nil || len(roots) == 0 {
		why := "holds no certificate"
		if err != nil {
			why = "does not parse: " + err.Error()
		}
		return Failed("the webhook's caBundle "+why, hint)
	}
	m, err := t.material(ctx)
	if err != nil {
		return Failed(err.Error(), "")
	}
	chain, err := identity.ParseCertificatesPEM(m.IssuerCert)
	if err != nil || len(chain) == 0 {
		return Failed(fmt.Sprintf("the issuer certificate in Secret %s/%s does not parse", t.Namespace, IdentitySecret), "")
	}
	pool := x509.NewCertPool()
	for _, r := range roots {
		pool.AddCert(r)
	}
	inter := x509.NewCertPool()
	for _, c := range chain[1:] {
		inter.AddCert(c)
	}
	// At a moment the issuer is valid: its expiry is identity-issuer-valid's business.
	if _, err := chain[0].Verify(x509.VerifyOptions{Roots: pool, Intermediates: inter, CurrentTime: validMoment(chain[0], t.now()), KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}}); err != nil {
		return Failed(fmt.Sprintf("the webhook's caBundle does not verify the issuer that signs the injector's certificate (%v): the apiserver will refuse the injector's TLS", err), hint)
	}
	return Passed()
}

// validMoment is now if cert is valid now, else the middle of its validity.
func validMoment(cert *x509.Certificate, now time.Time) time.Time {
	if now.Before(cert.NotBefore) || now.After(cert.NotAfter) {
		return cert.NotBefore.Add(cert.NotAfter.Sub(cert.NotBefore) / 2)
	}
	return now
}

// ProbePod is the Pod the webhook check asks the apiserver to create in dry-run mode.
func ProbePod(namespace string) *corev1.Pod {
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{
			GenerateName: "weft-check-",
			Namespace:    namespace,
			Annotations:  map[string]string{InjectAnnotation: "enabled"},
			Labels:       map[string]string{"app.kubernetes.io/name": "weft-check"},
		},
		Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "probe", Image: "weft-check-probe:dry-run"}}},
	}
}

func (t *Target) checkWebhookInjects(ctx context.Context) Result {
	ns := t.ProbeNamespace
	got, err := t.Client.CoreV1().Pods(ns).Create(ctx, ProbePod(ns), metav1.CreateOptions{DryRun: []string{metav1.DryRunAll}})
	if apierrors.IsNotFound(err) {
		return Failed(fmt.Sprintf("the dry-run Pod could not be created: %v", err), "name an existing namespace with --probe-namespace")
	}
	if err != nil {
		return Failed(fmt.Sprintf("the apiserver refused the dry-run Pod in namespace %s: %v", ns, err),
			"an admission policy may refuse it; name another namespace with --probe-namespace")
	}
	if hasProxy(got) {
		return Passed()
	}
	return Failed(fmt.Sprintf("a dry-run Pod with %s=enabled in namespace %s came back without a %s container: the apiserver did not reach the injector, or the injector did not inject (failurePolicy Ignore admits the Pod as it is)", InjectAnnotation, ns, ProxyContainer),
		fmt.Sprintf("look at the checks above, the webhook's Service and CA; kubectl -n %s logs deployment/%s; kubectl get events -n %s", t.Namespace, ControlPlaneName, ns))
}

// hasProxy: the Pod has a weft-proxy container (native sidecar or classic).
func hasProxy(p *corev1.Pod) bool {
	for _, c := range append(append([]corev1.Container{}, p.Spec.InitContainers...), p.Spec.Containers...) {
		if c.Name == ProxyContainer {
			return true
		}
	}
	return false
}

// material reads the identity Secret.
func (t *Target) material(ctx context.Context) (identity.Material, error) {
	s, err := t.Client.CoreV1().Secrets(t.Namespace).Get(ctx, IdentitySecret, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return identity.Material{}, fmt.Errorf("the Secret %s/%s does not exist: weft-control has no CA", t.Namespace, IdentitySecret)
	}
	if err != nil {
		return identity.Material{}, fmt.Errorf("reading Secret %s/%s: %w", t.Namespace, IdentitySecret, err)
	}
	m := identity.Material{Bundle: s.Data[identity.BundleFile], IssuerCert: s.Data[identity.IssuerCertFile], IssuerKey: s.Data[identity.IssuerKeyFile]}
	var missing []string
	for name, v := range map[string][]byte{identity.BundleFile: m.Bundle, identity.IssuerCertFile: m.IssuerCert, identity.IssuerKeyFile: m.IssuerKey} {
		if len(v) == 0 {
			missing = append(missing, name)
		}
	}
	if len(missing) > 0 {
		sort.Strings(missing)
		return m, fmt.Errorf("the Secret %s/%s lacks %s", t.Namespace, IdentitySecret, strings.Join(missing, ", "))
	}
	return m, nil
}

func (t *Target) checkIdentitySecret(ctx context.Context) Result {
	if _, err := t.material(ctx); err != nil {
		return Failed(err.Error(), "re-apply the control plane with its CA: weft install --identity-dir DIR | kubectl apply -f -")
	}
	return Passed()
}

// identityCheck runs a pure CA check on the Secret's material.
func (t *Target) identityCheck(f func(m identity.Material, trustDomain string, now time.Time) Result) func(context.Context) Result {
	return func(ctx context.Context) Result {
		m, err := t.material(ctx)
		if err != nil {
			return Failed(err.Error(), "")
		}
		td := ""
		if t.cfg != nil {
			td = t.cfg.TrustDomain
		}
		return f(m, td, t.now())
	}
}

func (t *Target) checkXDSReady(ctx context.Context) Result {
	if _, err := t.Admin.Service(ctx, t.Namespace, "/ready"); err != nil {
		return Failed(fmt.Sprintf("GET /ready on Service %s/%s port %s through the apiserver: %v", t.Namespace, ControlPlaneName, AdminPort, trimBody(err.Error())),
			fmt.Sprintf("kubectl -n %s logs deployment/%s (has discovery synced? can it reach the apiserver?)", t.Namespace, ControlPlaneName))
	}
	return Passed()
}

func (t *Target) checkXDSReplicas(ctx context.Context) Result {
	pods, err := t.controlPods(ctx)
	if err != nil {
		return Failed(fmt.Sprintf("listing the weft-control Pods: %v", err), "")
	}
	if len(pods) == 0 {
		return Failed(fmt.Sprintf("no weft-control Pod in namespace %s", t.Namespace), fmt.Sprintf("kubectl -n %s describe deployment/%s", t.Namespace, ControlPlaneName))
	}
	var bad []string
	for _, p := range pods {
		if _, err := t.Admin.Pod(ctx, t.Namespace, p.Name, "/ready"); err != nil {
			bad = append(bad, fmt.Sprintf("%s: %s", p.Name, trimBody(err.Error())))
		}
	}
	if len(bad) > 0 {
		return Failed(strings.Join(bad, "\n"), fmt.Sprintf("kubectl -n %s logs POD (has discovery synced? can it reach the apiserver?)", t.Namespace))
	}
	return Passed()
}

func trimBody(s string) string {
	s = strings.TrimSpace(s)
	if len(s) > 300 {
		s = s[:300] + "…"
	}
	return s
}
