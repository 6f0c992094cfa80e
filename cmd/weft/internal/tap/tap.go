// Package tap is the client side of `weft tap` and `weft top`: it parses the target, reaches
// weft-control's Tap service (--control-addr), sends the caller's Kubernetes bearer token, and prints or
// aggregates the stream of requests.
package tap

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"strings"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protojson"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"

	tapv1 "github.com/weftmesh/weft/proto/weft/tap/v1"
)

// ParseTarget reads deploy/NAME, pod/NAME or ns/NAME (also deployment/, po/, namespace/). namespace
// is -n's value; ns/NAME is that namespace itself.
func ParseTarget(arg, namespace string) (*tapv1.Target, error) {
	kind, name, ok := strings.Cut(arg, "/")
	if !ok || name == "" || strings.Contains(name, "/") {
		return nil, fmt.Errorf("target %q: want deploy/NAME, pod/NAME or ns/NAME", arg)
	}
	t := &tapv1.Target{Namespace: namespace, Name: name}
	switch strings.ToLower(kind) {
	case "deploy", "deployment", "deployments", "deploy.apps", "deployment.apps":
		t.Kind = tapv1.Target_KIND_DEPLOYMENT
	case "pod", "pods", "po":
		t.Kind = tapv1.Target_KIND_POD
	case "ns", "namespace", "namespaces":
		t.Kind, t.Namespace, t.Name = tapv1.Target_KIND_NAMESPACE, name, ""
	default:
		return nil, fmt.Errorf("target %q: unknown kind %q (tap takes deploy, pod or ns)", arg, kind)
	}
	return t, nil
}

// Conn is how to reach weft-control's Tap service.
type Conn struct {
	// ControlAddr is weft-control's plaintext xDS address (host:port): 127.0.0.1:15010 is weft demo's
	// and, in a cluster, that of `kubectl -n weft port-forward deploy/weft-control 15010` (the port is
	// loopback in the pod).
	ControlAddr         string
	Kubeconfig, Context string
	// Token is the bearer token to send; empty: the kubeconfig's, if it has one (local mode needs none).
	Token string
}

// Dial returns a client connection to the Tap service and the outgoing context (with the token).
func (c Conn) Dial(ctx context.Context) (context.Context, *grpc.ClientConn, error) {
	token := c.Token
	if token == "" {
		if cfg, err := c.restConfig(); err == nil {
			token = bearerToken(cfg)
		}
	}
	cc, err := grpc.NewClient("passthrough:///"+c.ControlAddr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return nil, nil, fmt.Errorf("--control-addr %q: %w", c.ControlAddr, err)
	}
	if token != "" {
		ctx = metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+token)
	}
	return ctx, cc, nil
}

func (c Conn) restConfig() (*rest.Config, error) {
	rules := clientcmd.NewDefaultClientConfigLoadingRules()
	rules.ExplicitPath = c.Kubeconfig
	return clientcmd.NewNonInteractiveDeferredLoadingClientConfig(rules, &clientcmd.ConfigOverrides{CurrentContext: c.Context}).ClientConfig()
}

func bearerToken(cfg *rest.Config) string {
	if cfg.BearerToken != "" {
		return cfg.BearerToken
	}
	if cfg.BearerTokenFile != "" {
		if b, err := os.ReadFile(cfg.BearerTokenFile); err == nil {
			return strings.TrimSpace(string(b))
		}
	}
	return ""
}

// Observe calls Tap.Observe and hands each response to fn until the stream ends, ctx ends or fn
// fails. Errors are one line: the status's message.
func Observe(ctx context.Context, cc *grpc.ClientConn, req *tapv1.ObserveRequest, fn func(*tapv1.ObserveResponse) error) error {
	desc := &grpc.StreamDesc{StreamName: "Observe", ServerStreams: true}
	s, err := cc.NewStream(ctx, desc, tapv1.ObserveMethod)
	if err != nil {
		return statusLine(err)
	}
	if err := s.SendMsg(req); err != nil {
		return statusLine(err)
	}
	if err := s.CloseSend(); err != nil {
		return statusLine(err)
	}
	for {
		r := &tapv1.ObserveResponse{}
		if err := s.RecvMsg(r); err != nil {
			if err == io.EOF || ctx.Err() != nil {
				return nil
			}
			return statusLine(err)
		}
		if err := fn(r); err != nil {
			return err
		}
	}
}

