package main

import (
	"encoding/json"
	"fmt"
	"slices"

	"github.com/containernetworking/cni/pkg/types"
	corev1 "k8s.io/api/core/v1"

	"github.com/weftmesh/weft/dataplane/iptables"
)

// PluginType is the plugin's "type" in a conflist, and the name of its binary in the CNI bin dir.
const PluginType = "weft-cni"

// ProxyContainer is the name of the injected proxy container (DESIGN.md): a Pod with a container or
// init container of this name is meshed.
const ProxyContainer = "weft-proxy"

// The Pod annotations weft-cni reads, as weft-proxy init's --skip-* flags do (DESIGN.md).
const (
	AnnotationSkipInboundPorts  = "config.weft.io/skip-inbound-ports"
	AnnotationSkipOutboundPorts = "config.weft.io/skip-outbound-ports"
	AnnotationSkipSubnets       = "config.weft.io/skip-subnets"
)

// Entry is weft-cni's own part of its entry in a conflist (what `weft-cni install` writes):
//
//	{"type": "weft-cni", "kubeconfig": "/etc/cni/net.d/weft-cni.kubeconfig",
//	 "iptablesMode": "auto", "excludeNamespaces": ["kube-system"]}
type Entry struct {
	Type string `json:"type"`
	// Kubeconfig is the file (on the node) with which the plugin reads Pods from the apiserver.
	Kubeconfig string `json:"kubeconfig"`
	// IptablesMode is the iptables backend: auto (default), nft or legacy.
	IptablesMode string `json:"iptablesMode,omitempty"`
	// ExcludeNamespaces are namespaces whose Pods are never meshed; the plugin does not even ask
	// the apiserver about them (so kube-system keeps starting Pods when the apiserver is away).
	ExcludeNamespaces []string `json:"excludeNamespaces,omitempty"`
}

// Conf is the configuration the runtime gives the plugin on stdin: the standard fields (with the
// previous plugin's result) and weft-cni's own.
type Conf struct {
	types.PluginConf
	Kubeconfig        string   `json:"kubeconfig"`
	IptablesMode      string   `json:"iptablesMode,omitempty"`
	ExcludeNamespaces []string `json:"excludeNamespaces,omitempty"`
}

// parseConf reads the plugin's stdin. It checks weft-cni's own fields; prevResult is left raw.
func parseConf(stdin []byte) (Conf, iptables.Mode, error) {
	var c Conf
	if err := json.Unmarshal(stdin, &c); err != nil {
		return c, "", fmt.Errorf("reading the network configuration: %w", err)
	}
	mode, err := iptables.ParseMode(c.IptablesMode)
	if err != nil {
		return c, "", fmt.Errorf(`%s's "iptablesMode": %w`, PluginType, err)
	}
	return c, mode, nil
}

// PodRef is the Pod a CNI call is for, from CNI_ARGS (K8S_POD_NAMESPACE, K8S_POD_NAME), as the
// kubelet's runtime (containerd, CRI-O) passes them.
type PodRef struct {
	Namespace, Name string
}

// k8sArgs are the CNI_ARGS keys a Kubernetes runtime sets; IgnoreUnknown lets others through.
type k8sArgs struct {
	types.CommonArgs
	K8S_POD_NAMESPACE          types.UnmarshallableString
	K8S_POD_NAME               types.UnmarshallableString
	K8S_POD_INFRA_CONTAINER_ID types.UnmarshallableString
	K8S_POD_UID                types.UnmarshallableString
}

// parseArgs reads CNI_ARGS ("IgnoreUnknown=1;K8S_POD_NAMESPACE=ns;K8S_POD_NAME=name;...").
func parseArgs(cniArgs string) (PodRef, error) {
	var a k8sArgs
	a.IgnoreUnknown = true // keys of other runtimes and meta-plugins never make the call fail
	if err := types.LoadArgs(cniArgs, &a); err != nil {
		return PodRef{}, fmt.Errorf("reading CNI_ARGS: %w", err)
	}
	return PodRef{Namespace: string(a.K8S_POD_NAMESPACE), Name: string(a.K8S_POD_NAME)}, nil
}

// skipBeforeFetch says, from the call alone, why the Pod needs no look-up and no rules ("" when the
// Pod must be read from the apiserver).
func skipBeforeFetch(c Conf, pod PodRef) string {
	switch {
	case pod.Name == "" || pod.Namespace == "":
		return "CNI_ARGS names no Kubernetes Pod (K8S_POD_NAMESPACE, K8S_POD_NAME)"
	case slices.Contains(c.ExcludeNamespaces, pod.Namespace):
		return fmt.Sprintf("namespace %s is excluded (excludeNamespaces)", pod.Namespace)
	}
	return ""
}

// podOptions decides from the Pod whether it is meshed and, if so, its interception: meshed means it
// has a container or init container named weft-proxy (the injector put the proxy there) and does not
// use the node's network. skip is the reason when it is not meshed. A config.weft.io/skip-*
// annotation that does not parse is an error naming it: the Pod would otherwise run with a different
// interception than its owner asked for.
func podOptions(pod *corev1.Pod) (opts iptables.Options, skip string, err error) {
	if pod.Spec.HostNetwork {
		return opts, "the Pod uses the node's network (hostNetwork)", nil
	}
	hasProxy := func(cs []corev1.Container) bool {
		return slices.ContainsFunc(cs, func(c corev1.Container) bool { return c.Name == ProxyContainer })
	}
	if !hasProxy(pod.Spec.Containers) && !hasProxy(pod.Spec.InitContainers) {
		return opts, "the Pod has no " + ProxyContainer + " container (not injected)", nil
	}
	opts = iptables.DefaultOptions()
	ann := pod.Annotations
	where := func(key string, err error) error {
		return fmt.Errorf("pod %s/%s: annotation %s: %w; fix the annotation and recreate the Pod", pod.Namespace, pod.Name, key, err)
	}
	if opts.SkipInboundPorts, err = iptables.ParsePorts(ann[AnnotationSkipInboundPorts]); err != nil {
		return opts, "", where(AnnotationSkipInboundPorts, err)
	}
	if opts.SkipOutboundPorts, err = iptables.ParsePorts(ann[AnnotationSkipOutboundPorts]); err != nil {
		return opts, "", where(AnnotationSkipOutboundPorts, err)
	}
	if opts.SkipSubnets, err = iptables.ParseSubnets(ann[AnnotationSkipSubnets]); err != nil {
		return opts, "", where(AnnotationSkipSubnets, err)
	}
	if _, err := iptables.Rules(opts); err != nil { // e.g. an IPv6 subnet
		return opts, "", fmt.Errorf("pod %s/%s: %w; fix its config.weft.io/skip-* annotations and recreate the Pod", pod.Namespace, pod.Name, err)
	}
	return opts, "", nil
}
