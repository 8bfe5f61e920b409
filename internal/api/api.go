// Package api is the mailbox's requeue HTTP API: a function that cannot
// finish its work now POSTs the message to /deadletter/<function> and the
// mailbox stores it durably for a later retry, or as a dead letter once its
// retries are spent. The same handler is served by the OpenFaaS function and
// by the standalone binary.
package api

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/openfaas/mailbox/internal/auth"
	"github.com/openfaas/mailbox/internal/callback"
	"github.com/openfaas/mailbox/internal/deadletter"
	"github.com/openfaas/mailbox/internal/delivery"
	"github.com/openfaas/mailbox/internal/envelope"
	"github.com/openfaas/mailbox/internal/queue"
	"github.com/openfaas/mailbox/internal/status"
	"github.com/openfaas/mailbox/internal/ui"
)

// retryAfterSeconds is sent with 503 answers: long enough for a broker
// reconnect, short enough that a caller's message is not held up for long.
const retryAfterSeconds = "5"

// storageRetryAfterSeconds is sent with 507 answers for a full broker
// store: space comes back as waiting messages are delivered or an
// operator frees it, which takes longer than a reconnect.
const storageRetryAfterSeconds = "30"

// The causes named in 503 and 507 answers.
const (
	causeUnavailable = "broker unavailable"
	causeTimeout     = "broker timeout"
	causeStorageFull = "broker storage full"
)

// Options configures the handler returned by New.
type Options struct {
	// Queue stores accepted messages. Required.
	Queue queue.Queue

	// Defaults are the mailbox's delivery defaults and caps: headers
	// above a cap are refused rather than capped, so a caller learns its
	// value was not honoured. The API knows no function's annotations:
	// the wait before the first delivery and the answer's max_retries use
	// the headers, then these defaults.
	Defaults delivery.Defaults

	// MaxBodyBytes is the largest request body accepted. It is lowered to
	// Queue.MaxPayload() whenever that is smaller, checked per request as
	// the broker's limit is only known once connected. Defaults to
	// Queue.MaxPayload() when 0; negative is an error.
	MaxBodyBytes int64

	// KeepCredentials keeps the Authorization and Cookie headers in the
	// stored message. Defaults to false: credentials would otherwise sit
	// at rest on the broker and be replayed long after they were sent.
	KeepCredentials bool

	// Registerer receives the API's metrics. Required.
	Registerer prometheus.Registerer
	// Gatherer is served on /metrics and /_metrics. Required.
	Gatherer prometheus.Gatherer

	// StatusRetention is how long statuses are kept, as the queue was
	// told; GET /messages/<id> names it when it knows no status. Defaults
	// to 24h.
	StatusRetention time.Duration

	// Targets refuses requeues to functions the mailbox may not target;
	// nil allows every function.
	Targets *auth.Targets

	// Callbacks is where X-Callback-Url may point. Required.
	Callbacks *callback.Policy

	// Guard, when set, asks for the token on the management API, on
	// GET /messages/<id> and, with RequeueAuth, on requeues. It must be
	// set with DeadLetters and UI.
	Guard       *auth.Guard
	RequeueAuth bool
	// MetricsAuth makes /metrics and /_metrics ask Guard for the bearer
	// token. Defaults to false: open, as Prometheus expects.
	MetricsAuth bool
	// DeadLetters serves the management API under /deadletters, and UI
	// the web page under /ui; nil turns them off.
	DeadLetters *deadletter.Store
	UI          http.Handler

	// Storage, when set, is asked before every requeue whether the
	// broker's store has room (diskspace.Guard.Check): an error wrapping
	// queue.ErrStorageFull refuses the requeue with 507 before anything
	// is reserved or stored. Nil: only the broker's answer counts.
	Storage func() error

	// Logger receives operational logs; request bodies are never logged.
	// Defaults to discarding logs.
	Logger *slog.Logger
	// Now is the clock. Defaults to time.Now.
	Now func() time.Time
}

