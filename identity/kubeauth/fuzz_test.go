package kubeauth

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"testing"

	authenticationv1 "k8s.io/api/authentication/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"github.com/weftmesh/weft/identity"
)

// FuzzTokenReview is the token validator against whatever the apiserver's TokenReview answers:
// authenticated or not, any audiences, any user name and error. Authenticate never panics; it refuses
// with identity.ErrUnauthenticated unless the review says authenticated, for our audience, of a user
// system:serviceaccount:<namespace>:<name> whose parts make a valid SPIFFE ID, and then the caller is
// exactly that namespace and name (and the review's UID).
func FuzzTokenReview(f *testing.F) {
	f.Add(true, "system:serviceaccount:shop:web", "uid-1", identity.Audience, "")
	f.Add(true, "system:serviceaccount:shop:web", "uid-1", "api,"+identity.Audience, "")
	f.Add(true, "system:serviceaccount:shop:web", "", "api", "")
	f.Add(false, "system:serviceaccount:shop:web", "", identity.Audience, "token expired")
	f.Add(true, "system:serviceaccount:shop:web:extra", "", identity.Audience, "")
	f.Add(true, "system:serviceaccount:Shop:web", "", identity.Audience, "")
	f.Add(true, "system:serviceaccount::web", "", identity.Audience, "")
	f.Add(true, "system:node:n1", "", identity.Audience, "")
	f.Add(true, "admin", "", identity.Audience, "")
	f.Add(true, "system:serviceaccount:shop:web/../db", "", identity.Audience, "")

	var mu sync.Mutex
	var answer authenticationv1.TokenReviewStatus
	api := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var tr authenticationv1.TokenReview
		if err := json.NewDecoder(r.Body).Decode(&tr); err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		mu.Lock()
		tr.Status = answer
		mu.Unlock()
		tr.APIVersion, tr.Kind = "authentication.k8s.io/v1", "TokenReview"
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusCreated)
		_ = json.NewEncoder(w).Encode(&tr)
	}))
	f.Cleanup(api.Close)
	client, err := kubernetes.NewForConfig(&rest.Config{Host: api.URL, QPS: 1e6, Burst: 1e6,
		ContentConfig: rest.ContentConfig{ContentType: "application/json", AcceptContentTypes: "application/json"}})
	if err != nil {
		f.Fatal(err)
	}
	r := TokenReviewer{Client: client}
	answer = authenticationv1.TokenReviewStatus{Authenticated: true, Audiences: []string{identity.Audience},
		User: authenticationv1.UserInfo{Username: "system:serviceaccount:shop:web", UID: "u"}}
	if c, err := r.Authenticate(context.Background(), "a-token"); err != nil || c != (identity.Caller{Namespace: "shop", ServiceAccount: "web", UID: "u"}) {
		f.Fatalf("the fake apiserver's good review: %+v, %v", c, err)
	}

	f.Fuzz(func(t *testing.T, authenticated bool, user, uid, audiences, msg string) {
		// A review arrives as JSON: its strings are UTF-8 (the encoder replaces what is not).
		user, uid, audiences, msg = strings.ToValidUTF8(user, "\uFFFD"), strings.ToValidUTF8(uid, "\uFFFD"),
			strings.ToValidUTF8(audiences, "\uFFFD"), strings.ToValidUTF8(msg, "\uFFFD")
		st := authenticationv1.TokenReviewStatus{Authenticated: authenticated, Error: msg,
			User: authenticationv1.UserInfo{Username: user, UID: uid}}
		if audiences != "" {
			st.Audiences = strings.Split(audiences, ",")
		}
		mu.Lock()
		answer = st
		mu.Unlock()
		caller, err := r.Authenticate(context.Background(), "a-token")
		if err != nil {
			if !errors.Is(err, identity.ErrUnauthenticated) && !strings.HasPrefix(err.Error(), "TokenReview: ") {
				t.Fatalf("refused with %v, which is neither ErrUnauthenticated nor a TokenReview call error", err)
			}
			return
		}
		if !authenticated || !slices.Contains(st.Audiences, identity.Audience) {
			t.Fatalf("accepted a review with authenticated=%v audiences=%q", authenticated, st.Audiences)
		}
		if want := "system:serviceaccount:" + caller.Namespace + ":" + caller.ServiceAccount; user != want || caller.UID != uid {
			t.Fatalf("user %q (uid %q) became caller %+v", user, uid, caller)
		}
		if _, err := identity.NewID(identity.DefaultTrustDomain, caller.Namespace, caller.ServiceAccount); err != nil {
			t.Fatalf("accepted caller %+v, not a valid identity: %v", caller, err)
		}
	})
}
