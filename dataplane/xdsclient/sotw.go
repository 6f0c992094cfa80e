package xdsclient

import (
	"context"
	"fmt"
	"maps"

	xp "github.com/weftmesh/weft/dataplane/internal/xdsproto"
)

// runSotW runs one state-of-the-world ADS stream.
func (c *Client) runSotW(ctx context.Context, st *state) (bool, error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stream := openSotW(ctx, c.ads)
	defer stream.close()
	node := c.opts.Node.proto()
	nonces := map[string]string{}
	send := func(req *xp.DiscoveryRequest) error {
		req.Node = node
		if err := stream.Send(req); err != nil {
			return fmt.Errorf("send request: %w", err)
		}
		return nil
	}
	for _, t := range typeOrder {
		req := &xp.DiscoveryRequest{TypeUrl: t, VersionInfo: st.versions[t]}
		if !wildcard(t) {
			req.ResourceNames = st.names(t)
			if len(req.ResourceNames) == 0 {
				continue
			}
		}
		if err := send(req); err != nil {
			return false, err
		}
	}
	c.setConnected(true, "sotw")
	got := false
	for {
		resp, err := stream.Recv()
		if err != nil {
			return got, fmt.Errorf("receive: %w", err)
		}
		got = true
		t := resp.GetTypeUrl()
		nonces[t] = resp.GetNonce()
		if _, known := st.resources[t]; !known {
			if err := send(&xp.DiscoveryRequest{TypeUrl: t, ResponseNonce: resp.GetNonce(),
				ErrorDetail: &xp.Status{Code: codeInvalidArgument, Message: fmt.Sprintf("weft-proxy does not subscribe to %q", t)}}); err != nil {
				return got, err
			}
			continue
		}
		var errs []error
		decoded := map[string]entry{}
		for _, a := range resp.GetResources() {
			name, v, err := decode(t, a)
			if err != nil {
				errs = append(errs, err)
				continue
			}
			decoded[name] = entry{version: resp.GetVersionInfo(), raw: a, value: v}
		}
		names := func() []string {
			if wildcard(t) {
				return nil
			}
			return st.names(t)
		}
		if len(errs) > 0 {
			detail := nackError(errs)
			c.log.Warn("NACK: keeping the last good config", "type", t, "version", resp.GetVersionInfo(), "error", detail)
			c.countAck(detail)
			if err := send(&xp.DiscoveryRequest{TypeUrl: t, VersionInfo: st.versions[t], ResponseNonce: resp.GetNonce(), ResourceNames: names(),
				ErrorDetail: &xp.Status{Code: codeInvalidArgument, Message: detail}}); err != nil {
				return got, err
			}
			continue
		}
		if wildcard(t) {
			st.resources[t] = decoded
		} else {
			for n, e := range decoded {
				if st.subscribed[t][n] {
					st.resources[t][n] = e
				}
			}
		}
		st.versions[t] = resp.GetVersionInfo()
		st.received[t] = true
		c.countAck("")
		if err := send(&xp.DiscoveryRequest{TypeUrl: t, VersionInfo: st.versions[t], ResponseNonce: resp.GetNonce(), ResourceNames: names()}); err != nil {
			return got, err
		}
		if dep := dependent(t); dep != "" {
			before := maps.Clone(st.subscribed[dep])
			st.resubscribe(dep)
			// An empty name list would mean "everything" in SotW: send only real subscriptions.
			if !maps.Equal(before, st.subscribed[dep]) && len(st.subscribed[dep]) > 0 {
				if err := send(&xp.DiscoveryRequest{TypeUrl: dep, VersionInfo: st.versions[dep], ResponseNonce: nonces[dep], ResourceNames: st.names(dep)}); err != nil {
					return got, err
				}
			}
		}
		c.publish(st)
	}
}
