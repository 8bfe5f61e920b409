package api

import (
	"io"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/openfaas/mailbox/internal/auth"
	"github.com/openfaas/mailbox/internal/metricstest"
)

const testToken = "api-test-token"

// withToken guards the handler with testToken; requeue needs it when
// requeueAuth is true.
func withToken(t *testing.T, requeueAuth bool) func(*Options) {
	return func(o *Options) {
		token, err := auth.NewToken(testToken)
		if err != nil {
			t.Fatal(err)
		}
		if o.Guard, err = auth.NewGuard(token, o.Registerer); err != nil {
			t.Fatal(err)
		}
		o.RequeueAuth = requeueAuth
	}
}

// signed is the headers of a POST to path with body, signed now.
func signed(t *testing.T, token *auth.Token, path string, body []byte) http.Header {
	t.Helper()
	h := http.Header{}
	if err := token.SignRequest(http.MethodPost, path, h, body, time.Now()); err != nil {
		t.Fatal(err)
	}
	return h
}

func TestManagementAndPageOffWithoutToken(t *testing.T) {
	t.Parallel()
	b := setup(t, nil)
	for _, path := range []string{"/deadletters", "/deadletters/x", "/ui", "/ui/login"} {
		w := b.do(http.MethodGet, path, nil, nil)
		body := wantError(t, w, http.StatusNotFound, "")
		if !strings.Contains(body["error"].(string), "auth_token_secret") {
			t.Errorf("GET %s: %v, want it to say how to turn it on", path, body)
		}
	}
	// Requeue and status stay open.
	if w := b.do(http.MethodPost, "/deadletter/fn", []byte("x"), nil); w.Code != http.StatusAccepted {
		t.Fatalf("requeue without a token configured: %d", w.Code)
	}
}

func TestRequeueNeedsTheToken(t *testing.T) {
	t.Parallel()
	b := setup(t, withToken(t, true))
	unauthorized := func(endpoint string) float64 {
		return metricstest.Sum(t, b.reg, "mailbox_unauthorized_total", "endpoint", endpoint)
	}
	token, _ := auth.NewToken(testToken)

	for _, c := range []struct {
		name   string
		header http.Header
		field  string
	}{
		{"none", nil, "Authorization"},
		{"wrong bearer", http.Header{"Authorization": {"Bearer nope"}}, "Authorization"},
		{"wrong signature", signed(t, token, "/deadletter/fn", []byte("other body")), auth.HeaderSignature},
	} {
		w := b.do(http.MethodPost, "/deadletter/fn", []byte("body"), c.header)
		wantError(t, w, http.StatusUnauthorized, c.field)
		if w.Header().Get("WWW-Authenticate") == "" {
			t.Errorf("%s: no WWW-Authenticate", c.name)
		}
	}
	wantNothingStored(t, b.queue)
	if n := unauthorized("requeue"); n != 3 {
		t.Fatalf("mailbox_unauthorized_total{endpoint=requeue} = %v, want 3", n)
	}
	if n := metricstest.Sum(t, b.reg, "mailbox_requeue_requests_total", "code", "401"); n != 3 {
		t.Fatalf("mailbox_requeue_requests_total{code=401} = %v, want 3", n)
	}

	if w := b.do(http.MethodPost, "/deadletter/fn", []byte("body"), http.Header{"Authorization": {"Bearer " + testToken}}); w.Code != http.StatusAccepted {
		t.Fatalf("with the bearer token: %d %s", w.Code, w.Body)
	}
	w := b.do(http.MethodPost, "/deadletter/fn", []byte("signed body"), signed(t, token, "/deadletter/fn", []byte("signed body")))
	if w.Code != http.StatusAccepted {
		t.Fatalf("with a signature: %d %s", w.Code, w.Body)
	}
	scheduled, _ := b.queue.stored()
	if len(scheduled) != 2 || string(scheduled[1].Body) != "signed body" || scheduled[1].Header.Get(auth.HeaderSignature) != "" || scheduled[0].Header.Get("Authorization") != "" {
		t.Fatalf("stored %d; the signed one: body %q, headers %v", len(scheduled), scheduled[1].Body, scheduled[1].Header)
	}

	// The status of a message needs the token too.
	wantError(t, b.do(http.MethodGet, "/messages/abc", nil, nil), http.StatusUnauthorized, "Authorization")
	if n := unauthorized("management"); n != 1 {
		t.Fatalf("mailbox_unauthorized_total{endpoint=management} = %v, want 1", n)
	}
}

