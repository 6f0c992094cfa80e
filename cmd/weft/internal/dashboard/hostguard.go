package dashboard

import (
	"net"
	"net/http"
	"net/url"
	"strings"
)

// HostGuard lets a request through only when its Host (and, from a browser, its Origin) names one of
// hosts, whatever the port: the dashboard answers with the user's own Prometheus and tap rights, so a
// web page on another site must not reach it through DNS rebinding (a name of its own resolving to
// 127.0.0.1) or read it cross-origin. Linkerd's dashboard checks its Host the same way
// (-enforced-host). hosts are lower-case host names or IP addresses, without ports.
func HostGuard(h http.Handler, hosts ...string) http.Handler {
	allowed := map[string]bool{}
	for _, x := range hosts {
		allowed[strings.ToLower(strings.Trim(x, "[]"))] = true
	}
	ok := func(hostport string) bool {
		host := hostport
		if hh, _, err := net.SplitHostPort(hostport); err == nil {
			host = hh
		}
		return allowed[strings.ToLower(strings.Trim(host, "[]"))]
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !ok(r.Host) {
			http.Error(w, "weft dashboard: host "+r.Host+" is not allowed; open it as http://127.0.0.1 or localhost (or start it with --addr naming this host)", http.StatusForbidden)
			return
		}
		if o := r.Header.Get("Origin"); o != "" {
			u, err := url.Parse(o)
			if err != nil || !ok(u.Host) {
				http.Error(w, "weft dashboard: cross-origin request from "+o+" refused", http.StatusForbidden)
				return
			}
		}
		h.ServeHTTP(w, r)
	})
}
