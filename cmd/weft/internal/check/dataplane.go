package check

import (
	"context"
	"encoding/json"
	"fmt"
	"sort"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// connection is what the checks read of an entry of weft-control's /debug/connections
// (xds/server.Connection).
type connection struct {
	Node              string     `json:"node"`
	Identity          string     `json:"identity"`
	CertificateExpiry *time.Time `json:"certificate_expiry"`
}

// DataPlaneChecks say whether the meshed Pods' proxies work (weft check --proxy).
func DataPlaneChecks(t *Target) []Check {
	scope := "in every namespace"
	if t.ProxyNamespace != "" {
		scope = "in namespace " + t.ProxyNamespace
	}
	return []Check{
		{ID: "proxy-pods-ready", Section: SectionDataPlane, Description: "the meshed Pods " + scope + " are Running and Ready", Gate: true, Run: t.checkProxyPods},
		{ID: "proxy-version", Section: SectionDataPlane, Description: "the proxies run the control plane's version", Run: t.checkProxyVersion},
		{ID: "proxy-connected", Section: SectionDataPlane, Description: "every proxy is connected to a control plane", Run: t.checkProxyConnected},
		{ID: "proxy-identity", Section: SectionDataPlane, Description: "every proxy is connected over mTLS with its Pod's identity", Run: t.checkProxyIdentity},
	}
}

// meshedPods are the Pods in scope with a weft-proxy container, not being deleted, sorted.
func (t *Target) meshedPods(ctx context.Context) ([]corev1.Pod, error) {
	list, err := t.Client.CoreV1().Pods(t.ProxyNamespace).List(ctx, metav1.ListOptions{})
	if err != nil {
		return nil, err
	}
	var out []corev1.Pod
	for _, p := range list.Items {
		if p.DeletionTimestamp == nil && hasProxy(&p) {
			out = append(out, p)
		}
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].Namespace != out[j].Namespace {
			return out[i].Namespace < out[j].Namespace
		}
		return out[i].Name < out[j].Name
	})
	return out, nil
}

func (t *Target) checkProxyPods(ctx context.Context) Result {
	pods, err := t.meshedPods(ctx)
	if err != nil {
		return Failed(fmt.Sprintf("listing Pods: %v", err), "")
	}
	if len(pods) == 0 {
		where := "in any namespace"
		if t.ProxyNamespace != "" {
			where = "in namespace " + t.ProxyNamespace
		}
		return Warned("no Pod with a "+ProxyContainer+" container "+where,
			"mesh a namespace: kubectl annotate namespace NS weft.io/inject=enabled, then kubectl rollout restart deployment -n NS")
	}
	var bad []string
	for _, p := range pods {
		if p.Status.Phase == corev1.PodSucceeded {
			continue // a finished Job's Pod
		}
		if why := podNotReady(p); why != "" {
			bad = append(bad, p.Namespace+"/"+p.Name+": "+why)
		}
	}
	if len(bad) > 0 {
		return Failed(strings.Join(bad, "\n"), "kubectl describe pod -n NS POD; kubectl logs -n NS POD -c "+ProxyContainer)
	}
	return Passed()
}

func (t *Target) checkProxyVersion(ctx context.Context) Result {
	if t.cfg == nil {
		return Warned("the control plane's version is not known (see cp-config)", "")
	}
	pods, err := t.meshedPods(ctx)
	if err != nil {
		return Failed(fmt.Sprintf("listing Pods: %v", err), "")
	}
	var bad []string
	for _, p := range pods {
		if v := p.Annotations[ProxyVersionAnnotation]; v != t.cfg.Version {
			if v == "" {
				v = "unknown (no " + ProxyVersionAnnotation + " annotation)"
			}
			bad = append(bad, fmt.Sprintf("%s/%s runs proxy %s, the control plane %s", p.Namespace, p.Name, v, t.cfg.Version))
		}
	}
	if len(bad) > 0 {
		return Warned(strings.Join(bad, "\n"), "restart the workloads to get the current proxy: kubectl rollout restart deployment -n NS")
	}
	return Passed()
}

