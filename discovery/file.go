package discovery

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"time"

	"github.com/fsnotify/fsnotify"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	sigsjson "sigs.k8s.io/json"
	"sigs.k8s.io/yaml"

	"github.com/weftmesh/weft/discovery/authz"
)

// Source produces States. Run publishes a first, complete State once it has one (for Kubernetes:
// after the caches synced), then a new State after each change, until ctx ends. Publish is called
// from one goroutine at a time.
type Source interface {
	Run(ctx context.Context, publish func(*State)) error
}

// LoadFile reads a multi-document Kubernetes YAML file of Namespaces, Services, EndpointSlices and
// Pods (other kinds are ignored) and builds a State. Errors name the file, the document and the field.
func LoadFile(path string) (*State, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("reading discovery file: %w", err)
	}
	s, _, err := parseFile(path, data)
	return s, err
}

// parseFile builds the State of a discovery file's content and names the documents it ignored.
func parseFile(path string, data []byte) (*State, []string, error) {
	objs, err := ParseObjects(data)
	if err != nil {
		return nil, nil, fmt.Errorf("%s: %w", path, err)
	}
	return Build(objs), objs.Ignored, nil
}

// ParseObjects decodes multi-document Kubernetes YAML. Unknown fields are errors, so a typo does not
// silently drop a setting.
func ParseObjects(data []byte) (Objects, error) {
	var objs Objects
	r := utilyaml.NewYAMLReader(bufio.NewReader(bytes.NewReader(data)))
	for n := 1; ; n++ {
		doc, err := r.Read()
		if errors.Is(err, io.EOF) {
			return objs, nil
		}
		if err != nil {
			return objs, fmt.Errorf("document %d: %w", n, err)
		}
		if len(bytes.TrimSpace(doc)) == 0 {
			n--
			continue
		}
		ignored, err := decodeDocument(doc, &objs)
		if err != nil {
			return objs, fmt.Errorf("document %d%w", n, err)
		}
		if ignored != "" {
			objs.Ignored = append(objs.Ignored, fmt.Sprintf("document %d%s", n, ignored))
		}
	}
}

type docHeader struct {
	APIVersion string `json:"apiVersion"`
	Kind       string `json:"kind"`
	Metadata   struct {
		Name      string `json:"name"`
		Namespace string `json:"namespace"`
	} `json:"metadata"`
}

// decodeDocument appends the object of one YAML document, or returns " (Kind ns/name)" for a kind it
// does not read. Its errors start with what follows "document N" in a message: " (Kind ns/name):
// field: problem".
func decodeDocument(doc []byte, objs *Objects) (ignored string, _ error) {
	js, err := yaml.YAMLToJSON(doc)
	if err != nil {
		return "", fmt.Errorf(": not valid YAML: %w", err)
	}
	if bytes.Equal(bytes.TrimSpace(js), []byte("null")) {
		return "", nil
	}
	var h docHeader
	if err := json.Unmarshal(js, &h); err != nil {
		return "", fmt.Errorf(": not a Kubernetes object (a mapping with apiVersion and kind): %w", err)
	}
	if h.Metadata.Namespace == "" {
		h.Metadata.Namespace = "default"
	}
	where := fmt.Sprintf(" (%s %s/%s)", h.Kind, h.Metadata.Namespace, h.Metadata.Name)
	var fieldErr error
	switch h.Kind {
	case "":
		return "", fmt.Errorf(": kind: missing; every document needs apiVersion and kind")
	case "Namespace":
		where = fmt.Sprintf(" (Namespace %s)", h.Metadata.Name)
		var o corev1.Namespace
		if fieldErr = strictJSON(js, &o); fieldErr == nil {
			fieldErr = requireName(o.Name)
			objs.Namespaces = append(objs.Namespaces, &o)
		}
	case "Service":
		var o corev1.Service
		if fieldErr = strictJSON(js, &o); fieldErr == nil {
			o.Namespace = h.Metadata.Namespace
			fieldErr = errors.Join(requireName(o.Name), validateService(&o))
			objs.Services = append(objs.Services, &o)
		}
	case "EndpointSlice":
		var o discoveryv1.EndpointSlice
		if fieldErr = strictJSON(js, &o); fieldErr == nil {
			o.Namespace = h.Metadata.Namespace
			fieldErr = errors.Join(requireName(o.Name), validateSlice(&o))
			objs.EndpointSlices = append(objs.EndpointSlices, &o)
		}
	case "Pod":
		var o corev1.Pod
		if fieldErr = strictJSON(js, &o); fieldErr == nil {
			o.Namespace = h.Metadata.Namespace
			fieldErr = errors.Join(requireName(o.Name), validatePod(&o))
			objs.Pods = append(objs.Pods, &o)
		}
	case "HTTPRoute", "GRPCRoute", "ReferenceGrant":
		if !strings.HasPrefix(h.APIVersion, gatewayGroup+"/") {
			return where, nil // a kind of the same name in another API group is not ours
		}
		fieldErr = decodeGateway(h.Kind, h.Metadata.Namespace, js, objs)
	case authz.Kind:
		if h.APIVersion != authz.APIVersion {
			return where, nil
		}
		var o authz.AuthorizationPolicy
		if fieldErr = strictJSON(js, &o); fieldErr == nil {
			o.Namespace = h.Metadata.Namespace
			fieldErr = requireName(o.Name)
			objs.AuthorizationPolicies = append(objs.AuthorizationPolicies, &o)
		}
	default:
		return where, nil // other kinds (Deployments, ConfigMaps, ...) may share the file; they are not ours
	}
	if fieldErr != nil {
		return "", fmt.Errorf("%s: %w", where, fieldErr)
	}
	return "", nil
}