func (o *Options) validate() error {
	var errs []error
	if o.Queue == nil {
		errs = append(errs, errors.New("Queue is required"))
	}
	if o.Defaults.MaxRetries < 0 {
		errs = append(errs, fmt.Errorf("Defaults.MaxRetries is %d, must be >= 0", o.Defaults.MaxRetries))
	}
	if o.Defaults.MaxRetriesLimit < o.Defaults.MaxRetries {
		errs = append(errs, fmt.Errorf("Defaults.MaxRetriesLimit is %d, must be >= Defaults.MaxRetries (%d)", o.Defaults.MaxRetriesLimit, o.Defaults.MaxRetries))
	}
	if o.Defaults.Delay < 0 {
		errs = append(errs, fmt.Errorf("Defaults.Delay is %s, must be >= 0", o.Defaults.Delay))
	}
	if o.Defaults.MaxDelay < o.Defaults.Delay {
		errs = append(errs, fmt.Errorf("Defaults.MaxDelay is %s, must be >= Defaults.Delay (%s)", o.Defaults.MaxDelay, o.Defaults.Delay))
	}
	if o.MaxBodyBytes < 0 {
		errs = append(errs, fmt.Errorf("MaxBodyBytes is %d, must be >= 0", o.MaxBodyBytes))
	}
	if o.Callbacks == nil {
		errs = append(errs, errors.New("Callbacks is required"))
	}
	if (o.DeadLetters != nil || o.UI != nil) && o.Guard == nil {
		errs = append(errs, errors.New("Guard is required with DeadLetters or UI: they are never served without a token"))
	}
	if o.MetricsAuth && o.Guard == nil {
		errs = append(errs, errors.New("Guard is required with MetricsAuth"))
	}
	if o.Registerer == nil {
		errs = append(errs, errors.New("Registerer is required"))
	}
	if o.Gatherer == nil {
		errs = append(errs, errors.New("Gatherer is required"))
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("api: invalid options: %w", err)
	}
	return nil
}

type handler struct {
	queue           queue.Queue
	defaults        delivery.Defaults
	maxBodyBytes    int64
	keepCredentials bool
	log             *slog.Logger
	now             func() time.Time
	metrics         *metrics
	ops             http.Handler
	status          *status.Recorder
	retention       time.Duration
	deadLetterStore *deadletter.Store
	ui              http.Handler
	targets         *auth.Targets
	callbacks       *callback.Policy
	guard           *auth.Guard
	requeueAuth     bool
	storage         func() error
}

