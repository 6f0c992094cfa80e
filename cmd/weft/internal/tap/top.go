package tap

import (
	"cmp"
	"fmt"
	"io"
	"slices"
	"strings"
	"sync"
	"time"

	tapv1 "github.com/weftmesh/weft/proto/weft/tap/v1"
)

// Top aggregates tap events into `weft top`'s table: one row per source, destination, method and path,
// busiest first. It is safe for concurrent use (the stream adds, the screen reads).
type Top struct {
	mu      sync.Mutex
	rows    map[rowKey]*Row
	dropped uint64
	notes   []string
}

type rowKey struct{ src, dst, method, path string }

// Row is one line of the table.
type Row struct {
	Source, Destination, Method, Path string
	Count, Successes                  int
	Best, Worst, Last                 time.Duration
}

// SuccessRate is the share of responses that were not failures (5xx, or a gRPC status other than OK).
func (r Row) SuccessRate() float64 { return float64(r.Successes) / float64(r.Count) }

// NewTop returns an empty table.
func NewTop() *Top { return &Top{rows: map[rowKey]*Row{}} }

// Add counts one response of the stream.
func (t *Top) Add(r *tapv1.ObserveResponse) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.dropped += r.GetDropped()
	if n := r.GetNotice(); n != "" && len(t.notes) < 5 {
		t.notes = append(t.notes, n)
	}
	ev := r.GetEvent()
	if ev == nil {
		return
	}
	pod, _, _ := strings.Cut(ev.GetProxy(), ".")
	src, dst := pod, ev.GetDestination()
	if ev.GetDirection() == tapv1.TapEvent_DIRECTION_INBOUND {
		src, dst = hostOf(ev.GetSource()), pod
		if id := ev.GetClientId(); id != "" {
			src = shortID(id)
		}
	}
	k := rowKey{src, dst, ev.GetRequest().GetMethod(), ev.GetRequest().GetPath()}
	row := t.rows[k]
	lat := ev.GetLatency().AsDuration()
	if row == nil {
		row = &Row{Source: k.src, Destination: k.dst, Method: k.method, Path: k.path, Best: lat, Worst: lat}
		t.rows[k] = row
	}
	row.Count++
	row.Last = lat
	row.Best, row.Worst = min(row.Best, lat), max(row.Worst, lat)
	s := ev.GetResponse()
	if s.GetStatus() < 500 && s.GetGrpcStatus() == 0 {
		row.Successes++
	}
}

// Rows are the table's rows, by count (most first), then source, destination, method and path.
func (t *Top) Rows() []Row {
	t.mu.Lock()
	defer t.mu.Unlock()
	out := make([]Row, 0, len(t.rows))
	for _, r := range t.rows {
		out = append(out, *r)
	}
	slices.SortFunc(out, func(a, b Row) int {
		return cmp.Or(cmp.Compare(b.Count, a.Count), strings.Compare(a.Source, b.Source), strings.Compare(a.Destination, b.Destination),
			strings.Compare(a.Method, b.Method), strings.Compare(a.Path, b.Path))
	})
	return out
}

// Render writes the screen: a title, the header and as many rows as fit in height lines (0: all).
func (t *Top) Render(w io.Writer, title string, height int) {
	rows := t.Rows()
	t.mu.Lock()
	dropped, notes := t.dropped, slices.Clone(t.notes)
	t.mu.Unlock()
	fmt.Fprintf(w, "%s   (q quits)\n", title)
	for _, n := range notes {
		fmt.Fprintf(w, "note: %s\n", n)
	}
	if dropped > 0 {
		fmt.Fprintf(w, "note: %d requests not counted (over --max-rps)\n", dropped)
	}
	fmt.Fprintln(w)
	header := []string{"SOURCE", "DESTINATION", "METHOD", "PATH", "COUNT", "BEST", "WORST", "LAST", "SUCCESS RATE"}
	cells := [][]string{header}
	for _, r := range rows {
		cells = append(cells, []string{r.Source, r.Destination, r.Method, r.Path, fmt.Sprint(r.Count),
			ms(r.Best), ms(r.Worst), ms(r.Last), fmt.Sprintf("%.2f%%", 100*r.SuccessRate())})
	}
	if len(rows) == 0 {
		cells = append(cells, []string{"(no requests yet)"})
	}
	if height > 0 {
		room := max(height-4-len(notes), 2)
		if len(cells) > room {
			cells = cells[:room]
		}
	}
	widths := make([]int, len(header))
	for _, c := range cells {
		for i, v := range c {
			widths[i] = max(widths[i], len([]rune(v)))
		}
	}
	for _, c := range cells {
		var b strings.Builder
		for i, v := range c {
			if i > 0 {
				b.WriteString("  ")
			}
			if i == len(c)-1 {
				b.WriteString(v)
				break
			}
			b.WriteString(v + strings.Repeat(" ", widths[i]-len([]rune(v))))
		}
		fmt.Fprintln(w, b.String())
	}
}

func ms(d time.Duration) string {
	if d < time.Millisecond {
		return fmt.Sprintf("%dµs", d.Microseconds())
	}
	return fmt.Sprintf("%.1fms", float64(d.Microseconds())/1000)
}
