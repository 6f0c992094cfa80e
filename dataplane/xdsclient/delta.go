package xdsclient

import (
	"context"
	"fmt"
	"maps"
	"slices"

	xp "github.com/weftmesh/weft/dataplane/internal/xdsproto"
)

// runDelta runs one delta ADS stream. It returns whether any response arrived, and why the stream ended.
func (c *Client) runDelta(ctx context.Context, st *state) (bool, error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stream := openDelta(ctx, c.ads)
	defer stream.close()
	node := c.opts.Node.proto()
	for _, t := range typeOrder {
		req := &xp.DeltaDiscoveryRequest{TypeUrl: t, InitialResourceVersions: map[string]string{}}
		for n, e := range st.resources[t] {
			req.InitialResourceVersions[n] = e.version
		}
		if !wildcard(t) {
			req.ResourceNamesSubscribe = st.names(t)
			if len(req.ResourceNamesSubscribe) == 0 {
				continue
			}
		}
		if node != nil {
			req.Node, node = node, nil
		}
		if err := stream.Send(req); err != nil {
			if isUnimplemented(err) {
				return false, errUnimplemented
			}
			return false, fmt.Errorf("send delta request: %w", err)
		}
	}
	c.setConnected(true, "delta")
	got := false
	for {
		resp, err := stream.Recv()
		if err != nil {
			if !got && isUnimplemented(err) {
				return false, errUnimplemented
			}
			return got, fmt.Errorf("receive: %w", err)
		}
		got = true
		if err := c.handleDelta(stream, st, resp); err != nil {
			return got, err
		}
	}
}

func (c *Client) handleDelta(stream deltaStream, st *state, resp *xp.DeltaDiscoveryResponse) error {
	t := resp.GetTypeUrl()
	if _, known := st.resources[t]; !known {
		return c.sendDelta(stream, &xp.DeltaDiscoveryRequest{TypeUrl: t, ResponseNonce: resp.GetNonce(),
			ErrorDetail: &xp.Status{Code: codeInvalidArgument, Message: fmt.Sprintf("weft-proxy does not subscribe to %q", t)}})
	}
	var errs []error
	decoded := map[string]entry{}
	for _, r := range resp.GetResources() {
		name, v, err := decode(t, r.GetResource())
		switch {
		case err != nil:
			errs = append(errs, err)
		case r.GetName() != "" && name != r.GetName():
			errs = append(errs, fmt.Errorf("resource named %q holds %q", r.GetName(), name))
		default:
			decoded[name] = entry{version: r.GetVersion(), raw: r.GetResource(), value: v}
		}
	}
	if len(errs) > 0 {
		detail := nackError(errs)
		c.log.Warn("NACK: keeping the last good config", "type", t, "nonce", resp.GetNonce(), "error", detail)
		c.countAck(detail)
		return c.sendDelta(stream, &xp.DeltaDiscoveryRequest{TypeUrl: t, ResponseNonce: resp.GetNonce(),
			ErrorDetail: &xp.Status{Code: codeInvalidArgument, Message: detail}})
	}
	for _, n := range slices.Sorted(maps.Keys(decoded)) {
		if !wildcard(t) && !st.subscribed[t][n] {
			continue
		}
		st.resources[t][n] = decoded[n]
	}
	for _, n := range resp.GetRemovedResources() {
		delete(st.resources[t], n)
	}
	st.versions[t] = resp.GetSystemVersionInfo()
	if st.versions[t] == "" {
		st.versions[t] = resp.GetNonce()
	}
	st.received[t] = true
	c.countAck("")
	if err := c.sendDelta(stream, &xp.DeltaDiscoveryRequest{TypeUrl: t, ResponseNonce: resp.GetNonce()}); err != nil {
		return err
	}
	if dep := dependent(t); dep != "" {
		added, removed := st.resubscribe(dep)
		if len(added)+len(removed) > 0 {
			if err := c.sendDelta(stream, &xp.DeltaDiscoveryRequest{TypeUrl: dep, ResourceNamesSubscribe: added, ResourceNamesUnsubscribe: removed}); err != nil {
				return err
			}
		}
	}
	c.log.Debug("ACK", "type", t, "version", st.versions[t], "resources", len(decoded), "removed", len(resp.GetRemovedResources()))
	c.publish(st)
	return nil
}

func (c *Client) sendDelta(stream deltaStream, req *xp.DeltaDiscoveryRequest) error {
	if err := stream.Send(req); err != nil {
		return fmt.Errorf("send delta request: %w", err)
	}
	return nil
}

// dependent is the type whose names a type's resources refer to.
func dependent(typeURL string) string {
	switch typeURL {
	case "type.googleapis.com/envoy.config.cluster.v3.Cluster":
		return "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment"
	case "type.googleapis.com/envoy.config.listener.v3.Listener":
		return "type.googleapis.com/envoy.config.route.v3.RouteConfiguration"
	}
	return ""
}
