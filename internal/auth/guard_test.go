package auth_test

import (
	"bytes"
	"encoding/json"
	"errors"
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

func newGuard(t *testing.T, reg prometheus.Registerer) *auth.Guard {
	t.Helper()
	g, err := auth.NewGuard(newToken(t, secret), reg)
	if err != nil {
		t.Fatal(err)
	}
	return g
}

func unauthorized(t *testing.T, reg prometheus.Gatherer, e auth.Endpoint) float64 {
	t.Helper()
	return metricstest.Sum(t, reg, "mailbox_unauthorized_total", "endpoint", string(e))
}

func TestAuthorize(t *testing.T) {
	t.Parallel()

	sig, ts := signAt(secret, http.MethodPost, "/x", nil, []byte("b"), time.Now().Unix())
	oldSig := oldEmptyBodySignature(secret)
	endpoints := []auth.Endpoint{auth.Requeue, auth.Management, auth.UI}
	for _, tc := range []struct {
		name      string
		endpoint  auth.Endpoint
		header    map[string]string
		cookie    bool
		body      []byte
		want      bool
		wantError string // the JSON error, when refused
		wantField string
	}{
		{name: "requeue with the bearer", endpoint: auth.Requeue, header: map[string]string{"Authorization": "Bearer " + secret}, want: true},
		{name: "management with the bearer", endpoint: auth.Management, header: map[string]string{"Authorization": "Bearer " + secret}, want: true},
		{name: "requeue with a signature", endpoint: auth.Requeue, header: map[string]string{auth.HeaderSignature: sig, "X-Mailbox-Timestamp": ts}, body: []byte("b"), want: true},
		{name: "management with a right signature", endpoint: auth.Management, header: map[string]string{auth.HeaderSignature: sig, "X-Mailbox-Timestamp": ts}, body: []byte("b"),
			wantError: auth.ErrMissingToken.Error(), wantField: "Authorization"},
		{name: "management with the old empty-body signature", endpoint: auth.Management, header: map[string]string{auth.HeaderSignature: oldSig},
			wantError: auth.ErrMissingToken.Error(), wantField: "Authorization"},
		{name: "ui with the old empty-body signature", endpoint: auth.UI, header: map[string]string{auth.HeaderSignature: oldSig},
			wantError: auth.ErrMissingToken.Error(), wantField: "Authorization"},
		{name: "management with a cookie", endpoint: auth.Management, cookie: true,
			wantError: auth.ErrMissingToken.Error(), wantField: "Authorization"},
		{name: "requeue with a cookie", endpoint: auth.Requeue, cookie: true,
			wantError: auth.ErrMissingRequeueToken.Error(), wantField: "Authorization"},
		{name: "requeue without credentials", endpoint: auth.Requeue,
			wantError: auth.ErrMissingRequeueToken.Error(), wantField: "Authorization"},
		{name: "management with a wrong bearer", endpoint: auth.Management, header: map[string]string{"Authorization": "Bearer " + secret + "x"},
			wantError: auth.ErrBadToken.Error(), wantField: "Authorization"},
		{name: "requeue with a bad signature", endpoint: auth.Requeue, header: map[string]string{auth.HeaderSignature: sig, "X-Mailbox-Timestamp": ts}, body: []byte("other"),
			wantError: auth.ErrBadSignature.Error(), wantField: "X-Mailbox-Signature"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			reg := prometheus.NewRegistry()
			g := newGuard(t, reg)
			r := httptest.NewRequest(http.MethodPost, "/x", bytes.NewReader(tc.body))
			for k, v := range tc.header {
				r.Header.Set(k, v)
			}
			if tc.cookie {
				r.AddCookie(&http.Cookie{Name: auth.CookieSession, Value: "x"})
			}
			w := httptest.NewRecorder()

			got := g.Authorize(w, r, tc.endpoint, tc.body)
			if got != tc.want {
				t.Fatalf("Authorize = %v, want %v", got, tc.want)
			}
			for _, e := range endpoints {
				want := 0.0
				if !tc.want && e == tc.endpoint {
					want = 1
				}
				if n := unauthorized(t, reg, e); n != want {
					t.Errorf("mailbox_unauthorized_total{endpoint=%q} = %v, want %v", e, n, want)
				}
			}
			if tc.want {
				if w.Body.Len() != 0 || len(w.Header()) != 0 {
					t.Errorf("an authorized request was answered: %d %v %q", w.Code, w.Header(), w.Body)
				}
				return
			}
			if w.Code != http.StatusUnauthorized {
				t.Errorf("code %d, want 401", w.Code)
			}
			if h := w.Header().Get("WWW-Authenticate"); h != `Bearer realm="mailbox"` {
				t.Errorf("WWW-Authenticate %q", h)
			}
			if ct := w.Header().Get("Content-Type"); ct != "application/json" {
				t.Errorf("Content-Type %q", ct)
			}
			var body map[string]string
			if err := json.Unmarshal(w.Body.Bytes(), &body); err != nil {
				t.Fatalf("body %q: %v", w.Body, err)
			}
			if body["error"] != tc.wantError || body["field"] != tc.wantField || len(body) != 2 {
				t.Errorf("body %v, want error %q field %q", body, tc.wantError, tc.wantField)
			}
			if strings.Contains(w.Body.String(), secret) {
				t.Errorf("the answer quotes the token: %s", w.Body)
			}
		})
	}
}