// connections reads /debug/connections of every weft-control Pod (a proxy is connected to one of
// them) and returns them by node id, with the Pod each came from.
func (t *Target) connections(ctx context.Context) (map[string]connection, error) {
	pods, err := t.controlPods(ctx)
	if err != nil {
		return nil, fmt.Errorf("listing the weft-control Pods: %w", err)
	}
	if len(pods) == 0 {
		return nil, fmt.Errorf("no weft-control Pod in namespace %s", t.Namespace)
	}
	out := map[string]connection{}
	var failed []string
	for _, p := range pods {
		if p.Status.Phase != corev1.PodRunning {
			continue
		}
		body, err := t.Admin.Pod(ctx, t.Namespace, p.Name, "/debug/connections")
		if err != nil {
			failed = append(failed, fmt.Sprintf("%s: %v", p.Name, trimBody(err.Error())))
			continue
		}
		var doc struct {
			Connections []connection `json:"connections"`
		}
		if err := json.Unmarshal(body, &doc); err != nil {
			failed = append(failed, fmt.Sprintf("%s: /debug/connections: %v", p.Name, err))
			continue
		}
		for _, c := range doc.Connections {
			out[c.Node] = c
		}
	}
	if len(failed) > 0 {
		return out, fmt.Errorf("could not read the connections of %s", strings.Join(failed, "; "))
	}
	return out, nil
}

func (t *Target) checkProxyConnected(ctx context.Context) Result {
	pods, err := t.meshedPods(ctx)
	if err != nil {
		return Failed(fmt.Sprintf("listing Pods: %v", err), "")
	}
	if len(pods) == 0 {
		return Passed()
	}
	conns, err := t.connections(ctx)
	if err != nil {
		return Failed(err.Error(), fmt.Sprintf("every weft-control replica must answer on :%s; kubectl -n %s logs deployment/%s", AdminPort, t.Namespace, ControlPlaneName))
	}
	var bad []string
	for _, p := range pods {
		if p.Status.Phase == corev1.PodSucceeded {
			continue
		}
		if _, ok := conns[p.Name+"."+p.Namespace]; !ok {
			bad = append(bad, fmt.Sprintf("%s/%s: its proxy is connected to no weft-control replica", p.Namespace, p.Name))
		}
	}
	if len(bad) > 0 {
		return Failed(strings.Join(bad, "\n"), "kubectl logs -n NS POD -c "+ProxyContainer+" (can it reach weft-control."+t.Namespace+".svc:15012? did it get a certificate?)")
	}
	return Passed()
}

func (t *Target) checkProxyIdentity(ctx context.Context) Result {
	pods, err := t.meshedPods(ctx)
	if err != nil {
		return Failed(fmt.Sprintf("listing Pods: %v", err), "")
	}
	if len(pods) == 0 {
		return Passed()
	}
	conns, err := t.connections(ctx)
	if err != nil {
		return Failed(err.Error(), "")
	}
	var wrong, plain []string
	for _, p := range pods {
		c, ok := conns[p.Name+"."+p.Namespace]
		if !ok {
			continue // proxy-connected reports it
		}
		sa := p.Spec.ServiceAccountName
		if sa == "" {
			sa = "default"
		}
		want := "/ns/" + p.Namespace + "/sa/" + sa
		switch {
		case c.Identity == "":
			plain = append(plain, fmt.Sprintf("%s/%s: connected without a workload certificate (plaintext xDS)", p.Namespace, p.Name))
		case !strings.HasSuffix(c.Identity, want):
			wrong = append(wrong, fmt.Sprintf("%s/%s: connected as %s, but the Pod runs as ServiceAccount %s", p.Namespace, p.Name, c.Identity, sa))
		}
	}
	if len(wrong) > 0 {
		return Failed(strings.Join(append(wrong, plain...), "\n"), "restart the Pod: kubectl delete pod -n NS POD")
	}
	if len(plain) > 0 {
		return Warned(strings.Join(plain, "\n"), "the proxy has no identity and its traffic no mTLS: kubectl logs -n NS POD -c "+ProxyContainer+" (Certify errors?)")
	}
	return Passed()
}