// New returns the requeue API handler. It fails when o is invalid or its
// metrics cannot be registered on o.Registerer (for example, registered
// twice on the same registry).
func New(o Options) (http.Handler, error) {
	if err := o.validate(); err != nil {
		return nil, err
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	m, err := newMetrics(o.Registerer, o.Queue, o.Logger)
	if err != nil {
		return nil, err
	}
	rec, err := status.NewRecorder(o.Queue, o.Registerer, o.Logger)
	if err != nil {
		return nil, fmt.Errorf("api: registering metrics: %w", err)
	}
	if o.StatusRetention <= 0 {
		o.StatusRetention = 24 * time.Hour
	}
	var metricsGuard *auth.Guard
	if o.MetricsAuth {
		metricsGuard = o.Guard
	}
	h := &handler{
		queue:           o.Queue,
		defaults:        o.Defaults,
		maxBodyBytes:    o.MaxBodyBytes,
		keepCredentials: o.KeepCredentials,
		log:             o.Logger,
		now:             o.Now,
		metrics:         m,
		ops:             Ops(o.Queue, o.Gatherer, metricsGuard),
		status:          rec,
		retention:       o.StatusRetention,
		deadLetterStore: o.DeadLetters,
		ui:              o.UI,
		targets:         o.Targets,
		callbacks:       o.Callbacks,
		guard:           o.Guard,
		requeueAuth:     o.RequeueAuth,
		storage:         o.Storage,
	}
	if h.now == nil {
		h.now = time.Now
	}
	return h, nil
}

// ServeHTTP routes on the escaped path so that percent-encoded characters
// reach the validation below as written, not decoded.
func (h *handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	path := r.URL.EscapedPath()
	switch {
	case path == "/deadletter" || strings.HasPrefix(path, deadletterPrefix):
		code := h.requeue(w, r, path)
		h.metrics.requests.WithLabelValues(strconv.Itoa(code)).Inc()
	case path == "/messages" || strings.HasPrefix(path, messagesPrefix):
		if h.guard == nil || h.guard.Authorize(w, r, auth.Management, nil) {
			h.messageStatus(w, r, path)
		}
	case path == deadLettersPath || strings.HasPrefix(path, deadLettersPrefix):
		if h.deadLetterStore == nil {
			writeError(w, http.StatusNotFound, "", "the management API is off: set auth_token_secret to turn it on")
			return
		}
		if h.guard.Authorize(w, r, auth.Management, nil) {
			h.deadLetters(w, r, path)
		}
	case path == ui.Prefix || strings.HasPrefix(path, ui.Prefix+"/"):
		if h.ui == nil {
			writeError(w, http.StatusNotFound, "", "the web page is off: set auth_token_secret to turn it on")
			return
		}
		h.ui.ServeHTTP(w, r)
	case path == "/healthz" || path == "/metrics" || path == "/_metrics":
		h.ops.ServeHTTP(w, r)
	default:
		writeError(w, http.StatusNotFound, "", "not found")
	}
}

// Ops serves what every mailbox process answers, the connector included:
// GET /healthz (200 only while the broker is connected) and the Prometheus
// metrics at /metrics and, as the original mailbox did, /_metrics. With
// metricsGuard the metrics need its bearer token (metrics_auth); nil
// leaves them open, as Prometheus expects.
func Ops(q queue.Queue, g prometheus.Gatherer, metricsGuard *auth.Guard) http.Handler {
	metrics := promhttp.HandlerFor(g, promhttp.HandlerOpts{})
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		path := r.URL.EscapedPath()
		if path != "/healthz" && path != "/metrics" && path != "/_metrics" {
			writeError(w, http.StatusNotFound, "", "not found")
			return
		}
		if !allowRead(w, r) {
			return
		}
		if path != "/healthz" {
			if metricsGuard != nil && !metricsGuard.Authorize(w, r, auth.Metrics, nil) {
				return
			}
			metrics.ServeHTTP(w, r)
			return
		}
		if !q.Connected() {
			writeError(w, http.StatusServiceUnavailable, "", "queue broker is not connected")
			return
		}
		writeJSON(w, http.StatusOK, map[string]string{"status": "ok"})
	})
}

// allowRead answers 405 unless r is a GET or HEAD.
func allowRead(w http.ResponseWriter, r *http.Request) bool {
	if r.Method == http.MethodGet || r.Method == http.MethodHead {
		return true
	}
	w.Header().Set("Allow", "GET, HEAD")
	writeError(w, http.StatusMethodNotAllowed, "", "method "+r.Method+" not allowed")
	return false
}

// scheduledResponse is the 202 answer.
type scheduledResponse struct {
	Status     string `json:"status"`
	ID         string `json:"id"`
	Function   string `json:"function"`
	Retries    int    `json:"retries"`
	MaxRetries int    `json:"max_retries"`
	DueAt      string `json:"due_at"`
}

// repeatResponse is the 200 answer to a requeue of a message already
// waiting: the same function, id and X-Retries (a client repeating a
// requeue after a timeout). Nothing more was stored.
type repeatResponse struct {
	Status   string `json:"status"`
	Repeat   bool   `json:"repeat"`
	ID       string `json:"id"`
	Function string `json:"function"`
	Retries  int    `json:"retries"`
}

// deadLetteredResponse is the 200 answer for a message whose retries are
// spent.
type deadLetteredResponse struct {
	Status     string `json:"status"`
	Reason     string `json:"reason"`
	ID         string `json:"id"`
	Function   string `json:"function"`
	Retries    int    `json:"retries"`
	MaxRetries int    `json:"max_retries"`
}

