package proxy

import (
	"io"

	"golang.org/x/net/http2"
)

// maxContinuations caps the CONTINUATION frames of one header block. The Framer limits a block's
// decoded size, but empty CONTINUATION frames add nothing to it, so a peer could keep one block open
// for ever (CVE-2024-27316 style); a real header block of at most MaxHeaderBytes needs a handful.
const maxContinuations = 512

// contGuard sits between a relay connection's buffered reader and its Framer and follows the frame
// boundaries of the bytes that pass: after more than maxContinuations CONTINUATION frames in a row
// the next read fails with ENHANCE_YOUR_CALM, which the read loop answers with GOAWAY.
type contGuard struct {
	r       io.Reader
	hdr     [9]byte
	hn      int    // header bytes seen of the current frame
	payload uint32 // payload bytes of the current frame still to pass
	conts   int    // CONTINUATION frames in a row
	tripped bool
}

func (g *contGuard) Read(p []byte) (int, error) {
	if g.tripped {
		return 0, http2.ConnectionError(http2.ErrCodeEnhanceYourCalm)
	}
	n, err := g.r.Read(p)
	for i := 0; i < n; {
		if g.payload > 0 {
			k := min(g.payload, uint32(n-i)) // #nosec G115 -- n-i ≤ len(p), and min bounds it by payload
			g.payload -= k
			i += int(k)
			continue
		}
		g.hdr[g.hn] = p[i]
		g.hn++
		i++
		if g.hn < len(g.hdr) {
			continue
		}
		g.hn = 0
		g.payload = uint32(g.hdr[0])<<16 | uint32(g.hdr[1])<<8 | uint32(g.hdr[2])
		if http2.FrameType(g.hdr[3]) == http2.FrameContinuation {
			if g.conts++; g.conts > maxContinuations {
				g.tripped = true
			}
		} else {
			g.conts = 0
		}
	}
	return n, err
}
