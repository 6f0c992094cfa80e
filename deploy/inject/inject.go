package inject

import (
	"fmt"
	"slices"
	"strconv"
	"strings"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/utils/ptr"

	"github.com/weftmesh/weft/dataplane/iptables"
)

// Names an injected Pod carries: the contract with weft-control's discovery (an endpoint runs a
// proxy when its Pod has the weft-proxy container), weft check and weft uninject.
const (
	ProxyContainer    = "weft-proxy"    // the sidecar (a native sidecar init container, or the first container)
	InitContainer     = "weft-init"     // weft-proxy init: programs iptables (not in CNI mode)
	ValidateContainer = "weft-validate" // weft-proxy validate: checks the CNI plugin's redirection (CNI mode)
	TokenVolume       = "weft-token"    // the projected ServiceAccount token for the CA
	InitRunVolume     = "weft-init-run" // weft-init's writable /run (iptables-legacy's lock file) under a read-only root
	TokenDir          = "/var/run/secrets/weft"
	TokenFile         = "token" // in TokenDir: weft-proxy run's default --token-file
	TokenAudience     = "identity.weft.io"
	TokenExpiration   = 3600 // seconds; kubelet renews the token at 80% of it

	AnnotationInject       = "weft.io/inject"        // enabled | disabled, on a namespace or a Pod (the Pod's wins)
	AnnotationProxyVersion = "weft.io/proxy-version" // set on injected Pods
	LabelControlPlaneNS    = "weft.io/control-plane-ns"

	AnnotationSkipInboundPorts   = "config.weft.io/skip-inbound-ports"
	AnnotationSkipOutboundPorts  = "config.weft.io/skip-outbound-ports"
	AnnotationSkipSubnets        = "config.weft.io/skip-subnets"
	AnnotationOpaquePorts        = "config.weft.io/opaque-ports"
	AnnotationProxyLogLevel      = "config.weft.io/proxy-log-level"
	AnnotationProxyAwait         = "config.weft.io/proxy-await"
	AnnotationProxyCPURequest    = "config.weft.io/proxy-cpu-request"
	AnnotationProxyMemoryRequest = "config.weft.io/proxy-memory-request"
	AnnotationProxyMemoryLimit   = "config.weft.io/proxy-memory-limit"

	Enabled  = "enabled"
	Disabled = "disabled"

	DefaultProxyUID = 2102
	// ValidateUID is the uid weft-validate runs as: any uid but the proxy's, whose traffic is never
	// redirected.
	ValidateUID = 2103

	AdminPort = 15000
)

// AnnotationError is a config.weft.io (or weft.io/inject) annotation whose value is wrong. The webhook
// then admits the Pod unchanged and says why; weft inject prints it.
type AnnotationError struct {
	Key, Value, Problem string
}

func (e *AnnotationError) Error() string {
	return fmt.Sprintf("annotation %s: %q: %s", e.Key, e.Value, e.Problem)
}

// Result says what Inject did.
type Result struct {
	// Injected is true when Pod is the meshed Pod.
	Injected bool
	// Reason, when not injected: why not (already injected, not enabled, disabled, host network).
	Reason string
}

// Inject decides whether pod gets the proxy and, if so, adds it: in place, so pass a copy if the
// original matters. nsAnnotations are the annotations of the Pod's namespace (weft.io/inject there
// applies unless the Pod says otherwise; config.weft.io/* there are defaults for its Pods). It fails
// only for a bad annotation value (an *AnnotationError), and then leaves pod unchanged.
func Inject(pod *corev1.Pod, nsAnnotations map[string]string, cfg Config) (Result, error) {
	if HasProxy(&pod.Spec) {
		return Result{Reason: "already injected: the Pod has a " + ProxyContainer + " container"}, nil
	}
	on, why, err := enabled(pod.Annotations, nsAnnotations)
	if err != nil {
		return Result{}, err
	}
	if !on {
		return Result{Reason: why}, nil
	}
	if pod.Spec.HostNetwork {
		return Result{Reason: "the Pod uses the host's network (hostNetwork: true): a proxy there would capture the node's traffic"}, nil
	}
	opts, err := readOptions(merged(nsAnnotations, pod.Annotations), cfg)
	if err != nil {
		return Result{}, err
	}
	mutate(pod, opts, cfg)
	return Result{Injected: true}, nil
}

