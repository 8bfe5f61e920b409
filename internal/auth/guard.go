package auth

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/openfaas/mailbox/internal/metric"
	"github.com/openfaas/mailbox/internal/signature"
)

// Endpoint is the kind of endpoint a Guard protects: the endpoint label of
// mailbox_unauthorized_total.
type Endpoint string

// The endpoints. Each takes its own credential (see the package
// documentation).
const (
	Requeue    Endpoint = "requeue"    // POST /deadletter/<fn>
	Management Endpoint = "management" // the management API
	UI         Endpoint = "ui"         // the web UI
	Metrics    Endpoint = "metrics"    // /metrics with metrics_auth
)

// Guard checks requests against a Token, answers those it refuses and
// counts them.
type Guard struct {
	token        *Token
	unauthorized *prometheus.CounterVec
	window       time.Duration
	now          func() time.Time
}

// A GuardOption changes a Guard.
type GuardOption func(*Guard)

// WithWindow sets how far a signed requeue's X-Mailbox-Timestamp may be
// from now (signature_window). Defaults to signature.DefaultWindow; 0 or
// less keeps the default.
func WithWindow(d time.Duration) GuardOption {
	return func(g *Guard) {
		if d > 0 {
			g.window = d
		}
	}
}

// WithClock sets the clock signatures are checked against. Defaults to
// time.Now.
func WithClock(now func() time.Time) GuardOption {
	return func(g *Guard) {
		if now != nil {
			g.now = now
		}
	}
}

// NewGuard returns a Guard for token (required) counting refusals on reg
// (required). Several Guards may share one registry.
func NewGuard(token *Token, reg prometheus.Registerer, opts ...GuardOption) (*Guard, error) {
	if token == nil {
		return nil, errors.New("auth: NewGuard without a token")
	}
	if reg == nil {
		return nil, errors.New("auth: NewGuard without a Registerer")
	}
	c, err := UnauthorizedCounter(reg)
	if err != nil {
		return nil, err
	}
	g := &Guard{token: token, unauthorized: c, window: signature.DefaultWindow, now: time.Now}
	for _, o := range opts {
		if o != nil {
			o(g)
		}
	}
	return g, nil
}

// UnauthorizedCounter returns mailbox_unauthorized_total{endpoint} on reg,
// registering it on first use, with a series at zero for each Endpoint.
func UnauthorizedCounter(reg prometheus.Registerer) (*prometheus.CounterVec, error) {
	c := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "mailbox_unauthorized_total",
		Help: "Requests refused for a missing or wrong token, signature or session, by endpoint (requeue, management, ui, metrics).",
	}, []string{"endpoint"})
	c, err := metric.Shared(reg, c)
	if err != nil {
		return nil, fmt.Errorf("auth: registering metrics: %w", err)
	}
	for _, e := range []Endpoint{Requeue, Management, UI, Metrics} {
		c.WithLabelValues(string(e))
	}
	return c, nil
}

// Authorize returns true when r carries the credential e takes: on
// Requeue the bearer token or a signature of r (Token.CheckRequeue; body
// is r's raw body as read by ReadBody), anywhere else the bearer token
// only (Token.CheckBearer; the web page checks its sessions itself).
// Otherwise it answers with Unauthorized and returns false.
func (g *Guard) Authorize(w http.ResponseWriter, r *http.Request, e Endpoint, body []byte) bool {
	var err error
	if e == Requeue {
		err = g.token.CheckRequeue(r, body, g.now(), g.window)
	} else {
		err = g.token.CheckBearer(r)
	}
	if err == nil {
		return true
	}
	g.Unauthorized(w, e, err)
	return false
}

// bearer reports whether h carries Authorization: Bearer <token>.
func (g *Guard) bearer(h http.Header) bool {
	return g.token.CheckBearer(&http.Request{Header: h}) == nil
}

// StripToken removes the Authorization header from h when it carries the
// token: the mailbox's credential, never to be stored with a message or
// passed on to a function, even with keep_credentials.
func (g *Guard) StripToken(h http.Header) {
	if g.bearer(h) {
		h.Del("Authorization")
	}
}

// Count counts a refusal under e that the caller answers itself, as the
// web page does by sending a browser to its sign-in form.
func (g *Guard) Count(e Endpoint) { g.unauthorized.WithLabelValues(string(e)).Inc() }

// Unauthorized answers 401 with WWW-Authenticate: Bearer realm="mailbox"
// and the JSON body {"error": err, "field": the header err is about}, and
// counts the refusal under e.
func (g *Guard) Unauthorized(w http.ResponseWriter, e Endpoint, err error) {
	g.unauthorized.WithLabelValues(string(e)).Inc()
	body := struct {
		Error string `json:"error"`
		Field string `json:"field,omitempty"`
	}{Error: err.Error(), Field: "Authorization"}
	if ae, ok := errors.AsType[*Error](err); ok {
		body.Field = ae.Field()
	}
	w.Header().Set("WWW-Authenticate", `Bearer realm="mailbox"`)
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(http.StatusUnauthorized)
	enc := json.NewEncoder(w)
	enc.SetEscapeHTML(false) // the messages show <token>; nosniff keeps it JSON
	_ = enc.Encode(body)
}

// ReadBody reads r's body, at most limit bytes, and puts what it read back
// as r.Body, so the handler after the check reads the same bytes. A body
// over limit is an *http.MaxBytesError (the caller answers 413); after an
// error r.Body is spent.
func ReadBody(w http.ResponseWriter, r *http.Request, limit int64) ([]byte, error) {
	if r.Body == nil || r.Body == http.NoBody {
		return nil, nil
	}
	b, err := io.ReadAll(http.MaxBytesReader(w, r.Body, limit))
	if err != nil {
		return nil, err
	}
	r.Body = io.NopCloser(bytes.NewReader(b))
	return b, nil
}
