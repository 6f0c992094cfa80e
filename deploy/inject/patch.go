package inject

import (
	"encoding/json"
	"slices"
	"sort"
	"strconv"
	"strings"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// Op is one operation of a JSON patch (RFC 6902).
type Op struct {
	Op    string // add, remove or replace
	Path  string // a JSON pointer (RFC 6901)
	Value any    // for add and replace
}

// MarshalJSON writes the operation as RFC 6902 does: value present for add and replace, even when it
// is an empty string.
func (o Op) MarshalJSON() ([]byte, error) {
	if o.Op == "remove" {
		return json.Marshal(struct {
			Op   string `json:"op"`
			Path string `json:"path"`
		}{o.Op, o.Path})
	}
	return json.Marshal(struct {
		Op    string `json:"op"`
		Path  string `json:"path"`
		Value any    `json:"value"`
	}{o.Op, o.Path, o.Value})
}

// Patch runs Inject on a copy of pod and returns the change as a JSON patch, as an admission webhook
// answers; no operations when the Pod is left alone.
func Patch(pod *corev1.Pod, nsAnnotations map[string]string, cfg Config) ([]Op, Result, error) {
	mutated := pod.DeepCopy()
	res, err := Inject(mutated, nsAnnotations, cfg)
	if err != nil || !res.Injected {
		return nil, res, err
	}
	return Diff("", &pod.ObjectMeta, &pod.Spec, &mutated.ObjectMeta, &mutated.Spec), res, nil
}

// Diff is the JSON patch that turns a Pod (or a Pod template, at prefix: "/spec/template" of a
// Deployment) into another that differs as Inject and Uninject change Pods: labels and annotations, and
// named items added to or removed from the init containers, containers and volumes.
//
// It is not a generic JSON diff on purpose. A generic diff (gomodules.xyz/jsonpatch, evanphx/json-patch)
// compares lists by position, so prepending weft-init would become field-by-field replaces of every
// existing init container: a field the injector's Go types do not know (a newer apiserver's) would
// stay on the wrong container, and the patch would change with map iteration order. A merge patch
// replaces lists whole, with the same loss, and admission webhooks must answer a JSON patch anyway.
// Here each added or removed item is one operation by its name, and nothing else is touched.
func Diff(prefix string, oldMeta *metav1.ObjectMeta, oldSpec *corev1.PodSpec, newMeta *metav1.ObjectMeta, newSpec *corev1.PodSpec) []Op {
	var ops []Op
	ops = mapOps(ops, prefix+"/metadata/labels", oldMeta.Labels, newMeta.Labels)
	ops = mapOps(ops, prefix+"/metadata/annotations", oldMeta.Annotations, newMeta.Annotations)
	containerName := func(c corev1.Container) string { return c.Name }
	ops = listOps(ops, prefix+"/spec/initContainers", oldSpec.InitContainers, newSpec.InitContainers, containerName)
	ops = listOps(ops, prefix+"/spec/containers", oldSpec.Containers, newSpec.Containers, containerName)
	ops = listOps(ops, prefix+"/spec/volumes", oldSpec.Volumes, newSpec.Volumes, func(v corev1.Volume) string { return v.Name })
	return ops
}

var pointerEscape = strings.NewReplacer("~", "~0", "/", "~1")

func mapOps(ops []Op, path string, a, b map[string]string) []Op {
	switch {
	case len(a) == 0 && len(b) == 0:
		return ops
	case len(a) == 0:
		return append(ops, Op{"add", path, b})
	case len(b) == 0:
		return append(ops, Op{Op: "remove", Path: path})
	}
	keys := make([]string, 0, len(a)+len(b))
	for k := range a {
		keys = append(keys, k)
	}
	for k := range b {
		if _, ok := a[k]; !ok {
			keys = append(keys, k)
		}
	}
	sort.Strings(keys)
	for _, k := range keys {
		av, inA := a[k]
		bv, inB := b[k]
		p := path + "/" + pointerEscape.Replace(k)
		switch {
		case !inA:
			ops = append(ops, Op{"add", p, bv})
		case !inB:
			ops = append(ops, Op{Op: "remove", Path: p})
		case av != bv:
			ops = append(ops, Op{"replace", p, bv})
		}
	}
	return ops
}

// listOps removes the items of a whose name is not in b (from the last), then adds the items of b whose
// name is not in a at their final index (from the first). The items in both must be in the same order
// and unchanged, which holds for Inject and Uninject; otherwise the list is replaced whole.
func listOps[T any](ops []Op, path string, a, b []T, name func(T) string) []Op {
	switch {
	case len(a) == 0 && len(b) == 0:
		return ops
	case len(a) == 0:
		return append(ops, Op{"add", path, b})
	case len(b) == 0:
		return append(ops, Op{Op: "remove", Path: path})
	}
	names := func(l []T) []string {
		out := make([]string, len(l))
		for i, x := range l {
			out[i] = name(x)
		}
		return out
	}
	an, bn := names(a), names(b)
	var keptA, keptB []string
	for _, n := range an {
		if slices.Contains(bn, n) {
			keptA = append(keptA, n)
		}
	}
	for _, n := range bn {
		if slices.Contains(an, n) {
			keptB = append(keptB, n)
		}
	}
	if !slices.Equal(keptA, keptB) {
		return append(ops, Op{"replace", path, b})
	}
	for i := len(a) - 1; i >= 0; i-- {
		if !slices.Contains(bn, an[i]) {
			ops = append(ops, Op{Op: "remove", Path: path + "/" + strconv.Itoa(i)})
		}
	}
	for j, x := range b {
		if !slices.Contains(an, bn[j]) {
			ops = append(ops, Op{"add", path + "/" + strconv.Itoa(j), x})
		}
	}
	return ops
}