func TestRequeueOpenWithRequeueAuthOff(t *testing.T) {
	t.Parallel()
	b := setup(t, withToken(t, false))
	if w := b.do(http.MethodPost, "/deadletter/fn", []byte("x"), nil); w.Code != http.StatusAccepted {
		t.Fatalf("requeue without the token, requeue_auth off: %d %s", w.Code, w.Body)
	}
	wantError(t, b.do(http.MethodGet, "/messages/abc", nil, nil), http.StatusUnauthorized, "Authorization")
}

func TestRequeueTargets(t *testing.T) {
	t.Parallel()
	b := setup(t, func(o *Options) {
		targets, err := auth.NewTargets([]string{"allowed", "dlq"}, nil, "mailbox")
		if err != nil {
			t.Fatal(err)
		}
		o.Targets = targets
	})
	for _, c := range []struct {
		name, fn, dlf string
		code          int
		field         string
	}{
		{"the mailbox itself", "mailbox", "", http.StatusForbidden, "function"},
		{"not allowed", "other", "", http.StatusForbidden, "function"},
		{"its own dead-letter function", "allowed", "allowed.openfaas-fn", http.StatusBadRequest, "X-Dead-Letter-Function"},
		{"dead letters to the mailbox", "allowed", "mailbox", http.StatusForbidden, "X-Dead-Letter-Function"},
		{"dead letters to a function not allowed", "allowed", "other", http.StatusForbidden, "X-Dead-Letter-Function"},
	} {
		h := http.Header{}
		if c.dlf != "" {
			h.Set("X-Dead-Letter-Function", c.dlf)
		}
		w := b.do(http.MethodPost, "/deadletter/"+c.fn, []byte("x"), h)
		if w.Code != c.code {
			t.Errorf("%s: %d %s, want %d", c.name, w.Code, w.Body, c.code)
			continue
		}
		wantError(t, w, c.code, c.field)
	}
	wantNothingStored(t, b.queue)
	h := http.Header{"X-Dead-Letter-Function": {"dlq"}}
	if w := b.do(http.MethodPost, "/deadletter/allowed", []byte("x"), h); w.Code != http.StatusAccepted {
		t.Fatalf("allowed, with an allowed dead-letter function: %d %s", w.Code, w.Body)
	}
}

// With keep_credentials the caller's own Authorization is kept for the
// function, but never the mailbox's token.
func TestTokenNeverStored(t *testing.T) {
	t.Parallel()
	b := setup(t, func(o *Options) {
		withToken(t, true)(o)
		o.KeepCredentials = true
	})
	token, _ := auth.NewToken(testToken)
	if w := b.do(http.MethodPost, "/deadletter/fn", []byte("a"), http.Header{"Authorization": {"Bearer " + testToken}}); w.Code != http.StatusAccepted {
		t.Fatalf("with the token: %d %s", w.Code, w.Body)
	}
	h := signed(t, token, "/deadletter/fn", []byte("b"))
	h.Set("Authorization", "Basic Zm46c2VjcmV0")
	w := b.do(http.MethodPost, "/deadletter/fn", []byte("b"), h)
	if w.Code != http.StatusAccepted {
		t.Fatalf("signed, with the caller's own credentials: %d %s", w.Code, w.Body)
	}
	scheduled, _ := b.queue.stored()
	if len(scheduled) != 2 || scheduled[0].Header.Get("Authorization") != "" || scheduled[1].Header.Get("Authorization") != "Basic Zm46c2VjcmV0" {
		t.Fatalf("stored Authorization headers: %q, %q", scheduled[0].Header.Get("Authorization"), scheduled[1].Header.Get("Authorization"))
	}
}

