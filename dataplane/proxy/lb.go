package proxy

import (
	"hash/fnv"
	"math/rand/v2"
	"sort"
	"strconv"
	"time"

	"github.com/weftmesh/weft/dataplane/config"
)

// pick chooses an endpoint for one request by the cluster's policy, skipping ejected hosts while
// others remain. key is the hash key for ring hash (the client's address). It takes no lock.
func (c *clusterRT) pick(key uint64) *host {
	hosts := c.flat
	if len(hosts) == 0 {
		return nil
	}
	if c.weighted && len(c.localities) > 1 {
		n := rand.Uint32N(c.totalW)
		for _, l := range c.localities {
			if n < l.weight {
				hosts = l.hosts
				break
			}
			n -= l.weight
		}
	}
	var now int64
	if c.state.ejected.Load() > 0 {
		now = time.Now().UnixNano()
	}
	for attempt := 0; ; attempt++ {
		var h *host
		switch c.cfg.LB {
		case config.LBRoundRobin:
			h = hosts[c.state.rr.Add(1)%uint64(len(hosts))]
		case config.LBRandom:
			h = hosts[rand.IntN(len(hosts))]
		case config.LBRingHash:
			if attempt == 0 && len(c.ring) > 0 {
				h = c.ringLookup(key)
			} else {
				h = hosts[rand.IntN(len(hosts))]
			}
		default: // least request, power of two choices
			if len(hosts) == 1 {
				h = hosts[0]
			} else {
				i := rand.IntN(len(hosts))
				j := rand.IntN(len(hosts) - 1)
				if j >= i {
					j++
				}
				a, b := hosts[i], hosts[j]
				h = a
				if b.active.Load() < a.active.Load() {
					h = b
				}
			}
		}
		if now == 0 || !c.state.isEjected(h, now) || attempt >= 2*len(hosts) {
			return h
		}
	}
}

type ringEntry struct {
	hash uint64
	h    *host
}

// buildRing places each host at 1024/len(hosts) (min 64) points on a 64-bit ring.
func buildRing(hosts []*host) []ringEntry {
	if len(hosts) == 0 {
		return nil
	}
	per := max(64, 1024/len(hosts))
	ring := make([]ringEntry, 0, per*len(hosts))
	for _, h := range hosts {
		for i := 0; i < per; i++ {
			f := fnv.New64a()
			f.Write([]byte(h.addrStr))
			f.Write([]byte{'_'})
			f.Write([]byte(strconv.Itoa(i)))
			ring = append(ring, ringEntry{hash: f.Sum64(), h: h})
		}
	}
	// sort.Slice, not slices.SortFunc: a generic sort of a struct type links its own ~15 KB copy of
	// pdqsort (resident in every sidecar); sort.Slice is linked anyway.
	sort.Slice(ring, func(i, j int) bool { return ring[i].hash < ring[j].hash })
	return ring
}

func (c *clusterRT) ringLookup(key uint64) *host {
	i := sort.Search(len(c.ring), func(i int) bool { return c.ring[i].hash >= key })
	if i == len(c.ring) {
		i = 0
	}
	return c.ring[i].h
}

// hashString is the ring-hash key of a client address.
func hashString(s string) uint64 {
	f := fnv.New64a()
	f.Write([]byte(s))
	return f.Sum64()
}
