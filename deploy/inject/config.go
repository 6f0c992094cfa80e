// Package inject is Weft's proxy injector: the pure mutation that turns a Pod into a meshed Pod. The
// admission webhook (Webhook, served by weft-control on :15017) and `weft inject --manual` both call
// Inject, so that a Pod injected either way is the same Pod.
package inject

import (
	"errors"
	"fmt"
	"net"
	"strings"

	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/yaml"
)

// Config is the proxy defaults of an install: the config.yaml key of the weft-config ConfigMap
// (deploy/charts/weft/templates/config.yaml), which weft-control reads with --injector-config.
type Config struct {
	// ProxyImage is the weft-proxy image (its entrypoint is weft-proxy, also on its PATH).
	ProxyImage string `json:"proxyImage"`
	// ControlPlaneAddr is weft-control's mTLS port as the proxies reach it: weft-control.<ns>.svc:15012.
	ControlPlaneAddr string `json:"controlPlaneAddr"`
	// ControlPlaneNamespace is the value of the weft.io/control-plane-ns label; by default the <ns> of
	// ControlPlaneAddr.
	ControlPlaneNamespace string `json:"controlPlaneNamespace,omitempty"`
	// TrustDomain of the workload identities.
	TrustDomain string `json:"trustDomain"`
	// TrustAnchorsPEM are the mesh's trust anchors, given to the proxy in TRUST_ANCHORS: they verify
	// the CA's certificate before the proxy has one of its own. weft-control's injector puts its CA's
	// current bundle here.
	TrustAnchorsPEM string `json:"trustAnchorsPEM,omitempty"`
	// LogLevel of the proxies: debug, info, warn or error.
	LogLevel string `json:"logLevel"`
	// CNI: the weft-cni plugin redirects traffic, so Pods get weft-validate instead of weft-init.
	CNI bool `json:"cni"`
	// NativeSidecars runs weft-proxy as an init container with restartPolicy Always (Kubernetes 1.29+).
	NativeSidecars bool `json:"nativeSidecars"`
	// ProxyUID is the uid the proxy runs as; interception never captures it (2102).
	ProxyUID int64 `json:"proxyUID"`
	// Version is the proxy's version, recorded on each injected Pod as weft.io/proxy-version.
	Version string `json:"version"`
	// Resources of the proxy (and of the short-lived init containers).
	Resources corev1.ResourceRequirements `json:"resources"`
	// Tracing, when its collector is set, has the proxies export their spans (the chart's tracing.*).
	Tracing *Tracing `json:"tracing,omitempty"`
}

// Tracing is the proxies' OTLP/HTTP collector (host:port or http(s):// URL; env OTLP_ADDR of the
// proxy) and the fraction of requests without a trace context that start a trace (TRACE_SAMPLING).
type Tracing struct {
	Collector string  `json:"collector"`
	Sampling  float64 `json:"sampling,omitempty"`
}

// ParseConfig reads a config.yaml strictly: an unknown key or a wrong type is an error naming it.
// Missing optional values get their defaults (logLevel info, proxyUID 2102).
func ParseConfig(data []byte) (Config, error) {
	var c Config
	if err := yaml.UnmarshalStrict(data, &c); err != nil {
		msg := err.Error()
		msg = strings.TrimPrefix(msg, "error unmarshaling JSON: ")
		msg = strings.TrimPrefix(msg, "while decoding JSON: ")
		msg = strings.TrimPrefix(msg, "json: ")
		return Config{}, errors.New(msg)
	}
	if c.LogLevel == "" {
		c.LogLevel = "info"
	}
	if c.ProxyUID == 0 {
		c.ProxyUID = DefaultProxyUID
	}
	if err := c.Validate(); err != nil {
		return Config{}, err
	}
	return c, nil
}

// Validate checks every value; the error names the key.
func (c Config) Validate() error {
	if c.ProxyImage == "" {
		return errors.New("proxyImage: missing (the weft-proxy image, such as ghcr.io/weftmesh/weft-proxy:v0.1.0)")
	}
	if _, port, err := net.SplitHostPort(c.ControlPlaneAddr); err != nil || port == "" {
		return fmt.Errorf("controlPlaneAddr %q: want host:port, such as weft-control.weft.svc:15012", c.ControlPlaneAddr)
	}
	if c.controlPlaneNamespace() == "" {
		return fmt.Errorf("controlPlaneNamespace: missing, and controlPlaneAddr %q does not name a Service as <name>.<namespace>.svc:<port>", c.ControlPlaneAddr)
	}
	if c.TrustDomain == "" || strings.ContainsAny(c.TrustDomain, "/:") {
		return fmt.Errorf("trustDomain %q: want a trust domain such as cluster.local", c.TrustDomain)
	}
	if !validLogLevel(c.LogLevel) {
		return fmt.Errorf("logLevel %q: want debug, info, warn or error", c.LogLevel)
	}
	if c.ProxyUID < 1 || c.ProxyUID > 1<<31-1 {
		return fmt.Errorf("proxyUID %d: want a uid from 1 to 2147483647 (2102 by default)", c.ProxyUID)
	}
	if c.Version == "" {
		return errors.New("version: missing (the proxy version recorded as weft.io/proxy-version)")
	}
	if t := c.Tracing; t != nil {
		if t.Collector == "" && t.Sampling != 0 {
			return errors.New("tracing.sampling: set tracing.collector too (the OTLP/HTTP collector the spans go to)")
		}
		if t.Sampling < 0 || t.Sampling > 1 {
			return fmt.Errorf("tracing.sampling %v: want a fraction from 0 to 1", t.Sampling)
		}
	}
	for name, req := range c.Resources.Requests {
		if lim, ok := c.Resources.Limits[name]; ok && req.Cmp(lim) > 0 {
			return fmt.Errorf("resources: the %s request %s is above its limit %s", name, req.String(), lim.String())
		}
	}
	return nil
}

// controlPlaneNamespace is ControlPlaneNamespace, else the namespace in ControlPlaneAddr's host.
func (c Config) controlPlaneNamespace() string {
	if c.ControlPlaneNamespace != "" {
		return c.ControlPlaneNamespace
	}
	host, _, err := net.SplitHostPort(c.ControlPlaneAddr)
	if err != nil || net.ParseIP(host) != nil {
		return ""
	}
	labels := strings.Split(host, ".")
	if len(labels) < 3 || labels[2] != "svc" {
		return ""
	}
	return labels[1]
}

func validLogLevel(s string) bool {
	switch s {
	case "debug", "info", "warn", "error":
		return true
	}
	return false
}
