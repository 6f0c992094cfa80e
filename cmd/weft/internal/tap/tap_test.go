package tap

import (
	"bytes"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"google.golang.org/protobuf/testing/protocmp"
	"google.golang.org/protobuf/types/known/durationpb"

	tapv1 "github.com/weftmesh/weft/proto/weft/tap/v1"
)

func TestParseTarget(t *testing.T) {
	for _, tc := range []struct {
		arg, ns string
		want    *tapv1.Target
		err     string
	}{
		{arg: "deploy/web", ns: "shop", want: &tapv1.Target{Namespace: "shop", Kind: tapv1.Target_KIND_DEPLOYMENT, Name: "web"}},
		{arg: "deployment/web", ns: "shop", want: &tapv1.Target{Namespace: "shop", Kind: tapv1.Target_KIND_DEPLOYMENT, Name: "web"}},
		{arg: "po/web-0", ns: "shop", want: &tapv1.Target{Namespace: "shop", Kind: tapv1.Target_KIND_POD, Name: "web-0"}},
		{arg: "ns/demo", ns: "default", want: &tapv1.Target{Namespace: "demo", Kind: tapv1.Target_KIND_NAMESPACE}},
		{arg: "svc/web", err: `target "svc/web": unknown kind "svc" (tap takes deploy, pod or ns)`},
		{arg: "web", err: `target "web": want deploy/NAME, pod/NAME or ns/NAME`},
		{arg: "deploy/", err: `target "deploy/": want deploy/NAME, pod/NAME or ns/NAME`},
		{arg: "deploy/a/b", err: `target "deploy/a/b": want deploy/NAME, pod/NAME or ns/NAME`},
	} {
		got, err := ParseTarget(tc.arg, tc.ns)
		if tc.err != "" {
			if err == nil || err.Error() != tc.err {
				t.Errorf("ParseTarget(%q): %v, want %q", tc.arg, err, tc.err)
			}
			continue
		}
		if err != nil {
			t.Fatalf("ParseTarget(%q): %v", tc.arg, err)
		}
		if d := cmp.Diff(tc.want, got, protocmp.Transform()); d != "" {
			t.Errorf("ParseTarget(%q) (-want +got):\n%s", tc.arg, d)
		}
	}
}

func u32(v uint32) *uint32 { return &v }
func i64(v int64) *int64   { return &v }

func event(dir tapv1.TapEvent_Direction, proxy, src, dst, method, path string, status uint32, lat time.Duration) *tapv1.TapEvent {
	return &tapv1.TapEvent{Proxy: proxy, Direction: dir, Source: src, Destination: dst, Tls: true, Id: 7,
		ClientId: "spiffe://cluster.local/ns/demo/sa/web", ServerId: "spiffe://cluster.local/ns/demo/sa/books",
		Request:  &tapv1.Request{Method: method, Scheme: "http", Authority: "books.demo.svc.cluster.local:8080", Path: path},
		Response: &tapv1.Response{Status: status, ContentLength: i64(29)}, Latency: durationpb.New(lat)}
}

