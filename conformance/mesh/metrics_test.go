package mesh

import (
	"regexp"
	"strconv"
	"strings"
	"testing"

	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/weftmesh/weft/conformance/netns"
)

func intOrPort(p int) intstr.IntOrString { return intstr.FromInt32(int32(p)) }

// promText is a Prometheus text exposition, as a sidecar's /metrics serves it.
type promText string

// metrics reads the sidecar's /metrics from inside its pod (loopback: not intercepted).
func metrics(t *testing.T, p *netns.Pod) promText {
	t.Helper()
	body, err := get(p, "http://127.0.0.1:15000/metrics")
	if err != nil {
		t.Fatalf("reading %s's sidecar metrics: %v", p.Name, err)
	}
	return promText(body)
}

var labelRE = regexp.MustCompile(`([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"`)

// sum adds the values of the series of metric name whose labels include every one of want.
func (m promText) sum(name string, want map[string]string) float64 {
	var total float64
	for _, line := range strings.Split(string(m), "\n") {
		rest, ok := strings.CutPrefix(line, name+"{")
		if !ok {
			continue
		}
		end := strings.LastIndex(rest, "}")
		if end < 0 {
			continue
		}
		labels := map[string]string{}
		for _, kv := range labelRE.FindAllStringSubmatch(rest[:end], -1) {
			labels[kv[1]] = kv[2]
		}
		match := true
		for k, v := range want {
			if labels[k] != v {
				match = false
				break
			}
		}
		if !match {
			continue
		}
		if v, err := strconv.ParseFloat(strings.TrimSpace(rest[end+1:]), 64); err == nil {
			total += v
		}
	}
	return total
}

// lines returns the series of metric name, for messages.
func (m promText) lines(name string) string {
	var out []string
	for _, line := range strings.Split(string(m), "\n") {
		if strings.HasPrefix(line, name+"{") {
			out = append(out, line)
		}
	}
	return strings.Join(out, "\n")
}
