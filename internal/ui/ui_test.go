package ui_test

// The page's handlers on a real JetStream backend. The browser test
// (internal/service, browser_test.go) clicks through it in Chromium;
// these check what a browser does not show: refusals, headers, errors.

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/openfaas/mailbox/internal/auth"
	"github.com/openfaas/mailbox/internal/deadletter"
	"github.com/openfaas/mailbox/internal/envelope"
	"github.com/openfaas/mailbox/internal/jsserver/jsservertest"
	"github.com/openfaas/mailbox/internal/metricstest"
	"github.com/openfaas/mailbox/internal/poll"
	"github.com/openfaas/mailbox/internal/queue"
	"github.com/openfaas/mailbox/internal/queue/jetstream"
	"github.com/openfaas/mailbox/internal/ui"
)

const token = "ui-test-token"

var quiet = slog.New(slog.DiscardHandler)

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

type bundle struct {
	srv   *httptest.Server
	h     http.Handler
	store *deadletter.Store
	reg   *prometheus.Registry
	q     queue.Queue
	token *auth.Token
	// sessions are the page's, on clock.
	sessions *auth.Sessions
	clock    *clock
	// waitingErr, when set, is what the page's waiting counts fail with.
	waitingErr error
}

func setup(t testing.TB) *bundle {
	t.Helper()
	nats := jsservertest.Start(t)
	q, err := jetstream.Open(jetstream.Options{Options: queue.Options{URL: nats.URL(), Logger: quiet}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = q.Close() })
	b := &bundle{reg: prometheus.NewRegistry(), q: q}
	store, err := deadletter.New(deadletter.Options{Queue: q, Limit: 100, Registerer: b.reg, Logger: quiet})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	stopped := make(chan error, 1)
	go func() { stopped <- store.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-stopped })
	if b.token, err = auth.NewToken(token); err != nil {
		t.Fatal(err)
	}
	guard, err := auth.NewGuard(b.token, b.reg)
	if err != nil {
		t.Fatal(err)
	}
	b.clock = &clock{t: time.Now()}
	b.sessions = b.token.Sessions(time.Hour, b.clock.now)
	h, err := ui.New(ui.Options{
		Store: store, Token: b.token, Guard: guard, Sessions: b.sessions, Throttle: auth.NewThrottle(b.clock.now),
		Waiting: func(ctx context.Context) (map[string]int, error) {
			if b.waitingErr != nil {
				return nil, b.waitingErr
			}
			return q.Waiting(ctx)
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	b.h, b.store = h, store
	b.srv = httptest.NewServer(h)
	t.Cleanup(b.srv.Close)
	poll.Until(t, 10*time.Second, "JetStream ready", q.Connected)
	return b
}

// client does not follow redirects, so that tests see them.
var client = &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}

// do sends a request, signed in unless signedIn is false, with header as
// pairs, and returns the answer and its body.
func (b *bundle) do(t *testing.T, method, path string, form url.Values, signedIn bool, header ...string) (*http.Response, string) {
	t.Helper()
	var body io.Reader
	if form != nil {
		body = strings.NewReader(form.Encode())
	}
	req, err := http.NewRequest(method, b.srv.URL+path, body)
	if err != nil {
		t.Fatal(err)
	}
	if form != nil {
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	}
	if signedIn {
		c, err := b.sessions.Start(false)
		if err != nil {
			t.Fatal(err)
		}
		req.AddCookie(c)
	}
	for i := 0; i+1 < len(header); i += 2 {
		req.Header.Set(header[i], header[i+1])
	}
	res, err := client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	data, _ := io.ReadAll(res.Body)
	return res, string(data)
}

func (b *bundle) refused(t *testing.T) float64 {
	return metricstest.Sum(t, b.reg, "mailbox_unauthorized_total", "endpoint", "ui")
}

func TestSignIn(t *testing.T) {
	b := setup(t)

	// Every URL is relative: behind the gateway the page is at
	// /function/mailbox/ui/, and the mailbox sees /ui/.
	res, _ := b.do(t, http.MethodGet, "/ui", nil, false)
	if res.StatusCode != http.StatusMovedPermanently || res.Header.Get("Location") != "ui/" {
		t.Fatalf("GET /ui: %d to %q, want 301 to ui/", res.StatusCode, res.Header.Get("Location"))
	}
	res, _ = b.do(t, http.MethodGet, "/ui/", nil, false)
	if res.StatusCode != http.StatusSeeOther || res.Header.Get("Location") != "./login" {
		t.Fatalf("GET /ui/ without a session: %d to %q, want 303 to ./login", res.StatusCode, res.Header.Get("Location"))
	}
	res, _ = b.do(t, http.MethodGet, "/ui/deadletters/m1", nil, false)
	if res.StatusCode != http.StatusSeeOther || res.Header.Get("Location") != "../login" {
		t.Fatalf("GET /ui/deadletters/m1 without a session: %d to %q, want 303 to ../login", res.StatusCode, res.Header.Get("Location"))
	}
	if n := b.refused(t); n != 2 {
		t.Fatalf("refusals counted: %v, want 2", n)
	}
	res, _ = b.do(t, http.MethodPost, "/ui/deadletters/x/purge", url.Values{}, false)
	if res.StatusCode != http.StatusUnauthorized {
		t.Fatalf("POST without a session: %d, want 401", res.StatusCode)
	}
	res, page := b.do(t, http.MethodPost, "/ui/login", url.Values{"token": {"wrong"}}, false)
	if res.StatusCode != http.StatusUnauthorized || !strings.Contains(page, "not the mailbox&#39;s token") || len(res.Cookies()) != 0 {
		t.Fatalf("wrong token: %d, cookies %v", res.StatusCode, res.Cookies())
	}
	if n := b.refused(t); n != 4 {
		t.Fatalf("refusals counted: %v, want 4", n)
	}

	res, _ = b.do(t, http.MethodPost, "/ui/login", url.Values{"token": {token}}, false)
	cookies := res.Cookies()
	if res.StatusCode != http.StatusSeeOther || res.Header.Get("Location") != "./" || len(cookies) != 1 {
		t.Fatalf("right token: %d to %q, cookies %v", res.StatusCode, res.Header.Get("Location"), cookies)
	}
	c := cookies[0]
	// No Path: the browser scopes the cookie to the page's directory, not
	// to every function on the gateway.
	if c.Name != auth.CookieSession || c.Path != "" || !c.HttpOnly || c.SameSite != http.SameSiteStrictMode || strings.Contains(c.Value, token) {
		t.Fatalf("session cookie %+v", c)
	}
	if c.Secure || c.MaxAge != int(time.Hour.Seconds()) {
		t.Fatalf("session cookie over plain HTTP: Secure %v, MaxAge %d", c.Secure, c.MaxAge)
	}
	// Through a gateway or ingress that ended TLS, the cookie is Secure.
	res, _ = b.do(t, http.MethodPost, "/ui/login", url.Values{"token": {token}}, false, "X-Forwarded-Proto", "https")
	if cs := res.Cookies(); len(cs) != 1 || !cs[0].Secure {
		t.Fatalf("sign-in forwarded over HTTPS: cookies %+v, want one Secure", cs)
	}
	res, page = b.do(t, http.MethodGet, "/ui/", nil, true)
	if res.StatusCode != http.StatusOK || !strings.Contains(page, "No dead letters.") {
		t.Fatalf("GET /ui/ signed in: %d\n%s", res.StatusCode, page)
	}
	if strings.Contains(page, `="/`) {
		t.Fatalf("the page has an absolute link:\n%s", page)
	}
	for name, want := range map[string]string{
		"Content-Security-Policy": "default-src 'self'; frame-ancestors 'none'",
		"X-Frame-Options":         "DENY",
		"Cache-Control":           "no-store",
	} {
		if got := res.Header.Get(name); got != want {
			t.Errorf("%s: %q, want %q", name, got, want)
		}
	}

	res, _ = b.do(t, http.MethodPost, "/ui/logout", url.Values{}, true)
	if res.StatusCode != http.StatusSeeOther || len(res.Cookies()) != 1 || res.Cookies()[0].MaxAge >= 0 {
		t.Fatalf("sign out: %d, cookies %+v", res.StatusCode, res.Cookies())
	}
}

func TestFormsFromAnotherSiteAreRefused(t *testing.T) {
	b := setup(t)
	for _, h := range [][]string{
		{"Origin", "https://evil.example"},
		{"Sec-Fetch-Site", "cross-site"},
	} {
		res, page := b.do(t, http.MethodPost, "/ui/bulk", url.Values{"action": {"purge"}}, true, h...)
		if res.StatusCode != http.StatusForbidden || !strings.Contains(page, "another site") {
			t.Errorf("POST with %s: %s: %d", h[0], h[1], res.StatusCode)
		}
		res, _ = b.do(t, http.MethodPost, "/ui/login", url.Values{"token": {token}}, false, h...)
		if res.StatusCode != http.StatusForbidden || len(res.Cookies()) != 0 {
			t.Errorf("sign-in with %s: %s: %d", h[0], h[1], res.StatusCode)
		}
	}
	// A forwarded host must be the Origin's, not any host.
	res, _ := b.do(t, http.MethodPost, "/ui/bulk", url.Values{"action": {"purge"}}, true, "Origin", "https://evil.example", "X-Forwarded-Host", "gateway:8080")
	if res.StatusCode != http.StatusForbidden {
		t.Errorf("POST from evil.example forwarded for gateway:8080: %d", res.StatusCode)
	}
	// The same origin is fine: asked directly, through the gateway (which
	// passes its host as X-Forwarded-Host; the function sees its own
	// address as Host), or said so by the browser.
	for _, h := range [][]string{
		{"Origin", b.srv.URL},
		{"Origin", "http://gateway:8080", "X-Forwarded-Host", "gateway:8080"},
		{"Origin", "http://gateway:8080", "Sec-Fetch-Site", "same-origin"},
	} {
		res, _ := b.do(t, http.MethodPost, "/ui/bulk", url.Values{"action": {"purge"}, "all": {"true"}}, true, h...)
		if res.StatusCode != http.StatusSeeOther || !strings.HasPrefix(res.Header.Get("Location"), "./jobs/") {
			t.Fatalf("same-origin bulk purge with %q: %d to %q", h, res.StatusCode, res.Header.Get("Location"))
		}
	}
}

func TestPagesAndFailures(t *testing.T) {
	b := setup(t)
	dead := &envelope.Envelope{ID: "m1", Function: "fn", Reason: envelope.ReasonRejected, DeadAt: time.Now(),
		Header: map[string][]string{"X-Trace": {"<script>alert(1)</script>"}}, Body: []byte{0xff, 0xfe}}
	if err := b.q.DeadLetter(t.Context(), dead); err != nil {
		t.Fatal(err)
	}

	res, page := b.do(t, http.MethodGet, "/ui/deadletters/m1", nil, true)
	if res.StatusCode != http.StatusOK || !strings.Contains(page, "2 bytes of binary data") ||
		!strings.Contains(page, `action="../deadletters/m1/replay"`) || !strings.Contains(page, `href="../static/ui.css"`) ||
		strings.Contains(page, "<script>alert") || !strings.Contains(page, "&lt;script&gt;") {
		t.Fatalf("details of m1: %d\n%s", res.StatusCode, page)
	}
	res, page = b.do(t, http.MethodGet, "/ui/deadletters/nobody", nil, true)
	if res.StatusCode != http.StatusNotFound || !strings.Contains(page, "no such dead letter") {
		t.Fatalf("details of an unknown id: %d\n%s", res.StatusCode, page)
	}
	res, page = b.do(t, http.MethodPost, "/ui/deadletters/nobody/replay", url.Values{}, true)
	if res.StatusCode != http.StatusNotFound || !strings.Contains(page, "no such dead letter") {
		t.Fatalf("replay of an unknown id: %d\n%s", res.StatusCode, page)
	}
	res, page = b.do(t, http.MethodPost, "/ui/bulk", url.Values{"action": {"explode"}}, true)
	if res.StatusCode != http.StatusBadRequest || !strings.Contains(page, "neither replay nor purge") {
		t.Fatalf("bulk with an unknown action: %d\n%s", res.StatusCode, page)
	}
	res, page = b.do(t, http.MethodGet, "/ui/jobs/nope", nil, true)
	if res.StatusCode != http.StatusNotFound || !strings.Contains(page, "no job nope") {
		t.Fatalf("unknown job: %d\n%s", res.StatusCode, page)
	}
	res, _ = b.do(t, http.MethodGet, "/ui/nothing-here", nil, true)
	if res.StatusCode != http.StatusNotFound {
		t.Fatalf("unknown page: %d", res.StatusCode)
	}
	res, page = b.do(t, http.MethodGet, "/ui/static/ui.js", nil, false)
	if res.StatusCode != http.StatusOK || !strings.Contains(page, "data-confirm") {
		t.Fatalf("ui.js: %d", res.StatusCode)
	}
	res, _ = b.do(t, http.MethodGet, "/ui/static/pages.html", nil, false)
	if res.StatusCode != http.StatusNotFound {
		t.Fatalf("templates served as static files: %d", res.StatusCode)
	}
	res, page = b.do(t, http.MethodGet, "/ui/?function=Bad_Name", nil, true)
	if res.StatusCode != http.StatusOK || !strings.Contains(page, "is not a function name") || !strings.Contains(page, "m1") {
		t.Fatalf("bad function filter: %d\n%s", res.StatusCode, page)
	}

	// A queue that cannot count waiting messages still shows the dead
	// letters.
	b.waitingErr = errors.New("down")
	res, page = b.do(t, http.MethodGet, "/ui/", nil, true)
	if res.StatusCode != http.StatusOK || !strings.Contains(page, "Not available now") || !strings.Contains(page, "m1") {
		t.Fatalf("waiting counts failing: %d\n%s", res.StatusCode, page)
	}
	// Without statuses there is nothing to count, and the page says so
	// rather than that the queue is down.
	b.waitingErr = fmt.Errorf("waiting: %w", queue.ErrStatusesOff)
	res, page = b.do(t, http.MethodGet, "/ui/", nil, true)
	if res.StatusCode != http.StatusOK || !strings.Contains(page, "records no statuses (statuses=false)") || !strings.Contains(page, "m1") {
		t.Fatalf("waiting counts with statuses off: %d\n%s", res.StatusCode, page)
	}
}

// signIn signs in with the token and returns the session cookie.
func (b *bundle) signIn(t *testing.T) *http.Cookie {
	t.Helper()
	res, _ := b.do(t, http.MethodPost, "/ui/login", url.Values{"token": {token}}, false)
	if res.StatusCode != http.StatusSeeOther || len(res.Cookies()) != 1 {
		t.Fatalf("sign-in: %d, cookies %v", res.StatusCode, res.Cookies())
	}
	return res.Cookies()[0]
}

// with sends GET path with cookie c and returns the status.
func (b *bundle) with(t *testing.T, method, path string, c *http.Cookie, header ...string) int {
	t.Helper()
	req, _ := http.NewRequest(method, b.srv.URL+path, nil)
	if c != nil {
		req.AddCookie(c)
	}
	for i := 0; i+1 < len(header); i += 2 {
		req.Header.Set(header[i], header[i+1])
	}
	res, err := client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	res.Body.Close()
	return res.StatusCode
}

func TestSessionEndsOnTheServer(t *testing.T) {
	b := setup(t)
	c := b.signIn(t)
	if code := b.with(t, http.MethodGet, "/ui/", c); code != http.StatusOK {
		t.Fatalf("signed in: %d", code)
	}
	if code := b.with(t, http.MethodPost, "/ui/logout", c); code != http.StatusSeeOther {
		t.Fatalf("sign out: %d", code)
	}
	// The browser forgot the cookie; one kept (copied, stolen) is
	// refused all the same.
	if code := b.with(t, http.MethodGet, "/ui/", c); code != http.StatusSeeOther {
		t.Fatalf("the cookie after sign-out: %d, want 303 to the sign-in form", code)
	}

	// A session expires on the server, whatever the browser keeps.
	c = b.signIn(t)
	b.clock.add(time.Hour)
	if code := b.with(t, http.MethodGet, "/ui/", c); code != http.StatusSeeOther {
		t.Fatalf("an expired session: %d, want 303 to the sign-in form", code)
	}
}

// The page takes its session only: not the bearer token, nor a signature.
func TestOnlyTheSessionOpensThePage(t *testing.T) {
	b := setup(t)
	m := hmac.New(sha256.New, []byte(token))
	emptyBody := "sha256=" + hex.EncodeToString(m.Sum(nil))
	m = hmac.New(sha256.New, []byte(token))
	m.Write([]byte("mailbox-ui-session"))
	oldSession := &http.Cookie{Name: auth.CookieSession, Value: hex.EncodeToString(m.Sum(nil))}
	for name, h := range map[string][]string{
		"the empty body's signature": {"X-Mailbox-Signature", emptyBody},
		"the bearer token":           {"Authorization", "Bearer " + token},
	} {
		if code := b.with(t, http.MethodGet, "/ui/", nil, h...); code != http.StatusSeeOther {
			t.Errorf("GET /ui/ with %s: %d, want 303 to the sign-in form", name, code)
		}
	}
	if code := b.with(t, http.MethodGet, "/ui/", oldSession); code != http.StatusSeeOther {
		t.Errorf("GET /ui/ with the old fixed session value: %d, want 303 to the sign-in form", code)
	}
}

func TestSignInThrottled(t *testing.T) {
	b := setup(t)
	for range 10 {
		res, _ := b.do(t, http.MethodPost, "/ui/login", url.Values{"token": {"guess"}}, false)
		if res.StatusCode != http.StatusUnauthorized {
			t.Fatalf("a wrong token: %d, want 401", res.StatusCode)
		}
	}
	// Past the burst, even the right token waits: the guess is not tried.
	res, page := b.do(t, http.MethodPost, "/ui/login", url.Values{"token": {token}}, false)
	if res.StatusCode != http.StatusTooManyRequests || res.Header.Get("Retry-After") == "" || len(res.Cookies()) != 0 || !strings.Contains(page, "Too many failed sign-ins") {
		t.Fatalf("sign-in after 10 failures: %d, Retry-After %q, cookies %v", res.StatusCode, res.Header.Get("Retry-After"), res.Cookies())
	}
	b.clock.add(10 * time.Second)
	b.signIn(t)
}

// gatedBody is a sign-in form that arrives only when release is closed;
// reached is called when the handler first reads it.
type gatedBody struct {
	release <-chan struct{}
	reached func()
	r       io.Reader
}

func (g *gatedBody) Read(p []byte) (int, error) {
	g.reached()
	<-g.release
	return g.r.Read(p)
}

// Many connections sending their forms slowly must not each get a guess:
// the attempt is taken from the bucket before the form is read, so at
// most the burst is tried however many wait on their bodies.
func TestSignInThrottleNotRacedBySlowBodies(t *testing.T) {
	b := setup(t)
	const n = 30
	release := make(chan struct{})
	var releaseOnce sync.Once
	t.Cleanup(func() { releaseOnce.Do(func() { close(release) }) })
	reached := make(chan struct{}, n) // one per request: reading its form, or answered without
	codes := make(chan int, n)
	for range n {
		go func() {
			var once sync.Once
			signal := func() { once.Do(func() { reached <- struct{}{} }) }
			req := httptest.NewRequest(http.MethodPost, "/ui/login", &gatedBody{release: release, reached: signal, r: strings.NewReader("token=guess")})
			req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
			req.RemoteAddr = "192.0.2.9:1234"
			rec := httptest.NewRecorder()
			b.h.ServeHTTP(rec, req)
			signal()
			codes <- rec.Code
		}()
	}
	deadline := time.After(10 * time.Second)
	for range n {
		select {
		case <-reached:
		case <-deadline:
			t.Fatal("the sign-ins neither read their forms nor were answered")
		}
	}
	releaseOnce.Do(func() { close(release) })
	tried, throttled := 0, 0
	for range n {
		select {
		case code := <-codes:
			switch code {
			case http.StatusUnauthorized:
				tried++
			case http.StatusTooManyRequests:
				throttled++
			default:
				t.Errorf("a wrong token: %d", code)
			}
		case <-deadline:
			t.Fatal("the sign-ins were not answered")
		}
	}
	if tried > 10 || throttled < n-10 {
		t.Fatalf("%d concurrent slow guesses: %d tried, %d answered 429; want at most the burst (10) tried", n, tried, throttled)
	}
}

// TestSignInNotLockedOutByAPIGuesses: wrong bearer tokens at the API from
// an address (behind the gateway, every caller's) do not spend the sign-in
// form's budget, so an operator typing the right token gets in.
func TestSignInNotLockedOutByAPIGuesses(t *testing.T) {
	b := setup(t)
	guard, err := auth.NewGuard(b.token, prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	h, err := ui.New(ui.Options{Store: b.store, Token: b.token, Guard: guard, Waiting: b.q.Waiting})
	if err != nil {
		t.Fatal(err)
	}
	for range 20 {
		r := httptest.NewRequest(http.MethodGet, "/deadletters", nil)
		r.RemoteAddr = "192.0.2.9:1"
		r.Header.Set("Authorization", "Bearer guess")
		guard.Authorize(httptest.NewRecorder(), r, auth.Management, nil)
	}
	req := httptest.NewRequest(http.MethodPost, "/ui/login", strings.NewReader(url.Values{"token": {token}}.Encode()))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.RemoteAddr = "192.0.2.9:2"
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, req)
	if rec.Code != http.StatusSeeOther {
		t.Fatalf("signing in with the token after 20 wrong bearer tokens from the address: %d, want 303", rec.Code)
	}
}

func TestBulkPurgeOfEverythingNeedsAll(t *testing.T) {
	b := setup(t)
	res, page := b.do(t, http.MethodPost, "/ui/bulk", url.Values{"action": {"purge"}}, true)
	if res.StatusCode != http.StatusBadRequest || !strings.Contains(page, "every dead letter") {
		t.Fatalf("bulk purge without a filter nor all: %d\n%s", res.StatusCode, page)
	}
	res, _ = b.do(t, http.MethodPost, "/ui/bulk", url.Values{"action": {"purge"}, "function": {"fn"}}, true)
	if res.StatusCode != http.StatusSeeOther {
		t.Fatalf("bulk purge with a filter: %d", res.StatusCode)
	}
	// The page's form asks for the box when there is no filter.
	if err := b.q.DeadLetter(t.Context(), &envelope.Envelope{ID: "m1", Function: "fn", Reason: envelope.ReasonRejected, DeadAt: time.Now()}); err != nil {
		t.Fatal(err)
	}
	poll.Until(t, 10*time.Second, "the dead letter listed with a purge form", func() bool {
		_, page = b.do(t, http.MethodGet, "/ui/", nil, true)
		return strings.Contains(page, `id="purge-all"`)
	})
	if !strings.Contains(page, `name="all" value="true"`) || !strings.Contains(page, "required") {
		t.Fatalf("the purge form has no required all box:\n%s", page)
	}
}
