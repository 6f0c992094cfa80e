package identity

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"fmt"
	"os"
	"strings"
	"sync"
	"time"
)

// StaticTokens is the Authenticator of local mode (weft-control --identity-tokens FILE): a file of lines
// `token,namespace,serviceaccount` ('#' starts a comment). A change of the file is picked up within a
// second.
type StaticTokens struct {
	path string

	mu      sync.Mutex // guards the fields below
	checked time.Time  // when the file was last looked at; at most once a second
	stamp   string     // size and mtime of the file last read
	sum     [32]byte
	callers map[string]Caller
}

// LoadStaticTokens reads a tokens file.
func LoadStaticTokens(path string) (*StaticTokens, error) {
	st := &StaticTokens{path: path}
	if err := st.refresh(); err != nil {
		return nil, err
	}
	return st, nil
}

// ParseStaticTokens parses the lines of a tokens file.
func ParseStaticTokens(data []byte) (map[string]Caller, error) {
	callers := map[string]Caller{}
	sc := bufio.NewScanner(bytes.NewReader(data))
	n := 1
	for ; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		f := strings.Split(line, ",")
		if len(f) != 3 {
			return nil, fmt.Errorf("line %d: want token,namespace,serviceaccount", n)
		}
		for i := range f {
			f[i] = strings.TrimSpace(f[i])
		}
		if f[0] == "" {
			return nil, fmt.Errorf("line %d: empty token", n)
		}
		if _, err := NewID(DefaultTrustDomain, f[1], f[2]); err != nil {
			return nil, fmt.Errorf("line %d: %w", n, err)
		}
		if _, dup := callers[f[0]]; dup {
			return nil, fmt.Errorf("line %d: token listed twice", n)
		}
		callers[f[0]] = Caller{Namespace: f[1], ServiceAccount: f[2]}
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("line %d: %v (a line holds at most %d bytes)", n, err, bufio.MaxScanTokenSize)
	}
	return callers, nil
}

func (st *StaticTokens) refresh() error {
	st.mu.Lock()
	defer st.mu.Unlock()
	now := time.Now()
	if st.callers != nil && now.Sub(st.checked) < time.Second {
		return nil
	}
	st.checked = now
	fi, err := os.Stat(st.path)
	if err != nil {
		return fmt.Errorf("reading the tokens file: %w", err)
	}
	stamp := fmt.Sprint(fi.Size(), fi.ModTime().UnixNano())
	if st.callers != nil && stamp == st.stamp {
		return nil
	}
	data, err := os.ReadFile(st.path)
	if err != nil {
		return fmt.Errorf("reading the tokens file: %w", err)
	}
	sum := sha256.Sum256(data)
	st.stamp = stamp
	if st.callers != nil && sum == st.sum {
		return nil
	}
	callers, err := ParseStaticTokens(data)
	if err != nil {
		return fmt.Errorf("tokens file %s: %w", st.path, err)
	}
	st.sum, st.callers = sum, callers
	return nil
}

// Authenticate implements Authenticator. A tokens file that became unreadable or invalid keeps its last
// good content.
func (st *StaticTokens) Authenticate(_ context.Context, token string) (Caller, error) {
	_ = st.refresh() // on error, the last good content stays
	st.mu.Lock()
	c, ok := st.callers[token]
	st.mu.Unlock()
	if !ok {
		return Caller{}, fmt.Errorf("%w: token is not in the tokens file", ErrUnauthenticated)
	}
	return c, nil
}
