package inject

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"

	yaml "go.yaml.in/yaml/v3"
	corev1 "k8s.io/api/core/v1"
	k8syaml "k8s.io/apimachinery/pkg/util/yaml"
	sigsyaml "sigs.k8s.io/yaml"
)

// Mode is what Rewrite does to each workload of a manifest stream.
type Mode int

const (
	// Annotate adds weft.io/inject: enabled to the Pod template (the injector does the rest when the
	// Pods are created): weft inject.
	Annotate Mode = iota
	// Manual inlines the proxy into the Pod template by Inject: weft inject --manual.
	Manual
	// Remove takes off what Annotate and Manual added: weft uninject.
	Remove
)

// templatePaths are where each workload kind keeps its Pod template, as JSON pointers ("" for a Pod).
var templatePaths = map[string]string{
	"Pod":                   "",
	"Deployment":            "/spec/template",
	"StatefulSet":           "/spec/template",
	"DaemonSet":             "/spec/template",
	"ReplicaSet":            "/spec/template",
	"ReplicationController": "/spec/template",
	"Job":                   "/spec/template",
	"CronJob":               "/spec/jobTemplate/spec/template",
}

// Rewrite applies mode to every workload in a multi-document YAML (or JSON) stream of Kubernetes
// objects, Lists included, and returns the stream. Each change is made on the document's YAML tree by
// the same JSON patch the webhook would send, so every other field, the order of keys and the comments
// stay; documents with nothing to change are copied byte for byte. report hears one line per workload
// (what was done, or why not). A document that is not a Kubernetes object, or a bad annotation, is an
// error naming the document.
func Rewrite(in io.Reader, mode Mode, cfg Config, report func(string)) ([]byte, error) {
	if report == nil {
		report = func(string) {}
	}
	r := k8syaml.NewYAMLReader(bufio.NewReader(in))
	var out bytes.Buffer
	for i := 1; ; i++ {
		doc, err := r.Read()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return nil, fmt.Errorf("document %d: %w", i, err)
		}
		changed, err := rewriteDoc(doc, mode, cfg, report)
		if err != nil {
			return nil, fmt.Errorf("document %d: %w", i, err)
		}
		if len(bytes.TrimSpace(doc)) == 0 {
			continue
		}
		if out.Len() > 0 {
			out.WriteString("---\n")
		}
		if changed == nil {
			out.Write(doc)
			if !bytes.HasSuffix(doc, []byte("\n")) {
				out.WriteByte('\n')
			}
			continue
		}
		out.Write(changed)
	}
	return out.Bytes(), nil
}

// rewriteDoc returns the changed document, or nil when nothing changed.
func rewriteDoc(doc []byte, mode Mode, cfg Config, report func(string)) ([]byte, error) {
	var root yaml.Node
	if err := yaml.Unmarshal(doc, &root); err != nil {
		return nil, fmt.Errorf("not YAML: %s", oneLine(err.Error()))
	}
	if root.Kind == 0 || len(root.Content) == 0 || root.Content[0].Kind == yaml.ScalarNode && root.Content[0].Tag == "!!null" {
		return nil, nil // empty, or only comments
	}
	if root.Content[0].Kind != yaml.MappingNode {
		return nil, errors.New("not a Kubernetes object (want a YAML mapping with apiVersion and kind)")
	}
	var ops []Op
	if err := collectOps(root.Content[0], "", mode, cfg, report, &ops); err != nil {
		return nil, err
	}
	if len(ops) == 0 {
		return nil, nil
	}
	if root.Content[0].Style&yaml.FlowStyle != 0 {
		blockStyle(&root)
	}
	for _, op := range ops {
		if err := applyOp(root.Content[0], op); err != nil {
			return nil, fmt.Errorf("applying %s %s: %w", op.Op, op.Path, err)
		}
	}
	var b bytes.Buffer
	enc := yaml.NewEncoder(&b)
	enc.SetIndent(2)
	if err := enc.Encode(&root); err != nil {
		return nil, err
	}
	if err := enc.Close(); err != nil {
		return nil, err
	}
	return b.Bytes(), nil
}