// strictJSON decodes one object as the API server would (field names are case-sensitive, unknown
// fields are errors). Its errors name the field by its full path with list indexes
// ("spec.ports[1].port: ..."), so that the user can find it in a document with several lists.
func strictJSON(js []byte, into any) error {
	strict, err := sigsjson.UnmarshalStrict(js, into, sigsjson.DisallowUnknownFields)
	if err != nil {
		// The type errors of sigs.k8s.io/json are of an internal type: decode again with the standard
		// library, whose UnmarshalTypeError has the offset (its Field has no list indexes).
		var te *json.UnmarshalTypeError
		if errors.As(json.Unmarshal(js, reflect.New(reflect.TypeOf(into).Elem()).Interface()), &te) {
			if p := pathAt(js, te.Offset); p != "" {
				return fmt.Errorf("%s: %s is not a valid %s", p, te.Value, te.Type)
			}
			if te.Field != "" {
				return fmt.Errorf("%s: %s is not a valid %s", te.Field, te.Value, te.Type)
			}
		}
		return err
	}
	if len(strict) > 0 {
		var errs []error
		for _, e := range strict {
			var fe sigsjson.FieldError
			if errors.As(e, &fe) {
				errs = append(errs, fmt.Errorf("%s: unknown field (check its spelling and indentation)", fe.FieldPath()))
			} else {
				errs = append(errs, e)
			}
		}
		return errors.Join(errs...)
	}
	return nil
}

// pathAt is the path ("spec.ports[0].port") of the JSON value that ends at byte offset off of js,
// or "" if there is none.
func pathAt(js []byte, off int64) string {
	type frame struct {
		array   bool
		index   int
		key     string
		wantKey bool
	}
	var st []frame
	begin := func() {
		if n := len(st); n > 0 && st[n-1].array {
			st[n-1].index++
		}
	}
	end := func() {
		if n := len(st); n > 0 && !st[n-1].array {
			st[n-1].wantKey = true
		}
	}
	dec := json.NewDecoder(bytes.NewReader(js))
	dec.UseNumber()
	for {
		tok, err := dec.Token()
		if err != nil {
			return ""
		}
		switch tok := tok.(type) {
		case json.Delim:
			switch tok {
			case '{', '[':
				begin()
				st = append(st, frame{array: tok == '[', index: -1, wantKey: true})
			default:
				st = st[:len(st)-1]
				end()
			}
		case string:
			if n := len(st); n > 0 && !st[n-1].array && st[n-1].wantKey {
				st[n-1].key, st[n-1].wantKey = tok, false
				continue
			}
			begin()
			end()
		default:
			begin()
			end()
		}
		if dec.InputOffset() >= off {
			var b strings.Builder
			for _, f := range st {
				switch {
				case f.array && f.index >= 0:
					fmt.Fprintf(&b, "[%d]", f.index)
				case !f.array && f.key != "":
					if b.Len() > 0 {
						b.WriteByte('.')
					}
					b.WriteString(f.key)
				}
			}
			return b.String()
		}
	}
}

func requireName(name string) error {
	if name == "" {
		return errors.New("metadata.name: missing")
	}
	return nil
}

func validateService(s *corev1.Service) error {
	var errs []error
	if ip := s.Spec.ClusterIP; ip != "" && ip != "None" {
		if _, err := netip.ParseAddr(ip); err != nil {
			errs = append(errs, fmt.Errorf("spec.clusterIP: %q is not an IP address (or None)", ip))
		}
	}
	names := map[string]bool{}
	for i, p := range s.Spec.Ports {
		if p.Port < 1 || p.Port > 65535 {
			errs = append(errs, fmt.Errorf("spec.ports[%d].port: %d is not a port number (1-65535)", i, p.Port))
		}
		if len(s.Spec.Ports) > 1 && p.Name == "" {
			errs = append(errs, fmt.Errorf("spec.ports[%d].name: missing; a Service with several ports must name each", i))
		}
		if names[p.Name] {
			errs = append(errs, fmt.Errorf("spec.ports[%d].name: %q is used twice", i, p.Name))
		}
		names[p.Name] = true
	}
	return errors.Join(errs...)
}