// HasProxy reports whether a Pod spec already runs weft-proxy.
func HasProxy(spec *corev1.PodSpec) bool {
	return slices.ContainsFunc(spec.Containers, isProxy) || slices.ContainsFunc(spec.InitContainers, isProxy)
}

func isProxy(c corev1.Container) bool { return c.Name == ProxyContainer }

// enabled applies weft.io/inject: the Pod's value, else its namespace's, else off.
func enabled(podAnn, nsAnn map[string]string) (bool, string, error) {
	if v, ok := podAnn[AnnotationInject]; ok {
		switch v {
		case Enabled:
			return true, "", nil
		case Disabled:
			return false, "disabled by the Pod's " + AnnotationInject + " annotation", nil
		}
		return false, "", &AnnotationError{AnnotationInject, v, "want enabled or disabled"}
	}
	if v, ok := nsAnn[AnnotationInject]; ok {
		switch v {
		case Enabled:
			return true, "", nil
		case Disabled:
			return false, "disabled by the namespace's " + AnnotationInject + " annotation", nil
		}
		return false, "", &AnnotationError{AnnotationInject + " (on the namespace)", v, "want enabled or disabled"}
	}
	return false, "not enabled: neither the Pod nor its namespace has " + AnnotationInject + ": enabled", nil
}

// merged is the namespace's config.weft.io annotations overridden by the Pod's.
func merged(nsAnn, podAnn map[string]string) map[string]string {
	out := map[string]string{}
	for k, v := range nsAnn {
		if strings.HasPrefix(k, "config.weft.io/") {
			out[k] = v
		}
	}
	for k, v := range podAnn {
		out[k] = v
	}
	return out
}

// options are the per-Pod settings read from the annotations.
type options struct {
	skipInbound, skipOutbound, skipSubnets string
	logLevel                               string
	await                                  bool
	resources                              corev1.ResourceRequirements
}

// readOptions validates every config.weft.io annotation Weft reads, whether or not it changes the Pod
// spec (opaque-ports is read by weft-control, skip-* by weft-cni), so that a mistake is reported when
// the Pod is created rather than found later.
func readOptions(ann map[string]string, cfg Config) (options, error) {
	o := options{logLevel: cfg.LogLevel, await: true, resources: *cfg.Resources.DeepCopy()}
	for _, key := range []string{AnnotationSkipInboundPorts, AnnotationSkipOutboundPorts, AnnotationOpaquePorts} {
		if v, ok := ann[key]; ok {
			if _, err := iptables.ParsePorts(v); err != nil {
				return o, &AnnotationError{key, v, err.Error() + `; want ports and ranges such as "25,8000-8100"`}
			}
		}
	}
	o.skipInbound, o.skipOutbound = strings.TrimSpace(ann[AnnotationSkipInboundPorts]), strings.TrimSpace(ann[AnnotationSkipOutboundPorts])
	if v, ok := ann[AnnotationSkipSubnets]; ok {
		// As weft-proxy init reads it: parsed, then made into rules (an IPv6 subnet parses, but weft-init
		// programs IPv4 only and would fail in every such Pod).
		nets, err := iptables.ParseSubnets(v)
		if err == nil {
			rules := iptables.DefaultOptions()
			rules.SkipSubnets = nets
			_, err = iptables.Rules(rules)
		}
		if err != nil {
			return o, &AnnotationError{AnnotationSkipSubnets, v, err.Error()}
		}
		o.skipSubnets = strings.TrimSpace(v)
	}
	if v, ok := ann[AnnotationProxyLogLevel]; ok {
		if !validLogLevel(v) {
			return o, &AnnotationError{AnnotationProxyLogLevel, v, "want debug, info, warn or error"}
		}
		o.logLevel = v
	}
	if v, ok := ann[AnnotationProxyAwait]; ok {
		switch v {
		case Enabled:
		case Disabled:
			o.await = false
		default:
			return o, &AnnotationError{AnnotationProxyAwait, v, "want enabled or disabled"}
		}
	}
	for _, q := range []struct {
		key  string
		list *corev1.ResourceList
		name corev1.ResourceName
	}{
		{AnnotationProxyCPURequest, &o.resources.Requests, corev1.ResourceCPU},
		{AnnotationProxyMemoryRequest, &o.resources.Requests, corev1.ResourceMemory},
		{AnnotationProxyMemoryLimit, &o.resources.Limits, corev1.ResourceMemory},
	} {
		v, ok := ann[q.key]
		if !ok {
			continue
		}
		qty, err := resource.ParseQuantity(v)
		if err != nil || qty.Sign() <= 0 {
			return o, &AnnotationError{q.key, v, "want a positive Kubernetes quantity such as 10m, 20Mi or 1Gi"}
		}
		if *q.list == nil {
			*q.list = corev1.ResourceList{}
		}
		(*q.list)[q.name] = qty
	}
	for name, req := range o.resources.Requests {
		if lim, ok := o.resources.Limits[name]; ok && req.Cmp(lim) > 0 {
			key := AnnotationProxyMemoryRequest
			if name == corev1.ResourceCPU {
				key = AnnotationProxyCPURequest
			}
			return o, &AnnotationError{key, req.String(), fmt.Sprintf("the proxy's %s request would be above its limit %s (raise %s too)", name, lim.String(), AnnotationProxyMemoryLimit)}
		}
	}
	return o, nil
}

