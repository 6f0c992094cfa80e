package main

import (
	"net/netip"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/weftmesh/weft/dataplane/iptables"
)

func pod(annotations map[string]string, mutate ...func(*corev1.Pod)) *corev1.Pod {
	p := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: "shop", Name: "web-1", Annotations: annotations},
		Spec: corev1.PodSpec{
			InitContainers: []corev1.Container{{Name: "weft-validate"}},
			Containers:     []corev1.Container{{Name: "app"}, {Name: ProxyContainer}},
		},
	}
	for _, m := range mutate {
		m(p)
	}
	return p
}

func TestPodOptions(t *testing.T) {
	withSkips := iptables.DefaultOptions()
	withSkips.SkipInboundPorts = []iptables.PortRange{{From: 8000, To: 8100}, {From: 22, To: 22}} // as written; Rules sorts
	withSkips.SkipOutboundPorts = []iptables.PortRange{{From: 5432, To: 5432}}
	withSkips.SkipSubnets = []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8"), netip.MustParsePrefix("169.254.169.254/32")}

	for _, tc := range []struct {
		name     string
		pod      *corev1.Pod
		want     iptables.Options
		wantSkip string // substring of the reason it is not meshed
		wantErr  string
	}{
		{name: "classic sidecar", pod: pod(nil), want: iptables.DefaultOptions()},
		{name: "native sidecar (an init container)", pod: pod(nil, func(p *corev1.Pod) {
			p.Spec.Containers = []corev1.Container{{Name: "app"}}
			p.Spec.InitContainers = append(p.Spec.InitContainers, corev1.Container{Name: ProxyContainer})
		}), want: iptables.DefaultOptions()},
		{name: "skip annotations", pod: pod(map[string]string{
			AnnotationSkipInboundPorts:    "8000-8100, 22",
			AnnotationSkipOutboundPorts:   "5432",
			AnnotationSkipSubnets:         "10.0.0.0/8,169.254.169.254",
			"config.weft.io/opaque-ports": "3306",
		}), want: withSkips},
		{name: "not injected", pod: pod(nil, func(p *corev1.Pod) { p.Spec.Containers = []corev1.Container{{Name: "app"}} }), wantSkip: "no weft-proxy container"},
		{name: "hostNetwork", pod: pod(nil, func(p *corev1.Pod) { p.Spec.HostNetwork = true }), wantSkip: "hostNetwork"},
		{name: "inject annotation alone does not mesh", pod: pod(map[string]string{"weft.io/inject": "enabled"}, func(p *corev1.Pod) {
			p.Spec.Containers = []corev1.Container{{Name: "app"}}
		}), wantSkip: "not injected"},
		{name: "bad port list", pod: pod(map[string]string{AnnotationSkipOutboundPorts: "5432,http"}), wantErr: `pod shop/web-1: annotation config.weft.io/skip-outbound-ports: port "http"`},
		{name: "backwards range", pod: pod(map[string]string{AnnotationSkipInboundPorts: "9000-8000"}), wantErr: "config.weft.io/skip-inbound-ports: port range \"9000-8000\" is backwards"},
		{name: "bad subnet", pod: pod(map[string]string{AnnotationSkipSubnets: "10.0.0.0/33"}), wantErr: "config.weft.io/skip-subnets"},
		{name: "IPv6 subnet", pod: pod(map[string]string{AnnotationSkipSubnets: "fd00::/8"}), wantErr: "is IPv6"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, skip, err := podOptions(tc.pod)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) || !strings.Contains(err.Error(), "recreate the Pod") {
					t.Fatalf("podOptions = %v; want an error containing %q that says what to do", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if tc.wantSkip != "" {
				if !strings.Contains(skip, tc.wantSkip) {
					t.Errorf("skip reason = %q, want it to contain %q", skip, tc.wantSkip)
				}
				return
			}
			if skip != "" {
				t.Fatalf("not meshed: %s", skip)
			}
			if d := cmp.Diff(tc.want, got, cmp.Comparer(func(a, b netip.Prefix) bool { return a == b })); d != "" {
				t.Errorf("options (-want +got):\n%s", d)
			}
			// The same options as `weft-proxy init` with the same flags would use give the same rules.
			if _, err := iptables.Rules(got); err != nil {
				t.Errorf("Rules: %v", err)
			}
		})
	}
}

func TestParseArgsAndSkipBeforeFetch(t *testing.T) {
	conf := Conf{ExcludeNamespaces: []string{"kube-system"}}
	for _, tc := range []struct {
		args     string
		want     PodRef
		wantSkip string
	}{
		{"IgnoreUnknown=1;K8S_POD_NAMESPACE=shop;K8S_POD_NAME=web-1;K8S_POD_INFRA_CONTAINER_ID=abc;K8S_POD_UID=u-1", PodRef{"shop", "web-1"}, ""},
		{"K8S_POD_NAMESPACE=shop;K8S_POD_NAME=web-1;SOMETHING_ELSE=x", PodRef{"shop", "web-1"}, ""},
		{"K8S_POD_NAMESPACE=kube-system;K8S_POD_NAME=coredns-1", PodRef{"kube-system", "coredns-1"}, "excluded"},
		{"", PodRef{}, "names no Kubernetes Pod"},
		{"K8S_POD_NAMESPACE=shop", PodRef{Namespace: "shop"}, "names no Kubernetes Pod"},
	} {
		got, err := parseArgs(tc.args)
		if err != nil {
			t.Errorf("parseArgs(%q): %v", tc.args, err)
			continue
		}
		if got != tc.want {
			t.Errorf("parseArgs(%q) = %+v, want %+v", tc.args, got, tc.want)
		}
		if skip := skipBeforeFetch(conf, got); tc.wantSkip == "" && skip != "" || !strings.Contains(skip, tc.wantSkip) {
			t.Errorf("skipBeforeFetch(%+v) = %q, want %q", got, skip, tc.wantSkip)
		}
	}
	if _, err := parseArgs("K8S_POD_NAME"); err == nil {
		t.Error("parseArgs accepted a key without a value")
	}
}

func TestParseConf(t *testing.T) {
	c, mode, err := parseConf([]byte(`{"cniVersion":"1.0.0","name":"k8s","type":"weft-cni","kubeconfig":"/etc/cni/net.d/weft-cni.kubeconfig","iptablesMode":"legacy","excludeNamespaces":["kube-system"],"prevResult":{"cniVersion":"1.0.0","interfaces":[{"name":"eth0"}]}}`))
	if err != nil {
		t.Fatal(err)
	}
	if mode != iptables.ModeLegacy || c.Kubeconfig != "/etc/cni/net.d/weft-cni.kubeconfig" || c.RawPrevResult == nil || c.CNIVersion != "1.0.0" {
		t.Errorf("parseConf = %+v, %s", c, mode)
	}
	if _, _, err := parseConf([]byte(`{"type":"weft-cni","iptablesMode":"ipvs"}`)); err == nil || !strings.Contains(err.Error(), `"iptablesMode"`) {
		t.Errorf("bad iptablesMode: %v, want an error naming the field", err)
	}
}
