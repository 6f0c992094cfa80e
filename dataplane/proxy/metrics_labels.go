package proxy

import (
	"strings"

	"github.com/weftmesh/weft/dataplane/config"
)

// Workload is the pod a proxy runs in; every series of the proxy's golden metrics carries it as the
// labels namespace, pod and deployment, as Linkerd's Prometheus relabelling writes them, so that
// `weft stat deploy` works from the proxies' own series whether Prometheus discovered them in a
// cluster or scrapes static targets (weft demo).
type Workload struct {
	Namespace, Pod string
	// Deployment is the pod's Deployment; DeploymentOf(Pod) when empty.
	Deployment string
}

func (w Workload) labels() []string {
	dep := w.Deployment
	if dep == "" {
		dep = DeploymentOf(w.Pod)
	}
	return []string{"namespace", w.Namespace, "pod", w.Pod, "deployment", dep}
}

// DeploymentOf derives a pod's Deployment from its name ("" when the name is not a Deployment's pod):
// a Deployment's pod is named <deployment>-<pod-template-hash>-<5 random>, the hash 5 to 10 and the
// suffix 5 characters of Kubernetes' safe alphabet (k8s.io/apimachinery/pkg/util/rand: no vowels, no
// 0, 1, 3). Matched by hand, not with a package-level regexp: that one was compiled at start-up into
// ~10 KB of heap every sidecar kept.
func DeploymentOf(pod string) string {
	i := strings.LastIndexByte(pod, '-')
	if i < 0 || !safeAlphabet(pod[i+1:], 5, 5) {
		return ""
	}
	j := strings.LastIndexByte(pod[:i], '-')
	if j < 1 || !safeAlphabet(pod[j+1:i], 5, 10) {
		return ""
	}
	return pod[:j]
}

// safeAlphabet reports whether s has min to max characters, all of Kubernetes' safe alphabet.
func safeAlphabet(s string, minLen, maxLen int) bool {
	if len(s) < minLen || len(s) > maxLen {
		return false
	}
	for i := range len(s) {
		if !strings.ContainsRune("bcdfghjklmnpqrstvwxz2456789", rune(s[i])) {
			return false
		}
	}
	return true
}

// clusterService reads the destination Service of a cluster named
// outbound|<port>||<svc>.<ns>.svc.<domain> ("", "" for other clusters).
func clusterService(cluster string) (namespace, service string) {
	rest, ok := strings.CutPrefix(cluster, "outbound|")
	if !ok {
		return "", ""
	}
	_, host, ok := strings.Cut(rest, "||")
	if !ok {
		return "", ""
	}
	parts := strings.SplitN(host, ".", 4)
	if len(parts) < 3 || parts[2] != "svc" {
		return "", ""
	}
	return parts[1], parts[0]
}

// grpcCode reads a grpc-status value: 0 to 16, -1 when absent; an unknown code counts as UNKNOWN (2).
func grpcCode(s string) int8 {
	switch {
	case s == "":
		return -1
	case len(s) == 1 && s[0] >= '0' && s[0] <= '9':
		return int8(s[0] - '0') // #nosec G115 -- a digit, 0 to 9
	case len(s) == 2 && s[0] == '1' && s[1] >= '0' && s[1] <= '6':
		return int8(10 + s[1] - '0') // #nosec G115 -- 10 to 16
	}
	return 2
}

// retain drops the series of clusters that snap no longer has (a removed Service), so that a
// long-lived proxy's /metrics does not grow with every Service that ever existed. Series without a
// cluster (unrouted requests) stay. A request in flight on a dropped series counts into a counter that
// is no longer exposed.
func (m *Metrics) retain(snap *config.Snapshot) {
	if snap == nil || !snap.Complete {
		return // a partial config may just not have sent the cluster yet
	}
	m.retainMu.Lock()
	defer m.retainMu.Unlock()
	gone := func(cluster string) bool {
		if cluster == "" {
			return false
		}
		_, ok := snap.Clusters[cluster]
		return !ok
	}
	m.series.Range(func(k, v any) bool {
		if !gone(k.(seriesKey).cluster) {
			return true
		}
		m.series.Delete(k)
		hs := v.(*httpSeries)
		hs.dropped.Store(true)
		m.set.UnregisterMetric(hs.name)
		hs.responses.Range(func(_, r any) bool {
			for _, n := range r.(*respSeries).names {
				m.set.UnregisterMetric(n)
			}
			return true
		})
		return true
	})
	m.tcp.Range(func(k, v any) bool {
		if !gone(k.(tcpLabelValues)[2]) {
			return true
		}
		m.tcp.Delete(k)
		for _, n := range v.(*tcpSeries).names {
			m.set.UnregisterMetric(n)
		}
		return true
	})
}

// leanGRPC is the grpc_status of a lean (HTTP/1.1) response: none, or UNKNOWN when it carried a failing
// grpc-status header (the lean path keeps only that it failed).
func leanGRPC(grpcFail bool) int8 {
	if grpcFail {
		return 2
	}
	return -1
}
