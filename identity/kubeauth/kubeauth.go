// Package kubeauth is the Kubernetes side of weft's CA, used by weft-control only: it checks
// ServiceAccount tokens with TokenReview, loads and watches the CA from a Secret, and records an Event on
// the ServiceAccount for each issued certificate. The sidecar never imports it (no client-go in pods).
package kubeauth

import (
	"context"
	"crypto/x509"
	"fmt"
	"slices"
	"time"

	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/kubernetes/scheme"
	typedcorev1 "k8s.io/client-go/kubernetes/typed/core/v1"
	"k8s.io/client-go/tools/record"

	"github.com/weftmesh/weft/identity"
)

// TokenReviewer is an identity.Authenticator backed by the apiserver's TokenReview API, for the
// audience identity.Audience. weft-control's ServiceAccount needs `create` on tokenreviews
// (authentication.k8s.io), as the system:auth-delegator ClusterRole grants.
type TokenReviewer struct {
	Client kubernetes.Interface
	// Audience the token must carry; identity.Audience when empty.
	Audience string
}

// Authenticate implements identity.Authenticator.
func (r TokenReviewer) Authenticate(ctx context.Context, token string) (identity.Caller, error) {
	aud := r.Audience
	if aud == "" {
		aud = identity.Audience
	}
	review, err := r.Client.AuthenticationV1().TokenReviews().Create(ctx, &authenticationv1.TokenReview{
		Spec: authenticationv1.TokenReviewSpec{Token: token, Audiences: []string{aud}},
	}, metav1.CreateOptions{})
	if err != nil {
		return identity.Caller{}, fmt.Errorf("TokenReview: %w", err)
	}
	st := review.Status
	if !st.Authenticated {
		msg := st.Error
		if msg == "" {
			msg = "not authenticated"
		}
		return identity.Caller{}, fmt.Errorf("%w: the apiserver says: %s (the token must be a projected ServiceAccount token with audience %s)", identity.ErrUnauthenticated, msg, aud)
	}
	if !slices.Contains(st.Audiences, aud) {
		return identity.Caller{}, fmt.Errorf("%w: token is not for audience %s (it is for %q)", identity.ErrUnauthenticated, aud, st.Audiences)
	}
	id, err := identity.ParseServiceAccountUser(identity.DefaultTrustDomain, st.User.Username)
	if err != nil {
		return identity.Caller{}, fmt.Errorf("%w: %v", identity.ErrUnauthenticated, err)
	}
	return identity.Caller{Namespace: id.Namespace, ServiceAccount: id.ServiceAccount, UID: st.User.UID}, nil
}

// EventRecorder is an identity.Recorder that records a Normal Event "CertificateIssued" on the
// ServiceAccount of each issued certificate. Events are sent in the background (client-go's
// broadcaster: rate-limited and aggregated per ServiceAccount), so Certify never waits for them.
type EventRecorder struct {
	rec         record.EventRecorder
	broadcaster record.EventBroadcaster
}

// NewEventRecorder starts sending events through client as component (e.g. "weft-control").
// weft-control needs `create` and `patch` on events. Stop it with Shutdown.
func NewEventRecorder(client kubernetes.Interface, component string) *EventRecorder {
	b := record.NewBroadcaster()
	b.StartRecordingToSink(&typedcorev1.EventSinkImpl{Interface: client.CoreV1().Events("")})
	return &EventRecorder{broadcaster: b, rec: b.NewRecorder(scheme.Scheme, corev1.EventSource{Component: component})}
}

// Issued implements identity.Recorder.
func (e *EventRecorder) Issued(c identity.Caller, id identity.ID, leaf *x509.Certificate) {
	ref := &corev1.ObjectReference{Kind: "ServiceAccount", APIVersion: "v1", Namespace: c.Namespace, Name: c.ServiceAccount, UID: typesUID(c.UID)}
	e.rec.Eventf(ref, corev1.EventTypeNormal, ReasonIssued, "issued certificate for %s, serial %s, valid until %s",
		id, leaf.SerialNumber.Text(16), leaf.NotAfter.UTC().Format(time.RFC3339))
}

// Shutdown stops sending events.
func (e *EventRecorder) Shutdown() { e.broadcaster.Shutdown() }

// ReasonIssued is the reason of the Event recorded for each issued certificate.
const ReasonIssued = "CertificateIssued"