// TestMetricsAuth: with MetricsAuth, /metrics and /_metrics answer only a
// bearer token; a signature (of the empty body, or any other), a session
// cookie or nothing is a 401. /healthz stays open for probes.
func TestMetricsAuth(t *testing.T) {
	t.Parallel()
	b := setup(t, func(o *Options) {
		withToken(t, true)(o)
		o.MetricsAuth = true
	})
	token, _ := auth.NewToken(testToken)
	session, err := token.Sessions(time.Hour, nil).Start(false)
	if err != nil {
		t.Fatal(err)
	}
	for _, path := range []string{"/metrics", "/_metrics"} {
		for _, c := range []struct {
			name   string
			header http.Header
		}{
			{"none", nil},
			{"wrong bearer", http.Header{"Authorization": {"Bearer nope"}}},
			{"signature of the empty body", http.Header{auth.HeaderSignature: {emptyBodySignature()}}},
			{"session cookie", http.Header{"Cookie": {session.String()}}},
		} {
			w := b.do(http.MethodGet, path, nil, c.header)
			wantError(t, w, http.StatusUnauthorized, "Authorization")
			if strings.Contains(w.Body.String(), "mailbox_requeue_requests_total") {
				t.Fatalf("GET %s with %s: the metrics were shown", path, c.name)
			}
		}
		w := b.do(http.MethodGet, path, nil, http.Header{"Authorization": {"Bearer " + testToken}})
		if w.Code != http.StatusOK || !strings.Contains(w.Body.String(), "mailbox_requeue_requests_total") {
			t.Fatalf("GET %s with the token: %d %q", path, w.Code, w.Body)
		}
	}
	if got := metricstest.Sum(t, b.reg, "mailbox_unauthorized_total", "endpoint", "metrics"); got != 8 {
		t.Errorf("mailbox_unauthorized_total{endpoint=metrics} = %v, want 8", got)
	}
	if w := b.do(http.MethodGet, "/healthz", nil, nil); w.Code != http.StatusOK {
		t.Fatalf("/healthz without a token: %d, want 200", w.Code)
	}
}

// TestMetricsOpenByDefault: with a token but without MetricsAuth, /metrics
// answers without one, as Prometheus expects.
func TestMetricsOpenByDefault(t *testing.T) {
	t.Parallel()
	b := setup(t, withToken(t, true))
	if w := b.do(http.MethodGet, "/metrics", nil, nil); w.Code != http.StatusOK {
		t.Fatalf("GET /metrics: %d, want 200", w.Code)
	}
}

func TestMetricsAuthNeedsGuard(t *testing.T) {
	t.Parallel()
	reg := prometheus.NewRegistry()
	_, err := New(Options{Queue: &memQueue{}, Registerer: reg, Gatherer: reg, Defaults: testDefaults(), MetricsAuth: true})
	if err == nil || !strings.Contains(err.Error(), "MetricsAuth") {
		t.Fatalf("New with MetricsAuth and no Guard: %v, want an error naming MetricsAuth", err)
	}
}

// blockingBody is a body that never arrives: Read waits until the test
// ends.
type blockingBody struct{ done <-chan struct{} }

func (b blockingBody) Read([]byte) (int, error) {
	<-b.done
	return 0, io.ErrUnexpectedEOF
}

