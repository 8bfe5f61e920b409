package auth

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/openfaas/mailbox/internal/metric"
)

// Endpoint is the kind of endpoint a Guard protects: the endpoint label of
// mailbox_unauthorized_total.
type Endpoint string

// The endpoints. Only UI accepts the session cookie.
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
}

// NewGuard returns a Guard for token (required) counting refusals on reg
// (required). Several Guards may share one registry.
func NewGuard(token *Token, reg prometheus.Registerer) (*Guard, error) {
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
	return &Guard{token: token, unauthorized: c}, nil
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

// Authorize returns true when r carries the token (see Token.Check; the
// session cookie counts only when e is UI). Otherwise it answers with
// Unauthorized and returns false. body is r's raw body if the caller has
// read it (see ReadBody), for X-Mailbox-Signature.
func (g *Guard) Authorize(w http.ResponseWriter, r *http.Request, e Endpoint, body []byte) bool {
	err := g.token.Check(r, body, e == UI)
	if err == nil {
		return true
	}
	g.Unauthorized(w, e, err)
	return false
}

// AuthorizeBearer returns true when r carries Authorization: Bearer
// <token>, the one credential it accepts: what a scraper can send, and no
// signature or cookie, which are made for other requests. Otherwise it
// answers with Unauthorized, counting under e, and returns false.
func (g *Guard) AuthorizeBearer(w http.ResponseWriter, r *http.Request, e Endpoint) bool {
	if g.bearer(r.Header) {
		return true
	}
	err := errMissingBearer
	if r.Header.Get("Authorization") != "" {
		err = ErrBadToken
	}
	g.Unauthorized(w, e, err)
	return false
}

var errMissingBearer = &Error{"Authorization", "missing token: send Authorization: Bearer <token>"}

// bearer reports whether h carries Authorization: Bearer <token>.
func (g *Guard) bearer(h http.Header) bool {
	scheme, cred, _ := strings.Cut(h.Get("Authorization"), " ")
	return strings.EqualFold(scheme, "Bearer") && g.token.Matches(strings.TrimSpace(cred))
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