func TestPrint(t *testing.T) {
	in := event(tapv1.TapEvent_DIRECTION_INBOUND, "books-0.demo", "10.0.0.2:4000", "10.0.0.3:8080", "GET", "/books/1", 200, 1500*time.Microsecond)
	grpcEv := event(tapv1.TapEvent_DIRECTION_OUTBOUND, "web-0.demo", "127.0.0.1:5000", "authors.demo.svc.cluster.local:9090", "POST", "/a.B/C", 200, 900*time.Microsecond)
	grpcEv.Response.GrpcStatus, grpcEv.Response.ContentLength = u32(14), nil
	for _, tc := range []struct {
		name   string
		format Format
		r      *tapv1.ObserveResponse
		out    string
		notes  string
	}{
		{"lines", "", &tapv1.ObserveResponse{Event: in},
			"req id=books-0:7 proxy=in src=10.0.0.2:4000 dst=10.0.0.3:8080 tls=true :method=GET :authority=books.demo.svc.cluster.local:8080 :path=/books/1\n" +
				"rsp id=books-0:7 proxy=in src=10.0.0.2:4000 dst=10.0.0.3:8080 tls=true :status=200 latency=1500µs\n" +
				"end id=books-0:7 proxy=in src=10.0.0.2:4000 dst=10.0.0.3:8080 tls=true duration=1500µs response-length=29B\n", ""},
		{"grpc", "", &tapv1.ObserveResponse{Event: grpcEv, Dropped: 3},
			"req id=web-0:7 proxy=out src=127.0.0.1:5000 dst=authors.demo.svc.cluster.local:9090 tls=true :method=POST :authority=books.demo.svc.cluster.local:8080 :path=/a.B/C\n" +
				"rsp id=web-0:7 proxy=out src=127.0.0.1:5000 dst=authors.demo.svc.cluster.local:9090 tls=true :status=200 latency=900µs\n" +
				"end id=web-0:7 proxy=out src=127.0.0.1:5000 dst=authors.demo.svc.cluster.local:9090 tls=true grpc-status=Unavailable duration=900µs\n",
			"note: 3 requests not shown (over --max-rps, or read too slowly)\n"},
		{"wide", "wide", &tapv1.ObserveResponse{Event: in},
			"req id=books-0:7 proxy=in src=10.0.0.2:4000 dst=10.0.0.3:8080 tls=true pod=books-0.demo client_id=spiffe://cluster.local/ns/demo/sa/web server_id=spiffe://cluster.local/ns/demo/sa/books :method=GET :authority=books.demo.svc.cluster.local:8080 :path=/books/1\n" +
				"rsp id=books-0:7 proxy=in src=10.0.0.2:4000 dst=10.0.0.3:8080 tls=true pod=books-0.demo client_id=spiffe://cluster.local/ns/demo/sa/web server_id=spiffe://cluster.local/ns/demo/sa/books :status=200 latency=1500µs\n" +
				"end id=books-0:7 proxy=in src=10.0.0.2:4000 dst=10.0.0.3:8080 tls=true pod=books-0.demo client_id=spiffe://cluster.local/ns/demo/sa/web server_id=spiffe://cluster.local/ns/demo/sa/books duration=1500µs response-length=29B\n", ""},
		{"notice", "", &tapv1.ObserveResponse{Notice: "pod web-1: connection refused"}, "", "note: pod web-1: connection refused\n"},
	} {
		var out, notes bytes.Buffer
		Print(&out, &notes, tc.format, tc.r)
		if d := cmp.Diff(tc.out, out.String()); d != "" {
			t.Errorf("%s: output (-want +got):\n%s", tc.name, d)
		}
		if d := cmp.Diff(tc.notes, notes.String()); d != "" {
			t.Errorf("%s: notes (-want +got):\n%s", tc.name, d)
		}
	}
	var out bytes.Buffer
	Print(&out, &out, "json", &tapv1.ObserveResponse{Event: in})
	if s := out.String(); !strings.Contains(s, `"path":"/books/1"`) || strings.Count(s, "\n") != 1 {
		t.Errorf("-o json: %q, want one line with the path", s)
	}
}

func TestTopAggregates(t *testing.T) {
	top := NewTop()
	add := func(ev *tapv1.TapEvent) { top.Add(&tapv1.ObserveResponse{Event: ev}) }
	in := tapv1.TapEvent_DIRECTION_INBOUND
	out := tapv1.TapEvent_DIRECTION_OUTBOUND
	add(event(in, "books-0.demo", "10.0.0.2:1", "10.0.0.3:8080", "GET", "/a", 200, 3*time.Millisecond))
	add(event(in, "books-0.demo", "10.0.0.2:2", "10.0.0.3:8080", "GET", "/a", 500, 1*time.Millisecond))
	add(event(in, "books-0.demo", "10.0.0.2:3", "10.0.0.3:8080", "GET", "/a", 200, 2*time.Millisecond))
	add(event(out, "books-0.demo", "10.0.0.3:9", "db.demo.svc.cluster.local:5432", "POST", "/q", 200, 5*time.Millisecond))
	g := event(out, "books-0.demo", "10.0.0.3:9", "db.demo.svc.cluster.local:5432", "POST", "/q", 200, 4*time.Millisecond)
	g.Response.GrpcStatus = u32(2)
	add(g)
	top.Add(&tapv1.ObserveResponse{Dropped: 4})
	want := []Row{
		{Source: "web.demo", Destination: "books-0", Method: "GET", Path: "/a", Count: 3, Successes: 2, Best: time.Millisecond, Worst: 3 * time.Millisecond, Last: 2 * time.Millisecond},
		{Source: "books-0", Destination: "db.demo.svc.cluster.local:5432", Method: "POST", Path: "/q", Count: 2, Successes: 1, Best: 4 * time.Millisecond, Worst: 5 * time.Millisecond, Last: 4 * time.Millisecond},
	}
	if d := cmp.Diff(want, top.Rows()); d != "" {
		t.Fatalf("rows (-want +got):\n%s", d)
	}
	var b bytes.Buffer
	top.Render(&b, "weft top deploy/books -n demo", 0)
	wantScreen := `weft top deploy/books -n demo   (q quits)
note: 4 requests not counted (over --max-rps)

SOURCE    DESTINATION                     METHOD  PATH  COUNT  BEST   WORST  LAST   SUCCESS RATE
web.demo  books-0                         GET     /a    3      1.0ms  3.0ms  2.0ms  66.67%
books-0   db.demo.svc.cluster.local:5432  POST    /q    2      4.0ms  5.0ms  4.0ms  50.00%
`
	if d := cmp.Diff(wantScreen, b.String()); d != "" {
		t.Errorf("screen (-want +got):\n%s", d)
	}
	b.Reset()
	top.Render(&b, "t", 5) // room for the title, note, blank line, header and one row
	if n := strings.Count(b.String(), "\n"); n != 5 {
		t.Errorf("a 5-line screen got %d lines:\n%s", n, b.String())
	}
}
