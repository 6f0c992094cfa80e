package demo

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/url"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	testgrpc "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/grpc/status"
)

// The apps are plain servers that know nothing of the mesh: they listen on their pod's "localhost"
// (the app IP) and send their outbound calls to the pod's weft-proxy, HTTP through http_proxy and
// gRPC to the same proxy port with the Service as the authority, as apps with http_proxy set do.

// apps runs the three demo apps and the traffic generator in this process.
type apps struct {
	layout   Layout
	failRate float64
	servers  []interface{ Close() error }
	grpcSrv  *grpc.Server
	conn     *grpc.ClientConn
	wg       sync.WaitGroup
}

func (a *apps) start(failRate float64) error {
	a.failRate = failRate
	web, books, authors := a.layout.Pod("web"), a.layout.Pod("books"), a.layout.Pod("authors")

	// books: HTTP, fails failRate of its requests.
	booksMux := http.NewServeMux()
	booksMux.HandleFunc("/books/", func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Query().Get("fail") == "1" || rand.Float64() < a.failRate { // ?fail=1: a test's designed failure
			http.Error(w, "books: the shelf collapsed", http.StatusInternalServerError)
			return
		}
		fmt.Fprintf(w, `{"id":%q,"title":"A Book"}`, r.URL.Path[len("/books/"):]) // #nosec G705 -- a JSON string (%q) in a JSON response of the demo's app
	})
	if err := a.serveHTTP(books, booksMux); err != nil {
		return err
	}

	// authors: gRPC (the interop TestService's UnaryCall stands for "get author").
	l, err := net.Listen("tcp", authors.AppAddr())
	if err != nil {
		return fmt.Errorf("authors app on %s: %w", authors.AppAddr(), err)
	}
	a.grpcSrv = grpc.NewServer()
	testgrpc.RegisterTestServiceServer(a.grpcSrv, authorsServer{})
	a.wg.Add(1)
	go func() { defer a.wg.Done(); _ = a.grpcSrv.Serve(l) }()

	// web: calls books over HTTP and authors over gRPC through its proxy.
	proxyURL := &url.URL{Scheme: "http", Host: web.HTTPProxyAddr()}
	client := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{Proxy: http.ProxyURL(proxyURL), MaxIdleConnsPerHost: 16}}
	a.conn, err = grpc.NewClient("passthrough:///"+web.HTTPProxyAddr(), grpc.WithTransportCredentials(insecure.NewCredentials()), grpc.WithAuthority(authors.Authority()))
	if err != nil {
		return fmt.Errorf("web's gRPC client: %w", err)
	}
	authorsClient := testgrpc.NewTestServiceClient(a.conn)
	booksURL := "http://" + books.Authority() + "/books/"
	webMux := http.NewServeMux()
	webMux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		id := fmt.Sprint(rand.IntN(1000))
		resp, err := client.Get(booksURL + id)
		if err != nil {
			http.Error(w, "web: books: "+err.Error(), http.StatusBadGateway)
			return
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			http.Error(w, fmt.Sprintf("web: books said %d", resp.StatusCode), http.StatusBadGateway)
			return
		}
		ctx, cancel := context.WithTimeout(r.Context(), 5*time.Second)
		defer cancel()
		author, err := authorsClient.UnaryCall(ctx, &testgrpc.SimpleRequest{Payload: &testgrpc.Payload{Body: []byte(id)}})
		if err != nil {
			http.Error(w, "web: authors: "+err.Error(), http.StatusBadGateway)
			return
		}
		fmt.Fprintf(w, "<html><body>%s by %s</body></html>\n", body, author.GetPayload().GetBody())
	})
	return a.serveHTTP(web, webMux)
}

func (a *apps) serveHTTP(p Pod, h http.Handler) error {
	l, err := net.Listen("tcp", p.AppAddr())
	if err != nil {
		return fmt.Errorf("%s app on %s: %w", p.App, p.AppAddr(), err)
	}
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 5 * time.Second}
	a.servers = append(a.servers, srv)
	a.wg.Add(1)
	go func() {
		defer a.wg.Done()
		if err := srv.Serve(l); err != nil && !errors.Is(err, http.ErrServerClosed) {
			_ = err // the listener is ours; nothing else closes it
		}
	}()
	return nil
}

func (a *apps) stop() {
	for _, s := range a.servers {
		s.Close()
	}
	if a.grpcSrv != nil {
		a.grpcSrv.Stop()
	}
	if a.conn != nil {
		a.conn.Close()
	}
	a.wg.Wait()
}

type authorsServer struct {
	testgrpc.UnimplementedTestServiceServer
}

var authorNames = []string{"Ursula K. Le Guin", "Italo Calvino", "Jorge Luis Borges", "Octavia E. Butler", "Stanisław Lem"}

func (authorsServer) UnaryCall(_ context.Context, req *testgrpc.SimpleRequest) (*testgrpc.SimpleResponse, error) {
	if len(req.GetPayload().GetBody()) == 0 {
		return nil, status.Error(codes.InvalidArgument, "which book?")
	}
	name := authorNames[int(req.GetPayload().GetBody()[0])%len(authorNames)]
	return &testgrpc.SimpleResponse{Payload: &testgrpc.Payload{Body: []byte(name)}}, nil
}

// generate sends rps requests a second to web through the traffic pod's proxy until ctx ends.
func generate(ctx context.Context, l Layout, rps int) {
	tp, web := l.Pod("traffic"), l.Pod("web")
	proxyURL := &url.URL{Scheme: "http", Host: tp.HTTPProxyAddr()}
	tr := &http.Transport{Proxy: http.ProxyURL(proxyURL), MaxIdleConnsPerHost: 64}
	defer tr.CloseIdleConnections()
	client := &http.Client{Timeout: 10 * time.Second, Transport: tr}
	target := "http://" + web.Authority() + "/"
	tick := time.NewTicker(time.Second / time.Duration(max(rps, 1)))
	defer tick.Stop()
	var wg sync.WaitGroup
	defer wg.Wait()
	sem := make(chan struct{}, 64) // bounded: a slow mesh slows the generator rather than piling up
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		select {
		case sem <- struct{}{}:
		default:
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			// Not cancelled with ctx: stopping the generator lets requests in flight finish (within the
			// client's timeout), so the last figures count no request the demo itself aborted.
			req, _ := http.NewRequestWithContext(context.WithoutCancel(ctx), http.MethodGet, target, nil)
			resp, err := client.Do(req)
			if err != nil {
				return
			}
			_, _ = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
		}()
	}
}
