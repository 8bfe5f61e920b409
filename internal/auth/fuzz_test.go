package auth_test

import (
	"bytes"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/openfaas/mailbox/internal/auth"
	"github.com/openfaas/mailbox/internal/signature"
)

// FuzzCheckRequeue: whatever a request holds, CheckRequeue never panics
// and accepts a signature only when it is the one SignRequest makes for
// that very request; CheckRequeueHeaders, before the body, refuses none it
// accepts; and every request SignRequest signs is accepted.
func FuzzCheckRequeue(f *testing.F) {
	tok := newToken(f, secret)
	good := http.Header{"X-Max-Retries": {"3"}}
	_ = tok.SignRequest(http.MethodPost, "/deadletter/fn", good, []byte("b"), now)
	f.Add("POST", "/deadletter/fn", "X-Max-Retries", "3", good.Get("X-Mailbox-Timestamp"), good.Get(auth.HeaderSignature), []byte("b"))
	f.Add("GET", "/deadletters", "", "", "", oldEmptyBodySignature(secret), []byte(nil))
	f.Add("POST", "/deadletter/a%2Fb", "X-Callback-Url", "http://x/\n", "1800000000", "v1=00", []byte("x"))
	f.Fuzz(func(t *testing.T, method, path, name, value, ts, sig string, body []byte) {
		if method == "" || strings.ContainsAny(method, " \t\r\n") || !strings.HasPrefix(path, "/") || strings.ContainsAny(path, " \t\r\n#?") {
			return
		}
		r, err := http.NewRequest(method, "http://mailbox"+path, bytes.NewReader(body))
		if err != nil {
			return
		}
		if name != "" {
			r.Header[http.CanonicalHeaderKey(name)] = []string{value}
		}
		r.Header.Set("X-Mailbox-Timestamp", ts)
		r.Header.Set(auth.HeaderSignature, sig)
		// The check before the body refuses nothing the full check
		// accepts, and asks for the body unless the bearer passed.
		needBody, preErr := tok.CheckRequeueHeaders(r, now, 5*time.Minute)
		if err := tok.CheckRequeue(r, body, now, 5*time.Minute); err == nil {
			if preErr != nil || needBody != (tok.CheckBearer(r) != nil) {
				t.Fatalf("accepted, but before the body: needBody %v, %v", needBody, preErr)
			}
			canonical, _ := signature.Request(method, r.URL.EscapedPath(), ts, r.Header, body)
			if !signature.Equal(signature.Key([]byte(secret), signature.PurposeRequest), canonical, sig) {
				t.Fatalf("accepted a signature that is not the request's: %q", sig)
			}
		}
		// Signed now, the same request is accepted.
		h := r.Header.Clone()
		if err := tok.SignRequest(method, r.URL.EscapedPath(), h, body, now); err != nil {
			return // a line break in a signed header
		}
		r.Header = h
		if err := tok.CheckRequeue(r, body, now, 5*time.Minute); err != nil {
			t.Fatalf("a request SignRequest signed is refused: %v (headers %q)", err, h)
		}
		if needBody, err := tok.CheckRequeueHeaders(r, now, 5*time.Minute); err != nil || !needBody {
			t.Fatalf("a request SignRequest signed is refused before its body: %v", err)
		}
		// The bearer check never takes a signature.
		if err := tok.CheckBearer(r); err == nil && r.Header.Get("Authorization") == "" {
			t.Fatal("CheckBearer accepted a request without Authorization")
		}
	})
}

// FuzzSessionCheck: a session cookie changed anywhere is refused; only
// the value Start made passes (the HMAC's hex may change case).
func FuzzSessionCheck(f *testing.F) {
	s := newToken(f, secret).Sessions(time.Hour, func() time.Time { return now })
	f.Add(uint16(0), byte(1), "")
	f.Add(uint16(33), byte('1'^'9'), "")
	f.Add(uint16(0), byte(0), ".00")
	f.Fuzz(func(t *testing.T, pos uint16, x byte, suffix string) {
		c, err := s.Start(false)
		if err != nil {
			t.Fatal(err)
		}
		b := []byte(c.Value)
		b[int(pos)%len(b)] ^= x
		v := string(b) + suffix
		r := httptest.NewRequest(http.MethodGet, "/ui/", nil)
		r.Header.Set("Cookie", auth.CookieSession+"="+v)
		if s.Check(r) != nil {
			return
		}
		// What the mailbox read (a ';' ends a cookie, quotes are
		// stripped): it must be the session made, but for the HMAC's
		// hex case.
		seen, _ := r.Cookie(auth.CookieSession)
		mac := c.Value[strings.LastIndex(c.Value, ".")+1:]
		if seen.Value != c.Value && (!strings.HasSuffix(strings.ToLower(seen.Value), mac) ||
			seen.Value[:len(seen.Value)-len(mac)] != c.Value[:len(c.Value)-len(mac)]) {
			t.Fatalf("accepted a changed session %q (made %q)", seen.Value, c.Value)
		}
	})
}