func TestGuardSharesTheCounter(t *testing.T) {
	t.Parallel()

	reg := prometheus.NewRegistry()
	a, b := newGuard(t, reg), newGuard(t, reg) // registering twice works
	refuse := func(g *auth.Guard, e auth.Endpoint) {
		g.Authorize(httptest.NewRecorder(), httptest.NewRequest(http.MethodGet, "/", nil), e, nil)
	}
	refuse(a, auth.Management)
	refuse(b, auth.Management)
	refuse(b, auth.UI)
	a.Count(auth.UI) // a refusal the caller answers itself
	for e, want := range map[auth.Endpoint]float64{auth.Requeue: 0, auth.Management: 2, auth.UI: 2, auth.Metrics: 0} {
		if n := unauthorized(t, reg, e); n != want {
			t.Errorf("mailbox_unauthorized_total{endpoint=%q} = %v, want %v", e, n, want)
		}
	}
	// Every endpoint has a series from the start.
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == "mailbox_unauthorized_total" && len(mf.GetMetric()) != 4 {
			t.Errorf("%d series, want 4", len(mf.GetMetric()))
		}
	}
}

func TestNewGuardErrors(t *testing.T) {
	t.Parallel()

	if _, err := auth.NewGuard(nil, prometheus.NewRegistry()); err == nil {
		t.Error("NewGuard without a token: no error")
	}
	if _, err := auth.NewGuard(newToken(t, secret), nil); err == nil {
		t.Error("NewGuard without a Registerer: no error")
	}
	// Another kind of collector under the name is an error, not a panic.
	reg := prometheus.NewRegistry()
	reg.MustRegister(prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "mailbox_unauthorized_total",
		Help: "Requests refused for a missing or wrong token, signature or session, by endpoint (requeue, management, ui).",
	}, []string{"endpoint"}))
	if _, err := auth.NewGuard(newToken(t, secret), reg); err == nil {
		t.Error("NewGuard over a GaugeVec of the same name: no error")
	}
}

func TestUnauthorizedOtherError(t *testing.T) {
	t.Parallel()
	reg := prometheus.NewRegistry()
	g := newGuard(t, reg)
	w := httptest.NewRecorder()
	g.Unauthorized(w, auth.Requeue, errors.New("session expired"))
	if w.Code != http.StatusUnauthorized || w.Body.String() != `{"error":"session expired","field":"Authorization"}`+"\n" {
		t.Errorf("answered %d %q", w.Code, w.Body)
	}
	if n := unauthorized(t, reg, auth.Requeue); n != 1 {
		t.Errorf("counted %v, want 1", n)
	}
}

func TestReadBody(t *testing.T) {
	t.Parallel()

	t.Run("restores the body", func(t *testing.T) {
		t.Parallel()
		r := httptest.NewRequest(http.MethodPost, "/", strings.NewReader("hello"))
		b, err := auth.ReadBody(httptest.NewRecorder(), r, 5)
		if err != nil || string(b) != "hello" {
			t.Fatalf("ReadBody = %q, %v", b, err)
		}
		again, err := io.ReadAll(r.Body)
		if err != nil || string(again) != "hello" {
			t.Errorf("r.Body after ReadBody = %q, %v", again, err)
		}
	})
	t.Run("over the limit", func(t *testing.T) {
		t.Parallel()
		r := httptest.NewRequest(http.MethodPost, "/", strings.NewReader("hello!"))
		_, err := auth.ReadBody(httptest.NewRecorder(), r, 5)
		if _, ok := errors.AsType[*http.MaxBytesError](err); !ok {
			t.Errorf("ReadBody over the limit: %v, want *http.MaxBytesError", err)
		}
	})
	t.Run("no body", func(t *testing.T) {
		t.Parallel()
		r := httptest.NewRequest(http.MethodGet, "/", nil)
		b, err := auth.ReadBody(httptest.NewRecorder(), r, 5)
		if b != nil || err != nil {
			t.Errorf("ReadBody without a body = %q, %v", b, err)
		}
	})
	t.Run("signature over the read body", func(t *testing.T) {
		t.Parallel()
		tok := newToken(t, secret)
		r := httptest.NewRequest(http.MethodPost, "/deadletter/fn", strings.NewReader("signed"))
		sig, ts := signAt(secret, http.MethodPost, "/deadletter/fn", nil, []byte("signed"), now.Unix())
		r.Header.Set(auth.HeaderSignature, sig)
		r.Header.Set("X-Mailbox-Timestamp", ts)
		b, err := auth.ReadBody(httptest.NewRecorder(), r, 1<<10)
		if err != nil {
			t.Fatal(err)
		}
		if err := tok.CheckRequeue(r, b, now, time.Minute); err != nil {
			t.Errorf("CheckRequeue: %v", err)
		}
	})
}

