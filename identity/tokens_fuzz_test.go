package identity

import (
	"strings"
	"testing"
)

// FuzzParseStaticTokens is local mode's token validator: the tokens file. Whatever its bytes, parsing
// does not panic, and an accepted file maps only non-empty tokens without spaces around them to
// callers whose namespace and ServiceAccount make a valid identity, each token once.
func FuzzParseStaticTokens(f *testing.F) {
	f.Add([]byte("# token,namespace,serviceaccount\ntok-web,default,web\n tok-db , default , db \n\n"))
	f.Add([]byte("tok,default,web\ntok,default,db\n"))
	f.Add([]byte("tok,Default,web\n"))
	f.Add([]byte(",default,web\n"))
	f.Add([]byte("tok,default\n"))
	f.Add([]byte("tok,default,web,extra\n"))
	f.Add([]byte("tok,default,a.b-c\r\n"))
	f.Add([]byte("tok,default,web\n" + strings.Repeat("x", 70000)))
	f.Fuzz(func(t *testing.T, data []byte) {
		callers, err := ParseStaticTokens(data)
		if err != nil {
			if !strings.HasPrefix(err.Error(), "line ") {
				t.Fatalf("error does not name the line: %v", err)
			}
			return
		}
		for tok, c := range callers {
			if tok == "" || strings.TrimSpace(tok) != tok || strings.Contains(tok, ",") {
				t.Fatalf("accepted token %q", tok)
			}
			if _, err := NewID(DefaultTrustDomain, c.Namespace, c.ServiceAccount); err != nil {
				t.Fatalf("token %q maps to invalid caller %+v: %v", tok, c, err)
			}
		}
	})
}
