package inject

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"mime"
	"net/http"

	admissionv1 "k8s.io/api/admission/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// WebhookPath is where the injector is served (the chart's MutatingWebhookConfiguration calls it).
const WebhookPath = "/inject"

// MaxRequestBytes caps an AdmissionReview body: a Pod is at most 1.5 MiB in etcd, and a review of a
// CREATE carries it once.
const MaxRequestBytes = 4 << 20

// Webhook is the mutating admission webhook: it answers AdmissionReview v1 for Pod CREATE with the
// JSON patch of Inject. It never rejects a Pod: a Pod it cannot or must not mesh (a bad annotation, a
// namespace it cannot read, a Pod it cannot decode) is admitted unchanged with a warning saying why,
// and logged.
type Webhook struct {
	// Config is the injector configuration for a request (weft-control: --injector-config with its
	// CA's current trust anchors).
	Config func() Config
	// Namespace returns the annotations of a namespace (weft-control: an informer's lister, then the
	// API). nil: no namespace annotations.
	Namespace func(ctx context.Context, name string) (map[string]string, error)
	// Report, when set, hears of each Pod admitted without the proxy because of a problem; weft-control
	// records it as an Event on the Pod's owner. Never called for dry-run requests.
	Report func(ctx context.Context, pod *corev1.Pod, namespace, problem string)
	// Log (slog.Default() when nil).
	Log *slog.Logger
}

func (w *Webhook) log() *slog.Logger {
	if w.Log != nil {
		return w.Log
	}
	return slog.Default()
}

func (w *Webhook) ServeHTTP(rw http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodPost {
		rw.Header().Set("Allow", http.MethodPost)
		http.Error(rw, "POST an AdmissionReview", http.StatusMethodNotAllowed)
		return
	}
	if mt, _, err := mime.ParseMediaType(r.Header.Get("Content-Type")); err != nil || mt != "application/json" {
		http.Error(rw, "want Content-Type: application/json", http.StatusUnsupportedMediaType)
		return
	}
	body, err := io.ReadAll(http.MaxBytesReader(rw, r.Body, MaxRequestBytes))
	if err != nil {
		var tooBig *http.MaxBytesError
		if errors.As(err, &tooBig) {
			w.log().Warn("injector: AdmissionReview too large", "limit_bytes", MaxRequestBytes)
			http.Error(rw, fmt.Sprintf("AdmissionReview larger than %d bytes", MaxRequestBytes), http.StatusRequestEntityTooLarge)
			return
		}
		http.Error(rw, "reading the body: "+err.Error(), http.StatusBadRequest)
		return
	}
	var review admissionv1.AdmissionReview
	if err := json.Unmarshal(body, &review); err != nil || review.Request == nil {
		if err == nil {
			err = errors.New("no request")
		}
		http.Error(rw, "not an AdmissionReview v1: "+err.Error(), http.StatusBadRequest)
		return
	}
	resp := w.Review(r.Context(), review.Request)
	out := admissionv1.AdmissionReview{
		TypeMeta: metav1.TypeMeta{APIVersion: "admission.k8s.io/v1", Kind: "AdmissionReview"},
		Response: resp,
	}
	rw.Header().Set("Content-Type", "application/json")
	if err := json.NewEncoder(rw).Encode(out); err != nil {
		w.log().Warn("injector: writing the response", "err", err)
	}
}

// Review answers one admission request: always allowed, with the patch when the Pod is meshed.
func (w *Webhook) Review(ctx context.Context, req *admissionv1.AdmissionRequest) *admissionv1.AdmissionResponse {
	resp := &admissionv1.AdmissionResponse{UID: req.UID, Allowed: true}
	if req.Kind.Kind != "Pod" || req.Kind.Group != "" || req.Operation != admissionv1.Create || req.SubResource != "" {
		return resp
	}
	var pod corev1.Pod
	if err := json.Unmarshal(req.Object.Raw, &pod); err != nil {
		return w.problem(ctx, resp, req, &pod, fmt.Sprintf("the Pod could not be decoded (%v)", err))
	}
	var nsAnn map[string]string
	if w.Namespace != nil {
		var err error
		if nsAnn, err = w.Namespace(ctx, req.Namespace); err != nil {
			// The Pod's own weft.io/inject still applies.
			w.log().Warn("injector: reading the namespace", "namespace", req.Namespace, "err", err)
			resp.Warnings = append(resp.Warnings, fmt.Sprintf("weft: namespace %s could not be read (%v): only the Pod's annotations apply", req.Namespace, err))
		}
	}
	ops, res, err := Patch(&pod, nsAnn, w.Config())
	if err != nil {
		return w.problem(ctx, resp, req, &pod, err.Error())
	}
	if res.Injected && pod.Spec.ServiceAccountName == "" {
		// The ServiceAccount admission plugin, which runs before webhooks, always sets it; without it
		// the projected token would make the Pod invalid.
		return w.problem(ctx, resp, req, &pod, "the Pod has no serviceAccountName (is the ServiceAccount admission plugin off?): the proxy needs a ServiceAccount token")
	}
	if !res.Injected {
		w.log().Debug("injector: not injected", "namespace", req.Namespace, "pod", podName(&pod), "reason", res.Reason)
		return resp
	}
	patch, err := json.Marshal(ops)
	if err != nil {
		return w.problem(ctx, resp, req, &pod, fmt.Sprintf("encoding the patch: %v", err))
	}
	resp.Patch = patch
	resp.PatchType = ptrTo(admissionv1.PatchTypeJSONPatch)
	w.log().Info("injector: injected", "namespace", req.Namespace, "pod", podName(&pod), "dry_run", req.DryRun != nil && *req.DryRun)
	return resp
}

// problem admits the Pod unchanged and says why: a warning for whoever created it, a log line, and the
// Report hook.
func (w *Webhook) problem(ctx context.Context, resp *admissionv1.AdmissionResponse, req *admissionv1.AdmissionRequest, pod *corev1.Pod, problem string) *admissionv1.AdmissionResponse {
	resp.Warnings = append(resp.Warnings, "weft: the proxy was not injected: "+problem)
	w.log().Warn("injector: Pod admitted without the proxy", "namespace", req.Namespace, "pod", podName(pod), "problem", problem)
	if w.Report != nil && (req.DryRun == nil || !*req.DryRun) {
		w.Report(ctx, pod, req.Namespace, problem)
	}
	return resp
}

// podName names a Pod in logs: at admission a Pod made by a controller has only its generateName.
func podName(pod *corev1.Pod) string {
	if pod.Name != "" {
		return pod.Name
	}
	if pod.GenerateName != "" {
		return pod.GenerateName + "*"
	}
	return "(unnamed)"
}

func ptrTo[T any](v T) *T { return &v }