// requeue handles /deadletter/... and returns the status code it wrote,
// for the requests counter.
func (h *handler) requeue(w http.ResponseWriter, r *http.Request, path string) int {
	if r.Method != http.MethodPost && r.Method != http.MethodPut {
		w.Header().Set("Allow", "POST, PUT")
		return writeError(w, http.StatusMethodNotAllowed, "", "method "+r.Method+" not allowed: use POST or PUT")
	}
	if code, ok := h.authorizeRequeue(w, r); !ok {
		return code
	}
	function, err := messageType(path)
	if err != nil {
		return writeFieldError(w, http.StatusBadRequest, err)
	}
	// Headers before the body: a bad request is refused without reading
	// up to MaxBodyBytes first.
	p, err := parseParams(r.Header, h.defaults, h.callbacks)
	if err != nil {
		return writeFieldError(w, http.StatusBadRequest, err)
	}
	if err := checkText(r.Header, h.keepCredentials); err != nil {
		return writeFieldError(w, http.StatusBadRequest, err)
	}
	// A routed dead letter is never routed again: its dead-letter
	// function cannot loop.
	deadLetterFunction := p.policy.DeadLetterFunction
	if p.routed {
		deadLetterFunction = ""
	}
	if err := h.checkTargets(function, deadLetterFunction); err != nil {
		code := http.StatusForbidden
		if errors.Is(err, auth.ErrLoop) {
			code = http.StatusBadRequest
		}
		return writeFieldError(w, code, err)
	}
	if p.id == "" {
		if p.id, err = newMessageID(); err != nil {
			h.log.Error("requeue: cannot generate message id", "function", function, "error", err)
			return writeError(w, http.StatusInternalServerError, "", "cannot generate message id")
		}
	}

	limit := h.bodyLimit()
	if limit <= 0 {
		// No configured limit and the broker's is not known yet (not
		// connected): a write could not succeed now anyway.
		return writeUnavailable(w, causeUnavailable)
	}
	if r.ContentLength > limit {
		return writeError(w, http.StatusRequestEntityTooLarge, "", fmt.Sprintf("body of %d bytes is larger than the limit of %d bytes", r.ContentLength, limit))
	}
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, limit))
	if err != nil {
		if _, ok := errors.AsType[*http.MaxBytesError](err); ok {
			return writeError(w, http.StatusRequestEntityTooLarge, "", fmt.Sprintf("body is larger than the limit of %d bytes", limit))
		}
		h.log.Debug("requeue: reading body", "function", function, "id", p.id, "error", err)
		return writeError(w, http.StatusBadRequest, "", "cannot read request body")
	}

	if h.guard != nil {
		h.guard.StripToken(r.Header)
	}
	now := h.now().UTC()
	e := &envelope.Envelope{
		ID:         p.id,
		Function:   function,
		Header:     keptHeaders(r.Header, h.keepCredentials, p.routed),
		Body:       body,
		Retries:    p.retries,
		Policy:     p.policy,
		AcceptedAt: now,
	}
	if p.routed {
		e.Kind = envelope.KindDeadLetter
	}

	// The delivery package owns the rules; the API only acts on its
	// decision.
	policy := delivery.Resolve(e, envelope.Policy{}, h.defaults)
	d := delivery.Admit(e, policy, now, rand.Float64())
	if h.storage != nil {
		if err := h.storage(); err != nil {
			return h.queueError(w, e, d.Action == delivery.DeadLetter, err)
		}
	}
	release, err := h.reserve(r.Context(), d)
	if errors.Is(err, queue.ErrRepeat) {
		return h.repeat(w, e)
	} else if err != nil {
		return h.queueError(w, e, d.Action == delivery.DeadLetter, err)
	}
	repeat, err := d.StoreRepeat(r.Context(), h.queue)
	if err != nil {
		// Nothing of d may be stored: its places go back at once. (A
		// route stored before the failure then counts once its status
		// is read.)
		release()
		return h.queueError(w, e, d.Action == delivery.DeadLetter, err)
	}
	if repeat {
		release()
		return h.repeat(w, e)
	}
	h.status.Record(d.Statuses(e, 0, now)...)
	e = d.Next

	fnLabel := h.metrics.function.Label(function)
	h.metrics.received.WithLabelValues(fnLabel).Inc()
	h.metrics.bodyBytes.Observe(float64(len(body)))
	w.Header().Set(envelope.HeaderMessageID, e.ID)
	if d.Action == delivery.DeadLetter {
		h.metrics.deadLetters.WithLabelValues(fnLabel, e.Reason).Inc()
		h.log.Info("requeue: dead-lettered", "function", function, "id", e.ID, "reason", e.Reason, "retries", e.Retries, "max_retries", policy.MaxRetries)
		return writeJSON(w, http.StatusOK, deadLetteredResponse{
			Status:     "dead-lettered",
			Reason:     e.Reason,
			ID:         e.ID,
			Function:   e.Function,
			Retries:    e.Retries,
			MaxRetries: policy.MaxRetries,
		})
	}
	h.log.Debug("requeue: scheduled", "function", function, "id", e.ID, "retries", e.Retries, "due_at", e.DueAt)
	return writeJSON(w, http.StatusAccepted, scheduledResponse{
		Status:     "scheduled",
		ID:         e.ID,
		Function:   e.Function,
		Retries:    e.Retries,
		MaxRetries: policy.MaxRetries,
		DueAt:      e.DueAt.Format(time.RFC3339Nano),
	})
}

