// Package xdsclient is weft-proxy's ADS client. It subscribes to listeners and clusters (wildcard), then
// to the route configurations and load assignments they name; decodes and validates every resource into
// the small types of dataplane/config; NACKs a response with a bad resource (keeping the last good
// config); and publishes each new complete configuration as one immutable config.Snapshot through an
// atomic pointer. It speaks delta ADS and falls back to state-of-the-world when the server lacks delta.
// Losing the control plane changes nothing for traffic: the last snapshot stays, the client reconnects
// with exponential backoff and jitter and resyncs.
package xdsclient

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/protobuf/types/known/structpb"

	"github.com/weftmesh/weft/dataplane/config"
	xp "github.com/weftmesh/weft/dataplane/internal/xdsproto"
)

// Node identifies the proxy to the control plane.
type Node struct {
	PodName, Namespace, PodIP, ServiceAccount string
	Version                                   string
}

// ID is the node id of DESIGN.md: <pod>.<namespace>.
func (n Node) ID() string { return n.PodName + "." + n.Namespace }

func (n Node) proto() *xp.Node {
	md, _ := structpb.NewStruct(map[string]any{
		"NAMESPACE":       n.Namespace,
		"POD_NAME":        n.PodName,
		"SERVICE_ACCOUNT": n.ServiceAccount,
		"POD_IP":          n.PodIP,
		"CLIENT_KIND":     "weft",
	})
	return &xp.Node{
		Id:                   n.ID(),
		Cluster:              n.Namespace,
		Metadata:             md,
		UserAgentName:        "weft-proxy",
		UserAgentVersionType: &xp.Node_UserAgentVersion{UserAgentVersion: n.Version},
	}
}

// Options configure a Client.
type Options struct {
	Node Node
	// Conn is the way to the control plane: a Conn from Dial. The client does not close it.
	Conn Conn
	// OnUpdate, when set, is called (from the client's goroutine) after each new snapshot is published.
	OnUpdate func(*config.Snapshot)
	Logger   *slog.Logger
	// BackoffBase and BackoffMax bound the reconnection delay (defaults 250 ms and 30 s).
	BackoffBase, BackoffMax time.Duration
	// SotW forces state-of-the-world ADS (otherwise delta, falling back to SotW on Unimplemented).
	SotW bool
}

// Client is an ADS client. Create it with New and run it with Run.
type Client struct {
	opts    Options
	ads     adsClients
	log     *slog.Logger
	current atomic.Pointer[config.Snapshot]

	// stats, read by Status.
	mu        sync.Mutex
	connected bool
	protocol  string
	lastNACK  string
	acks      uint64
	nacks     uint64
}

// New returns a client; nothing happens until Run.
func New(opts Options) *Client {
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	if opts.BackoffBase <= 0 {
		opts.BackoffBase = 250 * time.Millisecond
	}
	if opts.BackoffMax <= 0 {
		opts.BackoffMax = 30 * time.Second
	}
	c := &Client{opts: opts, ads: newADSClients(opts.Conn), log: opts.Logger.With("component", "xds")}
	c.current.Store(&config.Snapshot{
		Listeners: map[string]*config.Listener{},
		Routes:    map[string]*config.RouteConfig{},
		Clusters:  map[string]*config.Cluster{},
		Endpoints: map[string]*config.ClusterLoadAssignment{},
		Secrets:   map[string]*config.Secret{},
		Raw:       map[string]map[string]config.RawResource{},
		Versions:  map[string]string{},
	})
	return c
}

// Snapshot returns the current configuration. It takes no lock.
func (c *Client) Snapshot() *config.Snapshot { return c.current.Load() }

// Status is what the admin server shows about the xDS connection.
type Status struct {
	Connected bool   `json:"connected"`
	Protocol  string `json:"protocol"`
	LastNACK  string `json:"last_nack,omitempty"`
	ACKs      uint64 `json:"acks"`
	NACKs     uint64 `json:"nacks"`
}

// Status reports the connection state and ACK/NACK counts.
func (c *Client) Status() Status {
	c.mu.Lock()
	defer c.mu.Unlock()
	return Status{Connected: c.connected, Protocol: c.protocol, LastNACK: c.lastNACK, ACKs: c.acks, NACKs: c.nacks}
}

func (c *Client) setConnected(v bool, proto string) {
	c.mu.Lock()
	c.connected, c.protocol = v, proto
	c.mu.Unlock()
}

func (c *Client) countAck(nackDetail string) {
	c.mu.Lock()
	if nackDetail == "" {
		c.acks++
	} else {
		c.nacks++
		c.lastNACK = nackDetail
	}
	c.mu.Unlock()
}

// Run keeps an ADS stream open until ctx ends, reconnecting with exponential backoff and full jitter.
// The state (st) lives in this goroutine only.
func (c *Client) Run(ctx context.Context) error {
	st := newState()
	// Start from whatever was published before (none, on the first Run).
	delay := c.opts.BackoffBase
	sotw := c.opts.SotW
	for {
		var gotResponse bool
		var err error
		if sotw {
			gotResponse, err = c.runSotW(ctx, st)
		} else {
			gotResponse, err = c.runDelta(ctx, st)
			if errors.Is(err, errUnimplemented) {
				c.log.Info("control plane lacks delta ADS; using state-of-the-world")
				sotw = true
				continue
			}
		}
		c.setConnected(false, "")
		if ctx.Err() != nil {
			return nil
		}
		if gotResponse {
			delay = c.opts.BackoffBase
		}
		wait := time.Duration(rand.Int64N(int64(delay)) + 1)
		c.log.Warn("xDS stream ended; keeping the last good config", "err", err, "retry_in", wait.Round(time.Millisecond))
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(wait):
		}
		delay = min(delay*2, c.opts.BackoffMax)
	}
}

var errUnimplemented = errors.New("delta ADS unimplemented")

// publish builds an immutable snapshot from the state and swaps it in.
func (c *Client) publish(st *state) {
	s := st.snapshot()
	c.current.Store(s)
	if c.opts.OnUpdate != nil {
		c.opts.OnUpdate(s)
	}
}

func nackError(errs []error) string {
	return fmt.Sprint(errors.Join(errs...))
}
