package viz

import (
	"context"
	"time"
)

// ProxyJob is the Prometheus job that scrapes the proxies, in `weft demo --prometheus`'s config and in
// the chart's (weft install --viz).
const ProxyJob = "weft-proxy"

// ScrapedProxies counts the proxies Prometheus scrapes (job ProxyJob) and how many answered: zero
// targets means Prometheus has no data to give, whatever the query.
func ScrapedProxies(ctx context.Context, pq Querier, at time.Time) (targets, up int, err error) {
	if at.IsZero() {
		at = time.Now()
	}
	vec, err := query(ctx, pq, `count(up{job="`+ProxyJob+`"}) or vector(0)`, at)
	if err != nil {
		return 0, 0, err
	}
	if len(vec) > 0 {
		targets = int(vec[0].Value)
	}
	vec, err = query(ctx, pq, `count(up{job="`+ProxyJob+`"} == 1) or vector(0)`, at)
	if err != nil {
		return 0, 0, err
	}
	if len(vec) > 0 {
		up = int(vec[0].Value)
	}
	return targets, up, nil
}