// reserve reserves, against the quotas (Queue.Reserve) and before
// anything is stored, the places of the new messages d would store: the
// message, when scheduled; an instant dead letter, held for
// queue.ReserveFor as it uses storage too, so that a client cannot make
// them without bound; and its routed dead letter, which waits for its
// function. It returns ErrRepeat only for the message itself; a route
// already waiting is stored as a repeat. The check and the reservation
// are one step, so requeues arriving at once cannot all pass a quota.
func (h *handler) reserve(ctx context.Context, d delivery.Decision) (release func(), err error) {
	var claims []status.Claim
	switch d.Action {
	case delivery.Retry:
		claims = append(claims, queue.Claim(d.Next, false, true))
	case delivery.DeadLetter:
		claims = append(claims, queue.Claim(d.Next, true, false))
	}
	if d.Route != nil {
		claims = append(claims, queue.Claim(d.Route, false, false))
	}
	return h.queue.Reserve(ctx, claims...)
}

// repeat answers a requeue of a message already waiting: nothing was
// stored, the first store's status stands.
func (h *handler) repeat(w http.ResponseWriter, e *envelope.Envelope) int {
	w.Header().Set(envelope.HeaderMessageID, e.ID)
	h.log.Debug("requeue: repeat", "function", e.Function, "id", e.ID, "retries", e.Retries)
	return writeJSON(w, http.StatusOK, repeatResponse{
		Status: "repeat", Repeat: true, ID: e.ID, Function: e.Function, Retries: e.Retries,
	})
}

// authorizeRequeue asks for the token when requeues need it. Everything
// that can be checked without the body is checked first (the bearer token;
// a signature's form and its timestamp's window), so that a credential
// wrong on its face is refused before the mailbox waits for and buffers a
// body; only then is a signed request's body read, within the body limit,
// for its signature.
func (h *handler) authorizeRequeue(w http.ResponseWriter, r *http.Request) (int, bool) {
	if h.guard == nil || !h.requeueAuth {
		return 0, true
	}
	needBody, code := h.guard.CheckHeaders(w, r, auth.Requeue)
	if code != 0 {
		return code, false
	}
	if !needBody {
		return 0, true
	}
	limit := h.bodyLimit()
	if limit <= 0 {
		return writeUnavailable(w, causeUnavailable), false
	}
	body, err := auth.ReadBody(w, r, limit)
	if err != nil {
		if _, ok := errors.AsType[*http.MaxBytesError](err); ok {
			return writeError(w, http.StatusRequestEntityTooLarge, "", fmt.Sprintf("body is larger than the limit of %d bytes", limit)), false
		}
		return writeError(w, http.StatusBadRequest, "", "cannot read request body"), false
	}
	if code := h.guard.Check(w, r, auth.Requeue, body); code != 0 {
		return code, false
	}
	return 0, true
}

// checkTargets refuses a message the mailbox may not deliver
// (auth.Targets.CheckMessage), naming the header it is about.
func (h *handler) checkTargets(function, deadLetterFunction string) error {
	err := h.targets.CheckMessage(function, deadLetterFunction)
	if te, ok := errors.AsType[*auth.TargetError](err); ok {
		return &fieldError{field: te.Field, msg: te.Error(), err: err}
	}
	return err
}

