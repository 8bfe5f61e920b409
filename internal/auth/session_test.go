package auth_test

import (
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/openfaas/mailbox/internal/auth"
)

// clock is a settable clock.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *clock) add(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

func withCookie(c *http.Cookie) *http.Request {
	r := httptest.NewRequest(http.MethodGet, "/ui/", nil)
	if c != nil {
		r.AddCookie(c)
	}
	return r
}

func TestSessions(t *testing.T) {
	t.Parallel()
	clk := &clock{t: now}
	s := newToken(t, secret).Sessions(time.Hour, clk.now)

	a, err := s.Start(true)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := s.Start(false)
	if a.Name != auth.CookieSession || a.Path != "" || !a.HttpOnly || a.SameSite != http.SameSiteStrictMode || !a.Secure || b.Secure || a.MaxAge != 3600 {
		t.Errorf("Start = %+v", a)
	}
	if a.Value == b.Value {
		t.Error("two sessions have the same value: not random")
	}
	if strings.Contains(a.String(), secret) {
		t.Errorf("the cookie holds the token: %s", a)
	}
	if err := s.Check(withCookie(a)); err != nil {
		t.Fatalf("a new session: %v", err)
	}
	if err := s.Check(withCookie(nil)); err != auth.ErrMissingSession {
		t.Errorf("no cookie: %v", err)
	}
	// Another token's sessions, a forged expiry, garbage: refused.
	other, _ := newToken(t, "another").Sessions(time.Hour, clk.now).Start(false)
	id, rest, _ := strings.Cut(a.Value, ".")
	_, mac, _ := strings.Cut(rest, ".")
	for name, v := range map[string]string{
		"another token's":   other.Value,
		"expiry extended":   id + ".9999999999." + mac,
		"id changed":        strings.Repeat("0", len(id)) + "." + rest,
		"no mac":            id + "." + strings.Split(rest, ".")[0],
		"the token":         secret,
		"old fixed session": "0123abcd",
		"empty":             "",
	} {
		if err := s.Check(withCookie(&http.Cookie{Name: auth.CookieSession, Value: v})); err != auth.ErrBadSession && !(v == "" && err == auth.ErrMissingSession) {
			t.Errorf("%s cookie: %v, want ErrBadSession", name, err)
		}
	}

	// Signing out ends the session on the server: the same cookie, sent
	// again, is refused; the other session lives on.
	end := s.End(withCookie(a), true)
	if end.Name != auth.CookieSession || end.MaxAge >= 0 || end.Value != "" {
		t.Errorf("End = %+v, want a cookie that clears it", end)
	}
	if err := s.Check(withCookie(a)); err != auth.ErrBadSession {
		t.Errorf("after sign-out: %v, want ErrBadSession", err)
	}
	if err := s.Check(withCookie(b)); err != nil {
		t.Errorf("another session after one signed out: %v", err)
	}

	// Expiry is the server's, whatever the browser keeps.
	clk.add(time.Hour)
	if err := s.Check(withCookie(b)); err != auth.ErrBadSession {
		t.Errorf("an expired session: %v, want ErrBadSession", err)
	}
}

func TestSessionsDefaultTTL(t *testing.T) {
	t.Parallel()
	s := newToken(t, secret).Sessions(0, nil)
	if s.TTL() != 12*time.Hour {
		t.Errorf("TTL = %s, want 12h", s.TTL())
	}
}

func TestThrottle(t *testing.T) {
	t.Parallel()
	clk := &clock{t: now}
	th := auth.NewThrottle(clk.now)
	from := func(addr string) *http.Request {
		r := httptest.NewRequest(http.MethodPost, "/ui/login", nil)
		r.RemoteAddr = addr + ":1234"
		return r
	}
	// Sign-in attempts (Take) and failed credentials (Fail) share the
	// bucket.
	for i := range 10 {
		take := th.Take
		if i%2 == 1 {
			take = th.Fail
		}
		if d := take(from("192.0.2.1")); d != 0 {
			t.Fatalf("attempt %d: wait %s", i, d)
		}
	}
	for _, take := range []func(*http.Request) time.Duration{th.Take, th.Fail} {
		d := take(from("192.0.2.1"))
		if d <= 0 || d > 6*time.Second {
			t.Fatalf("after 10 attempts: wait %s, want up to 6s", d)
		}
	}
	// Another address is not held up; a header cannot pose as one.
	if d := th.Take(from("192.0.2.2")); d != 0 {
		t.Errorf("another address: wait %s", d)
	}
	r := from("192.0.2.1")
	r.Header.Set("X-Forwarded-For", "198.51.100.7")
	if d := th.Take(r); d == 0 {
		t.Error("X-Forwarded-For escaped the throttle")
	}
	// A refused attempt takes nothing: one is back after 6 s.
	clk.add(6 * time.Second)
	if d := th.Take(from("192.0.2.1")); d != 0 {
		t.Errorf("after 6s: wait %s", d)
	}
	if d := th.Take(from("192.0.2.1")); d == 0 {
		t.Error("two attempts 6 s after the burst")
	}
}

func TestThrottleBounded(t *testing.T) {
	t.Parallel()
	clk := &clock{t: now}
	th := auth.NewThrottle(clk.now)
	// Failing from many addresses neither grows memory past the bound nor
	// escapes the limit: the addresses past it share one bucket.
	for i := range 5000 {
		r := httptest.NewRequest(http.MethodPost, "/ui/login", nil)
		r.RemoteAddr = "[2001:db8::" + strings.ToLower(strings.TrimLeft(strings.ToUpper(hex4(i)), "0")) + "1]:1"
		th.Fail(r)
	}
	r := httptest.NewRequest(http.MethodPost, "/ui/login", nil)
	r.RemoteAddr = "[2001:db8::ffff:1]:1"
	if d := th.Take(r); d == 0 {
		t.Error("a new address past the bound was not throttled: the overflow bucket is spent")
	}
}

func hex4(i int) string {
	const digits = "0123456789abcdef"
	return string([]byte{digits[i>>12&15], digits[i>>8&15], digits[i>>4&15], digits[i&15]})
}