func statusLine(err error) error {
	st, ok := status.FromError(err)
	if !ok {
		return err
	}
	if st.Code() == codes.Unavailable && strings.Contains(st.Message(), "connect") {
		return fmt.Errorf("cannot reach weft-control's Tap: %s (weft demo serves it on 127.0.0.1:15010; in a cluster run kubectl -n weft port-forward deploy/weft-control 15010; or give --control-addr)", st.Message())
	}
	return errors.New(st.Message())
}

// Format is -o: "" (Linkerd's lines), "wide" (and the identities and proxy) or "json" (one object per
// line).
type Format string

// CheckFormat validates -o.
func CheckFormat(f string) error {
	switch f {
	case "", "wide", "json":
		return nil
	}
	return fmt.Errorf("-o %q: want wide or json (or leave it out)", f)
}

// Print writes one response as Linkerd's tap does: req, rsp and end lines for an event; notes and drop
// counts go to notes.
func Print(w, notes io.Writer, f Format, r *tapv1.ObserveResponse) {
	if r.GetNotice() != "" {
		fmt.Fprintf(notes, "note: %s\n", r.GetNotice())
	}
	if n := r.GetDropped(); n > 0 {
		fmt.Fprintf(notes, "note: %d requests not shown (over --max-rps, or read too slowly)\n", n)
	}
	ev := r.GetEvent()
	if ev == nil {
		return
	}
	if f == "json" {
		b, _ := protojson.MarshalOptions{UseProtoNames: true}.Marshal(ev)
		fmt.Fprintf(w, "%s\n", b)
		return
	}
	dir := "out"
	if ev.GetDirection() == tapv1.TapEvent_DIRECTION_INBOUND {
		dir = "in"
	}
	pod, _, _ := strings.Cut(ev.GetProxy(), ".")
	common := fmt.Sprintf("id=%s:%d proxy=%s src=%s dst=%s tls=%t", pod, ev.GetId(), dir, ev.GetSource(), ev.GetDestination(), ev.GetTls())
	if f == "wide" {
		common += fmt.Sprintf(" pod=%s client_id=%s server_id=%s", ev.GetProxy(), orDash(ev.GetClientId()), orDash(ev.GetServerId()))
	}
	q, s := ev.GetRequest(), ev.GetResponse()
	fmt.Fprintf(w, "req %s :method=%s :authority=%s :path=%s\n", common, q.GetMethod(), q.GetAuthority(), q.GetPath())
	rsp := fmt.Sprintf("rsp %s :status=%d latency=%dµs", common, s.GetStatus(), ev.GetLatency().AsDuration().Microseconds())
	if s.GetWeftError() != "" {
		rsp += fmt.Sprintf(" weft-error=%q", s.GetWeftError())
	}
	fmt.Fprintln(w, rsp)
	end := "end " + common
	if s.GrpcStatus != nil {
		end += fmt.Sprintf(" grpc-status=%s", grpcCode(s.GetGrpcStatus()))
	}
	end += fmt.Sprintf(" duration=%dµs", ev.GetLatency().AsDuration().Microseconds())
	if s.ContentLength != nil {
		end += fmt.Sprintf(" response-length=%dB", s.GetContentLength())
	}
	fmt.Fprintln(w, end)
}

func grpcCode(c uint32) string {
	if c <= 16 {
		return codes.Code(c).String()
	}
	return fmt.Sprint(c)
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// shortID turns spiffe://td/ns/NS/sa/SA into SA.NS.
func shortID(id string) string {
	if rest, ok := strings.CutPrefix(id, "spiffe://"); ok {
		if p := strings.Split(rest, "/"); len(p) == 5 && p[1] == "ns" && p[3] == "sa" {
			return p[4] + "." + p[2]
		}
	}
	return id
}

// hostOf is an address without its port.
func hostOf(addr string) string {
	if ap, err := netip.ParseAddrPort(addr); err == nil {
		return ap.Addr().String()
	}
	return addr
}
