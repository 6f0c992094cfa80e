package inject

import (
	"errors"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	corev1 "k8s.io/api/core/v1"

	"github.com/weftmesh/weft/dataplane/iptables"
)

// annotations reads "key=value" lines (the fuzzer's encoding of an annotation map). Invalid UTF-8
// becomes U+FFFD, as in any Pod the webhook gets: it arrives as JSON.
func annotations(s string) map[string]string {
	if s == "" {
		return nil
	}
	s = strings.ToValidUTF8(s, "\uFFFD")
	m := map[string]string{}
	for _, line := range strings.Split(s, "\n") {
		k, v, _ := strings.Cut(line, "=")
		m[k] = v
	}
	return m
}

// FuzzInject: arbitrary annotations on a Pod and its namespace, in each mode (CNI or weft-init, native
// or classic sidecar). Inject never panics; it fails only with an *AnnotationError of one line, and
// then, as when it does not inject, the Pod is unchanged; when it injects, the Pod has the shape
// others rely on, the webhook's JSON patch gives the same Pod, a second Inject leaves it alone, and
// the weft-init arguments are ones weft-proxy init accepts (it would otherwise fail in every Pod).
func FuzzInject(f *testing.F) {
	f.Add("", "weft.io/inject=enabled", uint8(0))
	f.Add("weft.io/inject=enabled", "", uint8(1))
	f.Add("config.weft.io/skip-inbound-ports=22, 8000-8100\nconfig.weft.io/skip-outbound-ports=5432\nconfig.weft.io/skip-subnets=10.0.0.0/8,169.254.169.254\nconfig.weft.io/opaque-ports=3306\nconfig.weft.io/proxy-log-level=debug\nconfig.weft.io/proxy-cpu-request=50m\nconfig.weft.io/proxy-memory-request=32Mi\nconfig.weft.io/proxy-memory-limit=128Mi", "weft.io/inject=enabled", uint8(2))
	f.Add("config.weft.io/proxy-await=disabled", "weft.io/inject=enabled\nconfig.weft.io/skip-outbound-ports=25\nconfig.weft.io/proxy-log-level=warn", uint8(3))
	f.Add("weft.io/inject=disabled", "weft.io/inject=enabled", uint8(0))
	f.Add("weft.io/inject=true", "", uint8(0))
	f.Add("", "weft.io/inject=yes", uint8(0))
	f.Add("config.weft.io/skip-subnets=fd00::/8", "weft.io/inject=enabled", uint8(0))
	f.Add("config.weft.io/proxy-memory-request=100Mi", "weft.io/inject=enabled", uint8(0))
	f.Add("config.weft.io/proxy-cpu-request=-1", "weft.io/inject=enabled", uint8(0))
	f.Fuzz(func(t *testing.T, podAnn, nsAnn string, mode uint8) {
		cfg := testConfig(t)
		cfg.CNI, cfg.NativeSidecars = mode&1 != 0, mode&2 == 0
		ns := annotations(nsAnn)
		orig := appPod(annotations(podAnn))
		if mode&4 != 0 {
			orig.Spec.HostNetwork = true
		}
		pod := orig.DeepCopy()
		res, err := Inject(pod, ns, cfg)
		if err != nil || !res.Injected {
			if diff := cmp.Diff(orig, pod); diff != "" {
				t.Fatalf("the Pod changed though not injected (%v, %q):\n%s", err, res.Reason, diff)
			}
			var ae *AnnotationError
			switch {
			case err != nil && !errors.As(err, &ae):
				t.Fatalf("error %v (%T), want an *AnnotationError", err, err)
			case err != nil && strings.Contains(err.Error(), "\n"):
				t.Fatalf("error is not one line: %q", err)
			case err == nil && res.Reason == "":
				t.Fatal("not injected, and no reason")
			}
			return
		}
		checkShape(t, pod, cfg)
		checkPatch(t, orig, ns, cfg, pod)
		again := pod.DeepCopy()
		if res, err := Inject(again, ns, cfg); err != nil || res.Injected || !cmp.Equal(pod, again) {
			t.Fatalf("second Inject: %+v, %v, changed %v", res, err, !cmp.Equal(pod, again))
		}
		if !cfg.CNI {
			if err := initArgsAccepted(pod.Spec.InitContainers[0]); err != nil {
				t.Fatalf("weft-init would fail: %v (args %q)", err, pod.Spec.InitContainers[0].Args)
			}
		}
	})
}

// initArgsAccepted reads weft-init's --skip-* arguments as weft-proxy init does and builds its rules.
func initArgsAccepted(c corev1.Container) error {
	o := iptables.DefaultOptions()
	var err error
	for _, a := range c.Args {
		switch k, v, _ := strings.Cut(a, "="); k {
		case "--skip-inbound-ports":
			o.SkipInboundPorts, err = iptables.ParsePorts(v)
		case "--skip-outbound-ports":
			o.SkipOutboundPorts, err = iptables.ParsePorts(v)
		case "--skip-subnets":
			o.SkipSubnets, err = iptables.ParseSubnets(v)
		}
		if err != nil {
			return err
		}
	}
	_, err = iptables.Rules(o)
	return err
}
