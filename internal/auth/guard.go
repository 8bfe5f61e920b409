package auth

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
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
//
// Wrong credentials are guesses, throttled per client address (Throttle):
// past the budget a wrong bearer token or signature is answered 429 with
// Retry-After instead of 401. The credential is always checked first, and
// a right one always passes: behind the gateway every caller has the
// gateway's address, and refusing before the check would let anyone who
// can reach the gateway lock every holder of the token out (functions
// requeueing their messages included) for one request every few seconds.
// The price: the throttle does not cap how fast the bearer token can be
// guessed, only tells a guesser to slow down and counts it; a token of 32
// random bytes or more is what makes guessing hopeless (the mailbox warns
// at start-up about a shorter one, WarnIfWeak). The web page's sign-in form,
// whose lockout only delays signing in, takes from the same bucket before
// it reads the form.
type Guard struct {
	token        *Token
	unauthorized *prometheus.CounterVec
	throttle     *Throttle
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

// WithThrottle sets the Throttle the Guard counts wrong credentials on.
// Defaults to a new one on the Guard's clock; nil keeps the default.
func WithThrottle(t *Throttle) GuardOption {
	return func(g *Guard) {
		if t != nil {
			g.throttle = t
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
	if g.throttle == nil {
		g.throttle = NewThrottle(g.now)
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
// Otherwise it answers (Check) and returns false.
func (g *Guard) Authorize(w http.ResponseWriter, r *http.Request, e Endpoint, body []byte) bool {
	return g.Check(w, r, e, body) == 0
}

// Check is Authorize returning 0 when r may go on, else the status it
// answered: 401, or 429 for a wrong credential past its client's budget.
func (g *Guard) Check(w http.ResponseWriter, r *http.Request, e Endpoint, body []byte) int {
	var err error
	if e == Requeue {
		err = g.token.CheckRequeue(r, body, g.now(), g.window)
	} else {
		err = g.token.CheckBearer(r)
	}
	if err == nil {
		return 0
	}
	return g.refuse(w, r, e, err)
}

// CheckHeaders checks what of r's requeue credential can be checked
// before its body is read: a bearer token fully, a signature's form and
// its timestamp's window. It returns 0 when r may go on, with needBody
// true when a signature still has to be checked with the body (Check),
// else the status it answered. So a stranger cannot make the mailbox read
// and buffer a body, up to max_body_bytes, with a credential that is
// wrong on its face.
func (g *Guard) CheckHeaders(w http.ResponseWriter, r *http.Request, e Endpoint) (needBody bool, code int) {
	var err error
	if e == Requeue {
		needBody, err = g.token.CheckRequeueHeaders(r, g.now(), g.window)
	} else {
		err = g.token.CheckBearer(r)
	}
	if err == nil {
		return needBody, 0
	}
	return false, g.refuse(w, r, e, err)
}

// refuse answers a request whose credential failed with err: 401, or 429
// when it presented one (a guess) past its client's budget.
func (g *Guard) refuse(w http.ResponseWriter, r *http.Request, e Endpoint, err error) int {
	if err != ErrMissingToken && err != ErrMissingRequeueToken {
		if wait := g.throttle.Fail(r); wait > 0 {
			g.TooMany(w, e, wait)
			return http.StatusTooManyRequests
		}
	}
	g.Unauthorized(w, e, err)
	return http.StatusUnauthorized
}

// TooMany answers 429 with Retry-After (wait, in whole seconds) and a
// JSON error, and counts the refusal under e.
func (g *Guard) TooMany(w http.ResponseWriter, e Endpoint, wait time.Duration) {
	g.unauthorized.WithLabelValues(string(e)).Inc()
	secs := RetryAfter(wait)
	w.Header().Set("Retry-After", strconv.Itoa(secs))
	writeError(w, http.StatusTooManyRequests, fmt.Sprintf("too many wrong credentials from your address: retry in %d s", secs), "Authorization")
}

// RetryAfter is wait in whole seconds, rounded up, at least 1: a
// Retry-After value.
func RetryAfter(wait time.Duration) int {
	return max(1, int((wait+time.Second-1)/time.Second))
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
	field := "Authorization"
	if ae, ok := errors.AsType[*Error](err); ok {
		field = ae.Field()
	}
	w.Header().Set("WWW-Authenticate", `Bearer realm="mailbox"`)
	writeError(w, http.StatusUnauthorized, err.Error(), field)
}

// writeError answers code with the JSON body {"error": msg, "field": field}.
func writeError(w http.ResponseWriter, code int, msg, field string) {
	body := struct {
		Error string `json:"error"`
		Field string `json:"field,omitempty"`
	}{Error: msg, Field: field}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(code)
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
