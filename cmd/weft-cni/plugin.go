package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"time"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"
	"github.com/containernetworking/cni/pkg/version"
	"github.com/containernetworking/plugins/pkg/ns"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	corev1client "k8s.io/client-go/kubernetes/typed/core/v1"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/weftmesh/weft/cmd/internal/buildinfo"
	"github.com/weftmesh/weft/dataplane/iptables"
)

// apiTimeout bounds the plugin's one apiserver request.
const apiTimeout = 15 * time.Second

// plugin holds what the CNI commands need from outside (main gives the real ones).
type plugin struct {
	log *slog.Logger
	// getPod reads a Pod with the kubeconfig named in the plugin's configuration.
	getPod func(ctx context.Context, kubeconfig string, ref PodRef) (*corev1.Pod, error)
}

// runPlugin is weft-cni as the runtime executes it: CNI_COMMAND and the rest in the environment,
// the configuration on stdin, the result or a CNI error as JSON on stdout.
func runPlugin() {
	p := &plugin{log: slog.New(slog.NewTextHandler(os.Stderr, nil)).With("plugin", PluginType), getPod: apiGetPod}
	skel.PluginMainFuncs(skel.CNIFuncs{Add: p.cmdAdd, Check: p.cmdCheck, Del: p.cmdDel},
		version.All, buildinfo.String(PluginType)+": the Weft mesh's CNI chained plugin (weft-cni install puts it on a node)")
}

// cniError turns an error into the CNI error the runtime shows (in the Pod's events, for a kubelet).
func cniError(code uint, err error) error {
	var te *types.Error
	if errors.As(err, &te) {
		return te
	}
	return types.NewError(code, PluginType+": "+err.Error(), "")
}

// interception works out the Pod's rules: nil when it is not meshed (reason says why).
func (p *plugin) interception(ctx context.Context, c Conf, args *skel.CmdArgs) (rs *iptables.RuleSet, ref PodRef, reason string, err error) {
	ref, err = parseArgs(args.Args)
	if err != nil {
		return nil, ref, "", cniError(types.ErrInvalidEnvironmentVariables, err)
	}
	if reason := skipBeforeFetch(c, ref); reason != "" {
		return nil, ref, reason, nil
	}
	if c.Kubeconfig == "" {
		return nil, ref, "", cniError(types.ErrInvalidNetworkConfig, errors.New(`the configuration has no "kubeconfig" (the file with which the plugin reads Pods); run weft-cni install, which writes it`))
	}
	pod, err := p.getPod(ctx, c.Kubeconfig, ref)
	if apierrors.IsNotFound(err) {
		return nil, ref, "the Pod is not in the apiserver (deleted)", nil
	}
	if err != nil {
		return nil, ref, "", cniError(types.ErrTryAgainLater, fmt.Errorf("reading Pod %s/%s to learn whether it is meshed: %w", ref.Namespace, ref.Name, err))
	}
	opts, reason, err := podOptions(pod)
	if err != nil {
		return nil, ref, "", cniError(types.ErrInvalidNetworkConfig, err)
	}
	if reason != "" {
		return nil, ref, reason, nil
	}
	rules, err := iptables.Rules(opts)
	if err != nil {
		return nil, ref, "", cniError(types.ErrInvalidNetworkConfig, err)
	}
	return &rules, ref, "", nil
}