// collectOps adds the operations for the object at node (at JSON pointer at) to ops.
func collectOps(node *yaml.Node, at string, mode Mode, cfg Config, report func(string), ops *[]Op) error {
	var head struct {
		APIVersion string `yaml:"apiVersion"`
		Kind       string `yaml:"kind"`
		Metadata   struct {
			Name, Namespace string
		} `yaml:"metadata"`
	}
	if err := node.Decode(&head); err != nil {
		return fmt.Errorf("not a Kubernetes object: %s", oneLine(err.Error()))
	}
	if head.APIVersion == "" || head.Kind == "" {
		return errors.New("not a Kubernetes object: apiVersion or kind is missing")
	}
	name := strings.ToLower(head.Kind) + "/" + head.Metadata.Name
	if head.Metadata.Namespace != "" {
		name = head.Metadata.Namespace + "/" + name
	}
	if strings.HasSuffix(head.Kind, "List") {
		items := lookup(node, "items")
		if items == nil {
			return nil
		}
		if items.Kind != yaml.SequenceNode {
			return fmt.Errorf("%s: items is not a list", head.Kind)
		}
		for i, item := range items.Content {
			if err := collectOps(item, at+"/items/"+strconv.Itoa(i), mode, cfg, report, ops); err != nil {
				return fmt.Errorf("items[%d]: %w", i, err)
			}
		}
		return nil
	}
	path, ok := templatePaths[head.Kind]
	if !ok {
		return nil
	}
	tmplNode := node
	for _, key := range pointerTokens(path) {
		if tmplNode = lookup(tmplNode, key); tmplNode == nil {
			report(name + ": no Pod template, left alone")
			return nil
		}
	}
	var generic any
	if err := tmplNode.Decode(&generic); err != nil {
		return fmt.Errorf("%s: %s", name, oneLine(err.Error()))
	}
	raw, err := json.Marshal(generic)
	if err != nil {
		return fmt.Errorf("%s: %w", name, err)
	}
	var tmpl corev1.PodTemplateSpec
	if err := json.Unmarshal(raw, &tmpl); err != nil {
		return fmt.Errorf("%s: the Pod template is not valid: %s", name, oneLine(err.Error()))
	}
	if tmpl.Namespace == "" {
		tmpl.Namespace = head.Metadata.Namespace
	}
	before := tmpl.DeepCopy()
	switch mode {
	case Remove:
		if !Uninject(&tmpl.ObjectMeta, &tmpl.Spec) {
			report(name + ": nothing to remove")
			return nil
		}
		report(name + ": uninjected")
	case Annotate, Manual:
		pod := &corev1.Pod{ObjectMeta: *tmpl.ObjectMeta.DeepCopy(), Spec: *tmpl.Spec.DeepCopy()}
		// The user asks for this workload: enabled unless its template says disabled.
		res, err := Inject(pod, map[string]string{AnnotationInject: Enabled}, cfg)
		if err != nil {
			return fmt.Errorf("%s: %w", name, err)
		}
		if !res.Injected {
			report(name + ": skipped: " + res.Reason)
			return nil
		}
		if mode == Manual {
			tmpl.ObjectMeta, tmpl.Spec = pod.ObjectMeta, pod.Spec
			tmpl.Namespace = before.Namespace
			report(name + ": proxy injected")
		} else {
			if tmpl.Annotations == nil {
				tmpl.Annotations = map[string]string{}
			}
			tmpl.Annotations[AnnotationInject] = Enabled
			report(name + ": annotated " + AnnotationInject + "=" + Enabled)
		}
	}
	*ops = append(*ops, Diff(at+path, &before.ObjectMeta, &before.Spec, &tmpl.ObjectMeta, &tmpl.Spec)...)
	return nil
}

func oneLine(s string) string { return strings.Join(strings.Fields(s), " ") }

// lookup is the value of key in a mapping node, or nil.
func lookup(m *yaml.Node, key string) *yaml.Node {
	if m == nil || m.Kind != yaml.MappingNode {
		return nil
	}
	for i := 0; i+1 < len(m.Content); i += 2 {
		if m.Content[i].Value == key {
			return m.Content[i+1]
		}
	}
	return nil
}

var pointerUnescape = strings.NewReplacer("~1", "/", "~0", "~")

func pointerTokens(p string) []string {
	if p == "" {
		return nil
	}
	toks := strings.Split(strings.TrimPrefix(p, "/"), "/")
	for i, t := range toks {
		toks[i] = pointerUnescape.Replace(t)
	}
	return toks
}