// A requeue whose credential is wrong on its face is refused before its
// body is read: a stranger cannot make the mailbox wait for and buffer up
// to max_body_bytes with any X-Mailbox-Signature value.
func TestRequeueRefusedBeforeTheBodyIsRead(t *testing.T) {
	t.Parallel()
	b := setup(t, withToken(t, true))
	hex64 := strings.Repeat("ab", 32)
	fresh := strconv.FormatInt(time.Now().Unix(), 10)
	stale := strconv.FormatInt(time.Now().Add(-time.Hour).Unix(), 10)
	for _, c := range []struct {
		name   string
		header http.Header
		field  string
	}{
		{"garbage signature", http.Header{auth.HeaderSignature: {"garbage"}, "X-Mailbox-Timestamp": {fresh}}, auth.HeaderSignature},
		{"short signature", http.Header{auth.HeaderSignature: {"v1=abcd"}, "X-Mailbox-Timestamp": {fresh}}, auth.HeaderSignature},
		{"signature not hex", http.Header{auth.HeaderSignature: {"v1=" + strings.Repeat("zz", 32)}, "X-Mailbox-Timestamp": {fresh}}, auth.HeaderSignature},
		{"no timestamp", http.Header{auth.HeaderSignature: {"v1=" + hex64}}, "X-Mailbox-Timestamp"},
		{"stale timestamp", http.Header{auth.HeaderSignature: {"v1=" + hex64}, "X-Mailbox-Timestamp": {stale}}, "X-Mailbox-Timestamp"},
		{"wrong bearer and a garbage signature", http.Header{"Authorization": {"Bearer nope"}, auth.HeaderSignature: {"garbage"}}, "Authorization"},
	} {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			done := make(chan struct{})
			t.Cleanup(func() { close(done) })
			r := httptest.NewRequest(http.MethodPost, "/deadletter/fn", blockingBody{done})
			r.ContentLength = 1 << 10
			for k, vs := range c.header {
				r.Header[k] = vs
			}
			w := httptest.NewRecorder()
			answered := make(chan struct{})
			go func() {
				b.handler.ServeHTTP(w, r)
				close(answered)
			}()
			select {
			case <-answered:
			case <-time.After(10 * time.Second):
				t.Fatal("no answer while the body has not arrived: the body is read before the credential is checked")
			}
			wantError(t, w, http.StatusUnauthorized, c.field)
		})
	}
}

// Wrong bearer tokens are throttled per address on every endpoint the
// guard protects; the right one still passes from the same address.
func TestBearerGuessesThrottled(t *testing.T) {
	t.Parallel()
	b := setup(t, func(o *Options) {
		withToken(t, true)(o)
		o.MetricsAuth = true
	})
	do := func(method, path, bearer string) *httptest.ResponseRecorder {
		r := httptest.NewRequest(method, path, strings.NewReader("x"))
		r.RemoteAddr = "192.0.2.7:1234"
		r.Header.Set("Authorization", "Bearer "+bearer)
		w := httptest.NewRecorder()
		b.handler.ServeHTTP(w, r)
		return w
	}
	requests := []struct{ method, path string }{
		{http.MethodGet, "/messages/abc"}, {http.MethodGet, "/metrics"}, {http.MethodPost, "/deadletter/fn"},
	}
	for i := range 10 {
		c := requests[i%len(requests)]
		wantError(t, do(c.method, c.path, "guess"), http.StatusUnauthorized, "Authorization")
	}
	for _, c := range requests {
		w := do(c.method, c.path, "guess")
		wantError(t, w, http.StatusTooManyRequests, "Authorization")
		if w.Header().Get("Retry-After") == "" {
			t.Errorf("%s %s: 429 without Retry-After", c.method, c.path)
		}
	}
	for _, c := range requests {
		// Past the guard: /messages/abc is unknown (404).
		if w := do(c.method, c.path, testToken); w.Code == http.StatusUnauthorized || w.Code == http.StatusTooManyRequests {
			t.Errorf("%s %s with the token after others' guesses: %d %s", c.method, c.path, w.Code, w.Body)
		}
	}
	if n := metricstest.Sum(t, b.reg, "mailbox_requeue_requests_total", "code", "429"); n != 1 {
		t.Errorf("mailbox_requeue_requests_total{code=429} = %v, want 1", n)
	}
	var refused float64
	for _, e := range []string{"requeue", "management", "metrics"} {
		refused += metricstest.Sum(t, b.reg, "mailbox_unauthorized_total", "endpoint", e)
	}
	if refused != 13 {
		t.Errorf("mailbox_unauthorized_total = %v, want 13", refused)
	}
}