func validateSlice(es *discoveryv1.EndpointSlice) error {
	var errs []error
	if es.Labels[discoveryv1.LabelServiceName] == "" {
		errs = append(errs, fmt.Errorf("metadata.labels: missing %q (the name of the Service this slice belongs to)", discoveryv1.LabelServiceName))
	}
	switch es.AddressType {
	case discoveryv1.AddressTypeIPv4, discoveryv1.AddressTypeIPv6, discoveryv1.AddressTypeFQDN:
	default:
		errs = append(errs, fmt.Errorf("addressType: %q is not one of IPv4, IPv6, FQDN", es.AddressType))
	}
	for i, p := range es.Ports {
		if p.Port == nil || *p.Port < 1 || *p.Port > 65535 {
			errs = append(errs, fmt.Errorf("ports[%d].port: missing or not a port number (1-65535)", i))
		}
	}
	for i, e := range es.Endpoints {
		if len(e.Addresses) == 0 {
			errs = append(errs, fmt.Errorf("endpoints[%d].addresses: missing", i))
		}
		for j, a := range e.Addresses {
			if es.AddressType == discoveryv1.AddressTypeFQDN {
				continue
			}
			ip, err := netip.ParseAddr(a)
			if err != nil || (es.AddressType == discoveryv1.AddressTypeIPv4) != ip.Is4() {
				errs = append(errs, fmt.Errorf("endpoints[%d].addresses[%d]: %q is not an %s address", i, j, a, es.AddressType))
			}
		}
	}
	return errors.Join(errs...)
}

func validatePod(p *corev1.Pod) error {
	if ip := p.Status.PodIP; ip != "" {
		if _, err := netip.ParseAddr(ip); err != nil {
			return fmt.Errorf("status.podIP: %q is not an IP address", ip)
		}
	}
	return nil
}

// FileSource is the local-mode source: a YAML file, watched for changes. A change that does not
// parse is logged (file, document, field) and the last good State keeps serving.
type FileSource struct {
	Path   string
	Logger *slog.Logger
	// Quiet is how long the file must stay unchanged before it is read again (editors write in
	// several steps). Zero means 100 ms.
	Quiet time.Duration
}

// Run loads the file (an error here is returned: a bad file at startup is a startup problem), then
// watches it and publishes each new, different State. The watch is on the file's directory (editors
// and Kubernetes ConfigMap mounts replace the file by renaming, or swap the mount's ..data link), but
// only events that name the file or the mount's links lead to a read, and a content already read is
// not parsed again: a rejected file is logged once per content, and documents of kinds Weft does not
// read are warned about once per content. Only Run's goroutine touches its state.
func (f *FileSource) Run(ctx context.Context, publish func(*State)) error {
	log := f.Logger
	if log == nil {
		log = slog.Default()
	}
	quiet := f.Quiet
	if quiet <= 0 {
		quiet = 100 * time.Millisecond
	}
	w, err := fsnotify.NewWatcher()
	if err != nil {
		return fmt.Errorf("watching %s: %w", f.Path, err)
	}
	defer w.Close()
	if err := w.Add(filepath.Dir(f.Path)); err != nil {
		return fmt.Errorf("watching %s: %w", f.Path, err)
	}
	data, err := os.ReadFile(f.Path)
	if err != nil {
		return fmt.Errorf("reading discovery file: %w", err)
	}
	last, ignored, err := parseFile(f.Path, data)
	if err != nil {
		return err
	}
	warnIgnored(log, f.Path, ignored)
	WarnInvalidPolicies(log, last, nil)
	read := sha256.Sum256(data) // the content last read, good or not
	publish(last)

	timer := time.NewTimer(time.Hour)
	timer.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case err, ok := <-w.Errors:
			if !ok {
				return nil
			}
			log.Warn("watching discovery file", "file", f.Path, "error", err)
		case ev, ok := <-w.Events:
			if !ok {
				return nil
			}
			if concernsFile(f.Path, ev.Name) {
				timer.Reset(quiet)
			}
		case <-timer.C:
			data, err := os.ReadFile(f.Path)
			if err != nil {
				if sum := sha256.Sum256(nil); sum != read {
					read = sum
					log.Error("discovery file unreadable; still serving the last good one", "error", err)
				}
				continue
			}
			if sha256.Sum256(data) == read {
				continue
			}
			read = sha256.Sum256(data)
			s, ignored, err := parseFile(f.Path, data)
			if err != nil {
				log.Error("discovery file rejected; still serving the last good one", "error", err)
				continue
			}
			warnIgnored(log, f.Path, ignored)
			if reflect.DeepEqual(s, last) {
				continue
			}
			WarnInvalidPolicies(log, s, last)
			last = s
			log.Info("discovery file reloaded", "file", f.Path, "services", len(s.Services), "pods", len(s.Pods))
			publish(s)
		}
	}
}

// concernsFile reports whether a change to name (in the watched directory) may have changed the file
// at path: the file itself, or a ConfigMap mount's "..data" links behind it.
func concernsFile(path, name string) bool {
	return filepath.Clean(name) == filepath.Clean(path) || strings.HasPrefix(filepath.Base(name), "..")
}

func warnIgnored(log *slog.Logger, path string, ignored []string) {
	if len(ignored) > 0 {
		log.Warn("discovery file: documents of kinds Weft does not read (it reads Namespace, Service, EndpointSlice, Pod, AuthorizationPolicy) are ignored",
			"file", path, "ignored", strings.Join(ignored, ", "))
	}
}