// applyOp applies one JSON patch operation to a YAML tree. Mappings missing on the way of an add are
// made (a Pod template without metadata gets one).
func applyOp(root *yaml.Node, op Op) error {
	toks := pointerTokens(op.Path)
	if len(toks) == 0 {
		return errors.New("cannot change the whole document")
	}
	parent := root
	var grandparent *yaml.Node
	ancestors := []*yaml.Node{root}
	for _, t := range toks[:len(toks)-1] {
		next, err := child(parent, t)
		if err != nil {
			return err
		}
		if next == nil {
			if op.Op != "add" || parent.Kind != yaml.MappingNode {
				return fmt.Errorf("%q not found", t)
			}
			next = &yaml.Node{Kind: yaml.MappingNode, Tag: "!!map"}
			addKey(parent, t, next)
		}
		grandparent, parent = parent, next
		ancestors = append(ancestors, next)
	}
	last := toks[len(toks)-1]
	var value *yaml.Node
	if op.Op != "remove" {
		var err error
		if value, err = toNode(op.Value); err != nil {
			return err
		}
		if value.Kind != yaml.ScalarNode {
			// A container or a volume on one line would be unreadable: the lists and maps on the way
			// to it become block style (comments stay).
			for _, n := range ancestors {
				n.Style &^= yaml.FlowStyle
			}
		}
	}
	switch parent.Kind {
	case yaml.MappingNode:
		for i := 0; i+1 < len(parent.Content); i += 2 {
			if parent.Content[i].Value == last {
				if op.Op == "remove" {
					parent.Content = append(parent.Content[:i], parent.Content[i+2:]...)
					if len(parent.Content) == 0 && grandparent != nil {
						pruneEmpty(grandparent, parent) // what an add made, a remove unmakes
					}
				} else {
					value.HeadComment, value.LineComment = parent.Content[i+1].HeadComment, parent.Content[i+1].LineComment
					parent.Content[i+1] = value
				}
				return nil
			}
		}
		if op.Op != "add" {
			return fmt.Errorf("%q not found", last)
		}
		addKey(parent, last, value)
		return nil
	case yaml.SequenceNode:
		n := len(parent.Content)
		idx := n
		if last != "-" {
			var err error
			if idx, err = strconv.Atoi(last); err != nil || idx < 0 || idx > n || idx == n && op.Op != "add" {
				return fmt.Errorf("index %q out of range (%d items)", last, n)
			}
		}
		switch op.Op {
		case "add":
			parent.Content = append(parent.Content[:idx], append([]*yaml.Node{value}, parent.Content[idx:]...)...)
		case "remove":
			parent.Content = append(parent.Content[:idx], parent.Content[idx+1:]...)
		default:
			parent.Content[idx] = value
		}
		return nil
	}
	return fmt.Errorf("%q is inside a scalar", last)
}

// addKey adds key: value to a mapping: at the end, except metadata, which goes before spec as
// Kubernetes writes it.
func addKey(m *yaml.Node, key string, value *yaml.Node) {
	k := &yaml.Node{Kind: yaml.ScalarNode, Tag: "!!str", Value: key}
	if key == "metadata" {
		for i := 0; i+1 < len(m.Content); i += 2 {
			if m.Content[i].Value == "spec" {
				m.Content = append(m.Content[:i], append([]*yaml.Node{k, value}, m.Content[i:]...)...)
				return
			}
		}
	}
	m.Content = append(m.Content, k, value)
}

// pruneEmpty removes the empty mapping m from the mapping parent.
func pruneEmpty(parent, m *yaml.Node) {
	if parent.Kind != yaml.MappingNode {
		return
	}
	for i := 0; i+1 < len(parent.Content); i += 2 {
		if parent.Content[i+1] == m {
			parent.Content = append(parent.Content[:i], parent.Content[i+2:]...)
			return
		}
	}
}

// blockStyle turns a JSON document (flow style) into ordinary block YAML.
func blockStyle(n *yaml.Node) {
	n.Style &^= yaml.FlowStyle | yaml.DoubleQuotedStyle
	for _, c := range n.Content {
		blockStyle(c)
	}
}

func child(n *yaml.Node, tok string) (*yaml.Node, error) {
	switch n.Kind {
	case yaml.MappingNode:
		return lookup(n, tok), nil
	case yaml.SequenceNode:
		i, err := strconv.Atoi(tok)
		if err != nil || i < 0 || i >= len(n.Content) {
			return nil, fmt.Errorf("index %q out of range", tok)
		}
		return n.Content[i], nil
	}
	return nil, fmt.Errorf("%q is inside a scalar", tok)
}

// toNode turns a value of a patch (Kubernetes API types) into a YAML tree with the API's JSON names.
func toNode(v any) (*yaml.Node, error) {
	raw, err := json.Marshal(v)
	if err != nil {
		return nil, err
	}
	y, err := sigsyaml.JSONToYAML(raw)
	if err != nil {
		return nil, err
	}
	var doc yaml.Node
	if err := yaml.Unmarshal(y, &doc); err != nil {
		return nil, err
	}
	if len(doc.Content) == 0 {
		return nil, errors.New("empty value")
	}
	return doc.Content[0], nil
}
