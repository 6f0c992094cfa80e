package proxy_test

import (
	"io"
	"net/http"
	"testing"
)

// BenchmarkHTTP1Hop is one keep-alive HTTP/1.1 GET through the outbound listener, against direct.
func BenchmarkHTTP1Hop(b *testing.B) {
	be := startBackend(b, "b", "127.0.0.1:0")
	svc := newService(b, echoFQDN, "127.0.0.70", be.addr)
	_, _ = mesh(b, svc)
	for _, tc := range []struct{ name, url string }{
		{"direct", "http://" + be.addr.String() + "/"},
		{"proxy", "http://" + svc.authority() + "/"},
	} {
		b.Run(tc.name, func(b *testing.B) {
			c := &http.Client{Transport: resolve(&http.Transport{MaxIdleConnsPerHost: 64}, svc)}
			b.ReportAllocs()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					resp, err := c.Get(tc.url)
					if err != nil {
						b.Error(err)
						return
					}
					_, _ = io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
				}
			})
		})
	}
}