// mutate adds the proxy to pod. Order of the init containers: weft-init (or weft-validate) first, so
// that redirection is in place before anything else runs; then the native sidecar, so that the app's
// own init containers already go through the proxy.
func mutate(pod *corev1.Pod, o options, cfg Config) {
	if pod.Labels == nil {
		pod.Labels = map[string]string{}
	}
	pod.Labels[LabelControlPlaneNS] = cfg.controlPlaneNamespace()
	if pod.Annotations == nil {
		pod.Annotations = map[string]string{}
	}
	pod.Annotations[AnnotationProxyVersion] = cfg.Version

	var first []corev1.Container
	if cfg.CNI {
		first = append(first, validateContainer(o, cfg))
	} else {
		first = append(first, initContainer(o, cfg))
		pod.Spec.Volumes = append(pod.Spec.Volumes, corev1.Volume{
			Name:         InitRunVolume,
			VolumeSource: corev1.VolumeSource{EmptyDir: &corev1.EmptyDirVolumeSource{Medium: corev1.StorageMediumMemory, SizeLimit: ptr.To(resource.MustParse("1Mi"))}},
		})
	}
	proxy := proxyContainer(o, cfg)
	if cfg.NativeSidecars {
		proxy.RestartPolicy = ptr.To(corev1.ContainerRestartPolicyAlways)
		proxy.StartupProbe = &corev1.Probe{
			ProbeHandler:     httpGet("/ready"),
			PeriodSeconds:    1,
			FailureThreshold: 300,
		}
		first = append(first, proxy)
	} else {
		if o.await {
			proxy.Lifecycle = &corev1.Lifecycle{PostStart: &corev1.LifecycleHandler{
				Exec: &corev1.ExecAction{Command: []string{"weft-proxy", "await"}},
			}}
		}
		pod.Spec.Containers = append([]corev1.Container{proxy}, pod.Spec.Containers...)
	}
	pod.Spec.InitContainers = append(first, pod.Spec.InitContainers...)
	pod.Spec.Volumes = append(pod.Spec.Volumes, corev1.Volume{
		Name: TokenVolume,
		VolumeSource: corev1.VolumeSource{Projected: &corev1.ProjectedVolumeSource{
			Sources: []corev1.VolumeProjection{{ServiceAccountToken: &corev1.ServiceAccountTokenProjection{
				Audience: TokenAudience, ExpirationSeconds: ptr.To[int64](TokenExpiration), Path: TokenFile,
			}}},
		}},
	})
}