// cmdAdd programs a meshed Pod's interception inside its network namespace and passes the previous
// plugin's result on unchanged, whatever the Pod.
func (p *plugin) cmdAdd(args *skel.CmdArgs) error {
	ctx := context.Background()
	c, mode, err := parseConf(args.StdinData)
	if err != nil {
		return cniError(types.ErrDecodingFailure, err)
	}
	if err := version.ParsePrevResult(&c.PluginConf); err != nil {
		return cniError(types.ErrDecodingFailure, err)
	}
	if c.PrevResult == nil {
		return cniError(types.ErrInvalidNetworkConfig, errors.New("no prevResult: weft-cni is a chained plugin; put it after the plugin that sets up the Pod's interface in a .conflist (weft-cni install does)"))
	}
	rs, ref, reason, err := p.interception(ctx, c, args)
	if err != nil {
		return err
	}
	if rs == nil {
		p.log.Info("not meshed; nothing to do", "pod", ref.Namespace+"/"+ref.Name, "reason", reason)
		return types.PrintResult(c.PrevResult, c.CNIVersion)
	}
	a := &iptables.Applier{Mode: mode, Log: p.log.With("pod", ref.Namespace+"/"+ref.Name)}
	err = ns.WithNetNSPath(args.Netns, func(ns.NetNS) error {
		_, err := a.Apply(ctx, *rs)
		return err
	})
	if err != nil {
		return cniError(types.ErrInternal, fmt.Errorf("programming the interception of Pod %s/%s in %s: %w", ref.Namespace, ref.Name, args.Netns, err))
	}
	return types.PrintResult(c.PrevResult, c.CNIVersion)
}

// cmdCheck verifies that a meshed Pod's network namespace holds its rules.
func (p *plugin) cmdCheck(args *skel.CmdArgs) error {
	ctx := context.Background()
	c, mode, err := parseConf(args.StdinData)
	if err != nil {
		return cniError(types.ErrDecodingFailure, err)
	}
	rs, ref, _, err := p.interception(ctx, c, args)
	if err != nil || rs == nil {
		return err
	}
	a := &iptables.Applier{Mode: mode, Log: p.log.With("pod", ref.Namespace+"/"+ref.Name)}
	err = ns.WithNetNSPath(args.Netns, func(ns.NetNS) error { return a.Check(ctx, *rs) })
	if err != nil {
		return cniError(types.ErrInternal, fmt.Errorf("the meshed Pod %s/%s has a network namespace %s that lacks the interception (the Pod's traffic bypasses the proxy; recreate the Pod): %w", ref.Namespace, ref.Name, args.Netns, err))
	}
	return nil
}

// cmdDel removes Weft's rules from the Pod's network namespace, when it still exists. It does not
// ask the apiserver: the chains are Weft's whatever the Pod says now.
func (p *plugin) cmdDel(args *skel.CmdArgs) error {
	_, mode, err := parseConf(args.StdinData)
	if err != nil {
		return cniError(types.ErrDecodingFailure, err)
	}
	if args.Netns == "" {
		return nil
	}
	if _, err := os.Stat(args.Netns); errors.Is(err, os.ErrNotExist) {
		return nil // the namespace, and the rules with it, are gone
	}
	log := p.log
	if ref, err := parseArgs(args.Args); err == nil && ref.Name != "" {
		log = log.With("pod", ref.Namespace+"/"+ref.Name)
	}
	a := &iptables.Applier{Mode: mode, Log: log}
	err = ns.WithNetNSPath(args.Netns, func(ns.NetNS) error {
		_, err := a.Remove(context.Background())
		return err
	})
	var notNS ns.NSPathNotExistErr
	var notNSType ns.NSPathNotNSErr
	if errors.As(err, &notNS) || errors.As(err, &notNSType) {
		return nil
	}
	if err != nil {
		return cniError(types.ErrInternal, fmt.Errorf("removing the interception from %s: %w", args.Netns, err))
	}
	return nil
}

// apiGetPod reads the Pod with the kubeconfig that weft-cni install wrote.
func apiGetPod(ctx context.Context, kubeconfig string, ref PodRef) (*corev1.Pod, error) {
	cfg, err := clientcmd.BuildConfigFromFlags("", kubeconfig)
	if err != nil {
		return nil, fmt.Errorf("kubeconfig %s: %w", kubeconfig, err)
	}
	cfg.Timeout = apiTimeout
	cfg.UserAgent = PluginType + "/" + buildinfo.Version
	cs, err := corev1client.NewForConfig(cfg)
	if err != nil {
		return nil, fmt.Errorf("kubeconfig %s: %w", kubeconfig, err)
	}
	ctx, cancel := context.WithTimeout(ctx, apiTimeout)
	defer cancel()
	return cs.Pods(ref.Namespace).Get(ctx, ref.Name, metav1.GetOptions{})
}