// queueError answers a failed queue write. Only a message the broker can
// never take is the caller's fault (413); anything else may succeed later,
// so the caller is told to retry rather than to give up.
func (h *handler) queueError(w http.ResponseWriter, e *envelope.Envelope, dead bool, err error) int {
	if errors.Is(err, queue.ErrTooLarge) {
		return writeError(w, http.StatusRequestEntityTooLarge, "", "message is larger than the broker accepts")
	}
	if qe, ok := errors.AsType[*queue.QuotaError](err); ok {
		// One function's quota is that caller's to slow down (429); the
		// overall ones say the mailbox is full (507).
		code := http.StatusInsufficientStorage
		if qe.Quota == queue.QuotaWaitingPerFunction {
			code = http.StatusTooManyRequests
		}
		// Debug: a flood is refused by the thousand; the requests
		// counter counts the answers.
		h.log.Debug("requeue: refused by a quota", "function", e.Function, "id", e.ID, "quota", qe.Quota, "limit", qe.Limit)
		return writeJSON(w, code, quotaResponse{Error: qe.Error(), Quota: qe.Quota, Limit: qe.Limit, Function: qe.Function})
	}
	if errors.Is(err, queue.ErrStorageFull) {
		// Warn, not error: the mailbox works as meant, refusing what it
		// has no room for; operators free space or grow the store.
		h.log.Warn("requeue: refused, broker storage full",
			"function", e.Function, "id", e.ID, "dead_letter", dead, "error", err)
		w.Header().Set("Retry-After", storageRetryAfterSeconds)
		return writeJSON(w, http.StatusInsufficientStorage, errorResponse{
			Error: "broker storage is full, retry later", Cause: causeStorageFull})
	}
	h.log.Error("requeue: queue write failed",
		"function", e.Function, "id", e.ID, "dead_letter", dead,
		"body_bytes", len(e.Body), "error", err)
	cause := causeUnavailable
	if errors.Is(err, queue.ErrTimeout) {
		cause = causeTimeout
	}
	return writeUnavailable(w, cause)
}

// writeUnavailable answers 503, telling the caller to retry and why.
func writeUnavailable(w http.ResponseWriter, cause string) int {
	w.Header().Set("Retry-After", retryAfterSeconds)
	return writeJSON(w, http.StatusServiceUnavailable, errorResponse{Error: "queue unavailable, retry later", Cause: cause})
}

// bodyLimit is MaxBodyBytes lowered to the broker's max payload, read per
// request because a reconnect may land on a server with another limit.
func (h *handler) bodyLimit() int64 {
	limit := h.maxBodyBytes
	if mp := int64(h.queue.MaxPayload()); mp > 0 && (limit == 0 || mp < limit) {
		limit = mp
	}
	return limit
}

// quotaResponse is the answer to a requeue refused by a quota: which
// one, its limit and, for a function's, the function.
type quotaResponse struct {
	Error    string `json:"error"`
	Quota    string `json:"quota"`
	Limit    int64  `json:"limit"`
	Function string `json:"function,omitempty"`
}

// errorResponse is the body of every error answer. Cause, on 503 and 507
// answers, names what the broker lacks: causeUnavailable, causeTimeout
// or causeStorageFull.
type errorResponse struct {
	Error string `json:"error"`
	Field string `json:"field,omitempty"`
	Cause string `json:"cause,omitempty"`
}

func writeFieldError(w http.ResponseWriter, code int, err error) int {
	if fe, ok := errors.AsType[*fieldError](err); ok {
		return writeError(w, code, fe.field, fe.Error())
	}
	return writeError(w, code, "", err.Error())
}

func writeError(w http.ResponseWriter, code int, field, msg string) int {
	return writeJSON(w, code, errorResponse{Error: msg, Field: field})
}

// writeJSON writes v with code and returns code. The values written are
// plain structs and maps of strings and ints, so encoding cannot fail
// except on a broken connection, which no answer can reach.
func writeJSON(w http.ResponseWriter, code int, v any) int {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(v)
	return code
}