func httpGet(path string) corev1.ProbeHandler {
	return corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{Path: path, Port: intstr.FromInt32(AdminPort)}}
}

func fieldEnv(name, path string) corev1.EnvVar {
	return corev1.EnvVar{Name: name, ValueFrom: &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{FieldPath: path}}}
}

// restricted is the securityContext of the Pod Security Standard "restricted" for uid.
func restricted(uid int64) *corev1.SecurityContext {
	return &corev1.SecurityContext{
		RunAsUser:                ptr.To(uid),
		RunAsGroup:               ptr.To(uid),
		RunAsNonRoot:             ptr.To(true),
		AllowPrivilegeEscalation: ptr.To(false),
		ReadOnlyRootFilesystem:   ptr.To(true),
		Capabilities:             &corev1.Capabilities{Drop: []corev1.Capability{"ALL"}},
		SeccompProfile:           &corev1.SeccompProfile{Type: corev1.SeccompProfileTypeRuntimeDefault},
	}
}

func proxyContainer(o options, cfg Config) corev1.Container {
	env := []corev1.EnvVar{
		fieldEnv("POD_NAME", "metadata.name"),
		fieldEnv("POD_NAMESPACE", "metadata.namespace"),
		fieldEnv("POD_IP", "status.podIP"),
		fieldEnv("SERVICE_ACCOUNT", "spec.serviceAccountName"),
		{Name: "XDS_ADDR", Value: cfg.ControlPlaneAddr},
		{Name: "IDENTITY_ADDR", Value: cfg.ControlPlaneAddr},
		{Name: "XDS_TLS", Value: "true"},
		{Name: "TRUST_DOMAIN", Value: cfg.TrustDomain},
		{Name: "WEFT_PROXY_LOG_LEVEL", Value: o.logLevel},
	}
	if cfg.TrustAnchorsPEM != "" {
		env = append(env, corev1.EnvVar{Name: "TRUST_ANCHORS", Value: cfg.TrustAnchorsPEM})
	}
	if t := cfg.Tracing; t != nil && t.Collector != "" {
		env = append(env, corev1.EnvVar{Name: "OTLP_ADDR", Value: t.Collector},
			corev1.EnvVar{Name: "TRACE_SAMPLING", Value: strconv.FormatFloat(t.Sampling, 'g', -1, 64)})
	}
	return corev1.Container{
		Name:  ProxyContainer,
		Image: cfg.ProxyImage,
		Args:  []string{"run"},
		Env:   env,
		Ports: []corev1.ContainerPort{{Name: "weft-admin", ContainerPort: AdminPort, Protocol: corev1.ProtocolTCP}},
		ReadinessProbe: &corev1.Probe{
			ProbeHandler: httpGet("/ready"), PeriodSeconds: 5, FailureThreshold: 3,
		},
		LivenessProbe: &corev1.Probe{
			ProbeHandler: httpGet("/live"), PeriodSeconds: 10, FailureThreshold: 6,
		},
		Resources:                *o.resources.DeepCopy(),
		SecurityContext:          restricted(cfg.ProxyUID),
		VolumeMounts:             []corev1.VolumeMount{{Name: TokenVolume, MountPath: TokenDir, ReadOnly: true}},
		TerminationMessagePolicy: corev1.TerminationMessageFallbackToLogsOnError,
	}
}