// Wrong bearer tokens and signatures are guesses: past the burst a client
// address gets 429 with Retry-After instead of 401, counted, on every
// endpoint the guard protects. The right token still passes from that
// address: behind the gateway the address is everyone's, and a guesser
// must not lock the token's holders out. A request without a credential
// guesses nothing and is not throttled.
func TestGuardThrottlesGuesses(t *testing.T) {
	t.Parallel()
	reg := prometheus.NewRegistry()
	clk := &clock{t: now}
	g, err := auth.NewGuard(newToken(t, secret), reg, auth.WithClock(clk.now))
	if err != nil {
		t.Fatal(err)
	}
	from := func(addr string, header ...string) *http.Request {
		r := httptest.NewRequest(http.MethodGet, "/deadletters", nil)
		r.RemoteAddr = addr + ":1234"
		for i := 0; i+1 < len(header); i += 2 {
			r.Header.Set(header[i], header[i+1])
		}
		return r
	}
	authorize := func(r *http.Request, e auth.Endpoint) *httptest.ResponseRecorder {
		w := httptest.NewRecorder()
		g.Authorize(w, r, e, nil)
		return w
	}
	guess := []string{"Authorization", "Bearer guess"}
	for i := range 10 {
		e := []auth.Endpoint{auth.Management, auth.Metrics}[i%2]
		if w := authorize(from("192.0.2.1", guess...), e); w.Code != http.StatusUnauthorized {
			t.Fatalf("guess %d: %d, want 401", i, w.Code)
		}
	}
	for _, e := range []auth.Endpoint{auth.Management, auth.Metrics, auth.Requeue} {
		w := authorize(from("192.0.2.1", guess...), e)
		if w.Code != http.StatusTooManyRequests {
			t.Fatalf("%s: a guess past the burst: %d, want 429", e, w.Code)
		}
		secs, err := strconv.Atoi(w.Header().Get("Retry-After"))
		if err != nil || secs < 1 || secs > 6 {
			t.Errorf("%s: Retry-After %q, want 1 to 6 s", e, w.Header().Get("Retry-After"))
		}
		var body map[string]string
		if err := json.Unmarshal(w.Body.Bytes(), &body); err != nil || body["field"] != "Authorization" || !strings.Contains(body["error"], "too many") {
			t.Errorf("%s: body %q", e, w.Body)
		}
	}
	// A signature is a guess as well.
	if w := authorize(from("192.0.2.1", auth.HeaderSignature, "v1=00", "X-Mailbox-Timestamp", strconv.FormatInt(now.Unix(), 10)), auth.Requeue); w.Code != http.StatusTooManyRequests {
		t.Errorf("a wrong signature past the burst: %d, want 429", w.Code)
	}
	// The holder of the token is never refused for others' guesses.
	for _, e := range []auth.Endpoint{auth.Management, auth.Metrics, auth.Requeue} {
		if !g.Authorize(httptest.NewRecorder(), from("192.0.2.1", "Authorization", "Bearer "+secret), e, nil) {
			t.Errorf("%s: the right token refused after others' guesses", e)
		}
	}
	// No credential is no guess: 401 saying what to send.
	if w := authorize(from("192.0.2.1"), auth.Management); w.Code != http.StatusUnauthorized {
		t.Errorf("no credential: %d, want 401", w.Code)
	}
	// Another address, and a header posing as one.
	if w := authorize(from("192.0.2.2", guess...), auth.Management); w.Code != http.StatusUnauthorized {
		t.Errorf("another address: %d, want 401", w.Code)
	}
	if w := authorize(from("192.0.2.1", "Authorization", "Bearer guess", "X-Forwarded-For", "198.51.100.7"), auth.Management); w.Code != http.StatusTooManyRequests {
		t.Errorf("X-Forwarded-For escaped the throttle: %d", w.Code)
	}
	// Every refusal is counted: 10 guesses, 3 + 1 + 1 throttled, 2 more 401s.
	var total float64
	for _, e := range []auth.Endpoint{auth.Requeue, auth.Management, auth.UI, auth.Metrics} {
		total += unauthorized(t, reg, e)
	}
	if total != 17 {
		t.Errorf("mailbox_unauthorized_total = %v, want 17", total)
	}
	// The bucket refills: one guess per 6 s.
	clk.add(6 * time.Second)
	if w := authorize(from("192.0.2.1", guess...), auth.Management); w.Code != http.StatusUnauthorized {
		t.Errorf("after 6 s: %d, want 401", w.Code)
	}
}
