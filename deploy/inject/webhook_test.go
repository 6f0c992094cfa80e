package inject

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	jsonpatch "gopkg.in/evanphx/json-patch.v4"
	admissionv1 "k8s.io/api/admission/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
)

type reported struct{ namespace, problem string }

func testWebhook(t *testing.T, namespaces map[string]map[string]string, reports *[]reported) *Webhook {
	cfg := testConfig(t)
	return &Webhook{
		Config: func() Config { return cfg },
		Namespace: func(_ context.Context, name string) (map[string]string, error) {
			ann, ok := namespaces[name]
			if !ok {
				return nil, errors.New("namespaces \"" + name + "\" is forbidden")
			}
			return ann, nil
		},
		Report: func(_ context.Context, _ *corev1.Pod, ns, problem string) {
			*reports = append(*reports, reported{ns, problem})
		},
		Log: slog.New(slog.DiscardHandler),
	}
}

func reviewBody(t *testing.T, ns string, pod *corev1.Pod, dryRun bool) string {
	t.Helper()
	raw, err := json.Marshal(pod)
	if err != nil {
		t.Fatal(err)
	}
	b, err := json.Marshal(admissionv1.AdmissionReview{
		TypeMeta: metav1.TypeMeta{APIVersion: "admission.k8s.io/v1", Kind: "AdmissionReview"},
		Request: &admissionv1.AdmissionRequest{
			UID: "u-1", Kind: metav1.GroupVersionKind{Version: "v1", Kind: "Pod"}, Namespace: ns,
			Resource: metav1.GroupVersionResource{Version: "v1", Resource: "pods"}, Operation: admissionv1.Create,
			Object: runtime.RawExtension{Raw: raw}, DryRun: &dryRun,
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// TestWebhook: every answer is allowed with the request's UID; the Pod is patched only when it is to be
// meshed, and each problem is a warning (and a report, unless dry run) instead of a rejection.
func TestWebhook(t *testing.T) {
	namespaces := map[string]map[string]string{"shop": enabledNS, "plain": nil}
	noSA := appPod(nil)
	noSA.Spec.ServiceAccountName = ""
	for _, tc := range []struct {
		name        string
		ns          string
		pod         *corev1.Pod
		dryRun      bool
		wantPatch   bool
		wantWarning string
		wantReport  bool
	}{
		{name: "meshed namespace", ns: "shop", pod: appPod(nil), wantPatch: true},
		{name: "plain namespace", ns: "plain", pod: appPod(nil)},
		{name: "pod opts in", ns: "plain", pod: appPod(map[string]string{AnnotationInject: Enabled}), wantPatch: true},
		{name: "pod opts out", ns: "shop", pod: appPod(map[string]string{AnnotationInject: Disabled})},
		{name: "bad annotation", ns: "shop", pod: appPod(map[string]string{AnnotationSkipSubnets: "lan"}), wantWarning: "weft: the proxy was not injected: annotation config.weft.io/skip-subnets", wantReport: true},
		{name: "bad annotation dry run", ns: "shop", pod: appPod(map[string]string{AnnotationSkipSubnets: "lan"}), dryRun: true, wantWarning: "config.weft.io/skip-subnets"},
		{name: "namespace unreadable, pod opts in", ns: "secret", pod: appPod(map[string]string{AnnotationInject: Enabled}), wantPatch: true, wantWarning: "namespace secret could not be read"},
		{name: "no service account", ns: "shop", pod: noSA, wantWarning: "no serviceAccountName", wantReport: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var reports []reported
			wh := testWebhook(t, namespaces, &reports)
			rec := httptest.NewRecorder()
			req := httptest.NewRequest(http.MethodPost, WebhookPath, strings.NewReader(reviewBody(t, tc.ns, tc.pod, tc.dryRun)))
			req.Header.Set("Content-Type", "application/json")
			wh.ServeHTTP(rec, req)
			if rec.Code != http.StatusOK {
				t.Fatalf("status %d: %s", rec.Code, rec.Body)
			}
			var out admissionv1.AdmissionReview
			if err := json.Unmarshal(rec.Body.Bytes(), &out); err != nil {
				t.Fatal(err)
			}
			r := out.Response
			if out.APIVersion != "admission.k8s.io/v1" || out.Kind != "AdmissionReview" || r == nil || r.UID != "u-1" || !r.Allowed {
				t.Fatalf("answer %+v: want an allowed AdmissionReview v1 response with the request's UID", out)
			}
			if got := r.Patch != nil; got != tc.wantPatch {
				t.Errorf("patched %v, want %v", got, tc.wantPatch)
			}
			if r.Patch != nil {
				if r.PatchType == nil || *r.PatchType != admissionv1.PatchTypeJSONPatch {
					t.Errorf("patch type %v", r.PatchType)
				}
				p, err := jsonpatch.DecodePatch(r.Patch)
				if err != nil {
					t.Fatal(err)
				}
				raw, _ := json.Marshal(tc.pod)
				patched, err := p.Apply(raw)
				if err != nil {
					t.Fatal(err)
				}
				var got corev1.Pod
				if err := json.Unmarshal(patched, &got); err != nil || !HasProxy(&got.Spec) {
					t.Errorf("the patched Pod has no proxy (%v)", err)
				}
			}
			warnings := strings.Join(r.Warnings, "\n")
			if tc.wantWarning == "" && warnings != "" || !strings.Contains(warnings, tc.wantWarning) {
				t.Errorf("warnings %q, want %q", warnings, tc.wantWarning)
			}
			if got := len(reports) > 0; got != tc.wantReport {
				t.Errorf("reports %v, want a report: %v", reports, tc.wantReport)
			}
		})
	}
}

// TestWebhookHTTP: what is not an AdmissionReview is refused at the HTTP level (the apiserver then
// applies failurePolicy Ignore); a review of anything but a Pod CREATE is allowed untouched.
func TestWebhookHTTP(t *testing.T) {
	var reports []reported
	wh := testWebhook(t, nil, &reports)
	srv := httptest.NewServer(wh)
	defer srv.Close()
	post := func(ct, body string) (int, string) {
		resp, err := http.Post(srv.URL+WebhookPath, ct, strings.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	if resp, err := http.Get(srv.URL + WebhookPath); err != nil || resp.StatusCode != http.StatusMethodNotAllowed {
		t.Errorf("GET: %v %v", resp.Status, err)
	}
	if code, _ := post("text/plain", "{}"); code != http.StatusUnsupportedMediaType {
		t.Errorf("text/plain: %d", code)
	}
	if code, _ := post("application/json", "not json"); code != http.StatusBadRequest {
		t.Errorf("garbage: %d", code)
	}
	if code, _ := post("application/json", `{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview"}`); code != http.StatusBadRequest {
		t.Errorf("no request: %d", code)
	}
	if code, _ := post("application/json", `{"request":{"uid":"x","object":"`+strings.Repeat("a", MaxRequestBytes)+`"}}`); code != http.StatusRequestEntityTooLarge {
		t.Errorf("a body over %d bytes: %d", MaxRequestBytes, code)
	}
	code, body := post("application/json; charset=utf-8", `{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"uid":"s-1","kind":{"group":"","version":"v1","kind":"Service"},"operation":"CREATE","namespace":"shop","object":{}}}`)
	if code != http.StatusOK || !strings.Contains(body, `"uid":"s-1"`) || !strings.Contains(body, `"allowed":true`) || strings.Contains(body, "patch") {
		t.Errorf("a Service: %d %s", code, body)
	}
	code, body = post("application/json", `{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"uid":"p-1","kind":{"group":"","version":"v1","kind":"Pod"},"operation":"CREATE","namespace":"shop","object":{"spec":{"containers":"x"}}}}`)
	if code != http.StatusOK || !strings.Contains(body, `"allowed":true`) || !strings.Contains(body, "could not be decoded") {
		t.Errorf("an undecodable Pod: %d %s", code, body)
	}
}