// initContainer is weft-proxy init: root with NET_ADMIN and NET_RAW, only for as long as it programs
// the Pod's nat table.
func initContainer(o options, cfg Config) corev1.Container {
	args := []string{"init", fmt.Sprintf("--proxy-uid=%d", cfg.ProxyUID)}
	if o.skipInbound != "" {
		args = append(args, "--skip-inbound-ports="+o.skipInbound)
	}
	if o.skipOutbound != "" {
		args = append(args, "--skip-outbound-ports="+o.skipOutbound)
	}
	if o.skipSubnets != "" {
		args = append(args, "--skip-subnets="+o.skipSubnets)
	}
	return corev1.Container{
		Name:      InitContainer,
		Image:     cfg.ProxyImage,
		Args:      args,
		Resources: *o.resources.DeepCopy(),
		SecurityContext: &corev1.SecurityContext{
			RunAsUser:                ptr.To[int64](0),
			RunAsNonRoot:             ptr.To(false),
			AllowPrivilegeEscalation: ptr.To(false),
			ReadOnlyRootFilesystem:   ptr.To(true),
			Capabilities: &corev1.Capabilities{
				Add:  []corev1.Capability{"NET_ADMIN", "NET_RAW"},
				Drop: []corev1.Capability{"ALL"},
			},
			SeccompProfile: &corev1.SeccompProfile{Type: corev1.SeccompProfileTypeRuntimeDefault},
		},
		// iptables-legacy takes a lock in /run/xtables.lock; the root stays read-only.
		VolumeMounts:             []corev1.VolumeMount{{Name: InitRunVolume, MountPath: "/run"}},
		TerminationMessagePolicy: corev1.TerminationMessageFallbackToLogsOnError,
	}
}

// validateContainer is weft-proxy validate (CNI mode): no privilege, any uid but the proxy's.
func validateContainer(o options, cfg Config) corev1.Container {
	uid := int64(ValidateUID)
	if uid == cfg.ProxyUID {
		uid++
	}
	return corev1.Container{
		Name:                     ValidateContainer,
		Image:                    cfg.ProxyImage,
		Args:                     []string{"validate", fmt.Sprintf("--proxy-uid=%d", cfg.ProxyUID)},
		Resources:                *o.resources.DeepCopy(),
		SecurityContext:          restricted(uid),
		TerminationMessagePolicy: corev1.TerminationMessageFallbackToLogsOnError,
	}
}

// Uninject removes what Inject and `weft inject` added: the Weft containers, the token and /run volumes, the
// label and annotation of an injected Pod, and weft.io/inject: enabled. It reports whether anything
// changed. weft.io/inject: disabled stays (a user's choice).
func Uninject(meta *metav1.ObjectMeta, spec *corev1.PodSpec) bool {
	changed := false
	weft := func(c corev1.Container) bool {
		return c.Name == ProxyContainer || c.Name == InitContainer || c.Name == ValidateContainer
	}
	if n := len(spec.InitContainers); n > 0 {
		spec.InitContainers = slices.DeleteFunc(spec.InitContainers, weft)
		changed = changed || len(spec.InitContainers) != n
		if len(spec.InitContainers) == 0 {
			spec.InitContainers = nil
		}
	}
	if n := len(spec.Containers); n > 0 {
		spec.Containers = slices.DeleteFunc(spec.Containers, weft)
		changed = changed || len(spec.Containers) != n
	}
	if n := len(spec.Volumes); n > 0 {
		spec.Volumes = slices.DeleteFunc(spec.Volumes, func(v corev1.Volume) bool { return v.Name == TokenVolume || v.Name == InitRunVolume })
		changed = changed || len(spec.Volumes) != n
		if len(spec.Volumes) == 0 {
			spec.Volumes = nil
		}
	}
	if _, ok := meta.Labels[LabelControlPlaneNS]; ok {
		delete(meta.Labels, LabelControlPlaneNS)
		changed = true
	}
	if _, ok := meta.Annotations[AnnotationProxyVersion]; ok {
		delete(meta.Annotations, AnnotationProxyVersion)
		changed = true
	}
	if meta.Annotations[AnnotationInject] == Enabled {
		delete(meta.Annotations, AnnotationInject)
		changed = true
	}
	if len(meta.Labels) == 0 {
		meta.Labels = nil
	}
	if len(meta.Annotations) == 0 {
		meta.Annotations = nil
	}
	return changed
}
