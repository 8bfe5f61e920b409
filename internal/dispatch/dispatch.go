// Package dispatch is the connector's work on one due message: check it
// may be delivered at all, invoke the function through the gateway (or
// POST the callback), ask delivery.Decide what follows, and store that
// outcome (a retry or a dead letter) before the message is acknowledged.
// It records the message's status (in flight before the call, then the
// outcome) in the background.
//
// Whatever is on NATS is checked again: anyone who can publish there can
// put a message on the queue without the API's checks, so a message for a
// function the mailbox may not target, or with a callback URL the callback
// policy refuses, is a dead letter with reason refused and no call is
// made. Callbacks have slots of their own (Options.CallbackSlots), apart
// from the queue's delivery slots.
package dispatch

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/http"
	"strconv"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/openfaas/mailbox/internal/auth"
	"github.com/openfaas/mailbox/internal/callback"
	"github.com/openfaas/mailbox/internal/catalog"
	"github.com/openfaas/mailbox/internal/delivery"
	"github.com/openfaas/mailbox/internal/envelope"
	"github.com/openfaas/mailbox/internal/limit"
	"github.com/openfaas/mailbox/internal/queue"
	"github.com/openfaas/mailbox/internal/signature"
	"github.com/openfaas/mailbox/internal/status"
)

// Invoker calls a function, or POSTs a callback; internal/invoke
// implements it over the gateway.
type Invoker interface {
	Invoke(ctx context.Context, function string, body []byte, header http.Header, keep int) delivery.Result
	Post(ctx context.Context, url string, body []byte, header http.Header) delivery.Result
}

// Functions is what the gateway knows of each function: internal/catalog.
type Functions interface {
	// Lookup returns the function; found is false when the gateway does
	// not know it, err set when that cannot be told now.
	Lookup(ctx context.Context, name string) (fn catalog.Function, found bool, err error)
	// Recheck is Lookup after reading the gateway's list again (at most
	// so often): a function answering 404 may have been removed.
	Recheck(ctx context.Context, name string) (fn catalog.Function, found bool, err error)
	// Run keeps the list fresh until ctx ends.
	Run(ctx context.Context)
}

// Limiter holds calls within a function's rate and concurrency limits
// across connector replicas: internal/limit.
type Limiter interface {
	Acquire(ctx context.Context, function string, lim limit.Limits) (release func(), retryAfter time.Duration, slot time.Time, ok bool)
	AcquireReserved(ctx context.Context, function string, lim limit.Limits, slot time.Time) (release func(), retryAfter time.Duration, newSlot time.Time, ok bool)
	// Run takes part in sharing the limits until ctx ends.
	Run(ctx context.Context) error
}

// Signer signs the headers of a call the connector makes: auth.Token.
// Callbacks are signed apart from deliveries, so that neither verifies as
// the other.
type Signer interface {
	SignDelivery(h http.Header, body []byte, now time.Time) error
	SignCallback(h http.Header, body []byte, now time.Time) error
}

// Options configure a Dispatcher.
type Options struct {
	Queue     queue.Queue
	Invoker   Invoker
	Functions Functions
	Limiter   Limiter
	// Defaults are the operator's delivery settings and caps.
	Defaults delivery.Defaults
	// CallbackBodyLimit is the most of a function's answer kept for a
	// message's callback.
	CallbackBodyLimit int
	// Targets are the functions messages may go to: the same as the
	// API's. Required.
	Targets *auth.Targets
	// Callbacks is where callbacks may go: the same as the API's.
	// Required.
	Callbacks *callback.Policy
	// CallbackSlots bounds the callbacks being made at once. A callback
	// that finds none free is stored again for later rather than wait
	// holding a place in the broker's window, which deliveries need.
	// Defaults to 4.
	CallbackSlots int
	// Probe reports whether the gateway answers. It is called only while
	// deliveries are paused after a connection to the gateway failed.
	Probe func(ctx context.Context) error
	// CallBudget is what a delivery needs once it may proceed: the
	// invocation's timeout plus storing its outcome. While the gateway is
	// unreachable a message waits for it until only CallBudget is left
	// before the handler's deadline, then is left for redelivery.
	CallBudget time.Duration
	// Signer, when set, signs every call (auth.Token with a token
	// configured), so that the receiver can tell the mailbox sent it.
	Signer     Signer
	Registerer prometheus.Registerer
	Logger     *slog.Logger
}

// Dispatcher delivers due messages. Run it with Run.
type Dispatcher struct {
	q         queue.Queue
	invoker   Invoker
	functions Functions
	limiter   Limiter
	defaults  delivery.Defaults
	keep      int
	targets   *auth.Targets
	callbacks *callback.Policy
	cbSlots   chan struct{}
	gate      *gate
	budget    time.Duration
	signer    Signer
	m         *metrics
	status    *status.Recorder
	log       *slog.Logger
}

// New returns a Dispatcher, registering its metrics.
func New(o Options) (*Dispatcher, error) {
	if o.Queue == nil || o.Invoker == nil || o.Functions == nil || o.Limiter == nil || o.Probe == nil || o.Registerer == nil ||
		o.Targets == nil || o.Callbacks == nil {
		return nil, errors.New("dispatch: Queue, Invoker, Functions, Limiter, Probe, Registerer, Targets and Callbacks are required")
	}
	if o.CallbackSlots <= 0 {
		o.CallbackSlots = 4
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	m, err := newMetrics(o.Registerer)
	if err != nil {
		return nil, err
	}
	log := o.Logger.With("component", "dispatch")
	rec, err := status.NewRecorder(o.Queue, o.Registerer, log)
	if err != nil {
		return nil, err
	}
	return &Dispatcher{
		q:         o.Queue,
		invoker:   o.Invoker,
		functions: o.Functions,
		limiter:   o.Limiter,
		defaults:  o.Defaults,
		keep:      o.CallbackBodyLimit,
		targets:   o.Targets,
		callbacks: o.Callbacks,
		cbSlots:   make(chan struct{}, o.CallbackSlots),
		gate:      newGate(o.Probe, m.gatewayUp, m.gatewayPauses, log),
		budget:    o.CallBudget,
		signer:    o.Signer,
		m:         m,
		status:    rec,
		log:       log,
	}, nil
}

// Run consumes and delivers messages until ctx ends, then returns once
// in-flight deliveries have finished.
func (d *Dispatcher) Run(ctx context.Context) error {
	gateCtx, stopGate := context.WithCancel(ctx)
	var background sync.WaitGroup
	defer func() {
		// Consume may end before ctx does (the queue closed): stop the
		// background work either way before waiting for it.
		stopGate()
		background.Wait()
	}()
	background.Go(func() { d.functions.Run(gateCtx) })
	background.Go(func() {
		if err := d.limiter.Run(gateCtx); err != nil {
			d.log.Error("limit sharing stopped", "error", err)
		}
	})
	background.Go(func() {
		// Ask the gateway once at start: when it cannot be reached,
		// deliveries wait for it before any retry is spent, and refused
		// credentials show in the log now rather than at the first outage.
		if err := d.gate.probe(gateCtx); err != nil {
			d.gate.trip()
		}
		d.gate.run(gateCtx)
	})
	err := d.q.Consume(ctx, d.handle)
	// The statuses of the last deliveries, if the broker takes them soon.
	flush, cancel := context.WithTimeout(context.Background(), statusFlush)
	defer cancel()
	d.status.Wait(flush)
	return err
}

// statusFlush bounds the wait for the last statuses at shutdown.
const statusFlush = 5 * time.Second

// handle delivers one due message. It returns nil once the outcome is
// stored, so the queue may forget the message; an error leaves the message
// to be delivered again.
func (d *Dispatcher) handle(ctx context.Context, e *envelope.Envelope) error {
	if err := d.refuse(e); err != nil {
		return d.act(ctx, e, delivery.Refuse(e, err.Error(), time.Now().UTC()), delivery.Result{})
	}
	if e.Kind == envelope.KindCallback {
		select {
		case d.cbSlots <- struct{}{}:
			defer func() { <-d.cbSlots }()
		default:
			// Stored again for later: waiting here would hold a place in
			// the broker's window that deliveries need.
			return d.act(ctx, e, delivery.Defer(e, time.Now().UTC().Add(callbackWait(e.Holds)), time.Time{}), delivery.Result{})
		}
	}
	// While the gateway is unreachable every call would fail the same way:
	// wait for it instead of spending the message's retries.
	waitCtx := ctx
	if deadline, ok := ctx.Deadline(); ok {
		var cancel context.CancelFunc
		waitCtx, cancel = context.WithDeadline(ctx, deadline.Add(-d.budget))
		defer cancel()
	}
	if err := d.gate.wait(waitCtx); err != nil {
		return fmt.Errorf("gateway unreachable, delivery postponed: %w", err)
	}
	if e.Kind == envelope.KindCallback {
		policy := delivery.Resolve(e, envelope.Policy{}, d.defaults)
		return d.call(ctx, e, policy, func() delivery.Result {
			h, err := d.sign(e, e.Header.Clone())
			if err != nil {
				return delivery.Result{Err: err}
			}
			return d.invoker.Post(ctx, e.CallbackURL, e.Body, h)
		})
	}

	fn, found, err := d.functions.Lookup(ctx, e.Function)
	if err != nil {
		// The gateway's list cannot be read now: go by the message and
		// the defaults, and let the call tell whether the function exists.
		d.log.Debug("function lookup failed", "function", e.Function, "error", err)
	}
	policy := delivery.Resolve(e, fn.Policy, d.defaults)
	now := time.Now().UTC()
	if dec, ok := delivery.Expired(e, policy, now); ok {
		return d.act(ctx, e, dec, delivery.Result{})
	}
	if err == nil && !found {
		missing := delivery.Result{NoSuchFunction: true}
		return d.act(ctx, e, delivery.Decide(e, policy, missing, now, rand.Float64()), missing)
	}

	if lim := fn.Limits; lim != (limit.Limits{}) {
		var (
			release    func()
			retryAfter time.Duration
			slot       time.Time
			ok         bool
		)
		// One budget per function however the message names it (fn or
		// fn.namespace); limits come only with a function the gateway lists.
		key := fn.Name + "." + fn.Namespace
		if e.SlotAt.IsZero() {
			release, retryAfter, slot, ok = d.limiter.Acquire(ctx, key, lim)
		} else {
			release, retryAfter, slot, ok = d.limiter.AcquireReserved(ctx, key, lim, e.SlotAt)
		}
		if !ok {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			d.m.deferred.WithLabelValues(d.m.function.Label(e.Function)).Inc()
			return d.act(ctx, e, delivery.Defer(e, time.Now().UTC().Add(retryAfter), slot), delivery.Result{})
		}
		defer release()
	}

	keep := 0
	if policy.CallbackURL != "" {
		keep = d.keep
	}
	return d.call(ctx, e, policy, func() delivery.Result {
		h, err := d.sign(e, Header(e, policy))
		if err != nil {
			return delivery.Result{Err: err}
		}
		res := d.invoker.Invoke(ctx, e.Function, e.Body, h, keep)
		if res.Err == nil && res.Status == http.StatusNotFound {
			// The function's own 404 is a rejection; the gateway's means
			// the function is gone, which the list tells apart.
			if _, found, err := d.functions.Recheck(ctx, e.Function); err == nil && !found {
				res.NoSuchFunction = true
			}
		}
		return res
	})
}

// refuse returns why e must not be delivered at all, or nil: the API's
// checks, made again on what was consumed. A message must go to a
// function the mailbox may target, its dead letters not back to it, and
// a callback URL, its own or a callback's, must pass the callback policy.
func (d *Dispatcher) refuse(e *envelope.Envelope) error {
	if e.CallbackURL != "" || e.Kind == envelope.KindCallback {
		if err := d.callbacks.Check(e.CallbackURL); err != nil {
			return err
		}
	}
	if e.Kind == envelope.KindCallback {
		// Its function only names the message it reports on.
		return nil
	}
	deadLetterFunction := e.DeadLetterFunction
	if e.Kind != envelope.KindMessage {
		deadLetterFunction = "" // never routed again
	}
	return d.targets.CheckMessage(e.Function, deadLetterFunction)
}

// callbackWait is how long a callback that found no free slot waits
// before it is tried again: a second, doubling with each such hold up to
// half a minute, and up to half that again at random so that callbacks
// held together do not all come back together.
func callbackWait(holds int) time.Duration {
	// Clamped both ways: a forged envelope may carry any holds, and a
	// shift by a negative count panics.
	w := min(time.Second<<min(max(holds, 0), 5), 30*time.Second)
	return w + time.Duration(rand.Int64N(int64(w/2)+1))
}

// call makes one attempt with do, decides and stores the outcome.
func (d *Dispatcher) call(ctx context.Context, e *envelope.Envelope, policy delivery.Policy, do func() delivery.Result) error {
	start := time.Now()
	d.status.Record(status.Of(e, status.InFlight, start))
	res := do()
	if ctx.Err() != nil {
		// Shutting down or the broker connection is gone: this call does
		// not count as an attempt.
		return ctx.Err()
	}
	if e.Kind != envelope.KindCallback {
		// A callback URL is not the gateway: neither its timing nor its
		// being unreachable says anything about the gateway or the function.
		fn := d.m.function.Label(e.Function)
		d.m.lateness.WithLabelValues(fn).Observe(start.Sub(e.DueAt).Seconds())
		d.m.duration.WithLabelValues(fn).Observe(time.Since(start).Seconds())
		if isDialError(res.Err) {
			d.gate.trip()
		}
	}
	if e.Kind == envelope.KindCallback && errors.Is(res.Err, callback.ErrRefused) {
		// Refused at dial time (the name resolved to an address the
		// policy refuses): trying again would be refused again.
		return d.act(ctx, e, delivery.Refuse(e, res.Err.Error(), time.Now().UTC()), res)
	}
	return d.act(ctx, e, delivery.Decide(e, policy, res, time.Now().UTC(), rand.Float64()), res)
}

// act stores dec, the decision about e after res, and counts and logs it.
func (d *Dispatcher) act(ctx context.Context, e *envelope.Envelope, dec delivery.Decision, res delivery.Result) error {
	if err := dec.Store(ctx, d.q); err != nil {
		return err
	}
	// Only once the outcome is stored, and in the background: a status
	// never holds up or fails a delivery.
	d.status.Record(dec.Statuses(e, res.Status, time.Now())...)
	log := d.log.With("id", e.ID, "kind", e.Kind, "function", e.Function, "retries", e.Retries, "status", res.Status)
	fn := d.m.function.Label(e.Function)
	if e.Kind == envelope.KindCallback {
		// A callback is not a delivery to the function it reports on.
		if dec.Action == delivery.DeadLetter {
			d.m.deadLetters.WithLabelValues(fn, dec.Next.Reason).Inc()
		}
		switch {
		case dec.Action == delivery.DeadLetter && dec.Next.Reason == envelope.ReasonRefused:
			log.Warn("callback refused: kept as a dead letter, not called", "url", callback.Redact(e.CallbackURL), "error", dec.Next.LastError)
		case dec.Action == delivery.Retry && dec.Next.Retries == e.Retries:
			log.Debug("callback held back: no callback slot free", "due_at", dec.Next.DueAt)
		default:
			// Only calls made are counted.
			d.m.callbacks.WithLabelValues(dec.Action.String()).Inc()
			log.Debug("callback", "url", callback.Redact(e.CallbackURL), "action", dec.Action.String())
		}
		return nil
	}
	switch {
	case dec.Action == delivery.DeadLetter && dec.Next.Reason == envelope.ReasonRefused:
		d.m.deadLetters.WithLabelValues(fn, dec.Next.Reason).Inc()
		log.Warn("message refused: kept as a dead letter, not delivered", "error", dec.Next.LastError)
	case dec.Action == delivery.Ack:
		d.m.delivered.WithLabelValues(fn).Inc()
		log.Debug("delivered")
	case dec.Action == delivery.Retry && dec.Next.Retries == e.Retries:
		log.Debug("held back, not an attempt", "due_at", dec.Next.DueAt, "no_such_function", res.NoSuchFunction)
	case dec.Action == delivery.Retry:
		d.m.retried.WithLabelValues(fn).Inc()
		log.Info("delivery failed, retry scheduled", "due_at", dec.Next.DueAt, "error", res.Err)
	case dec.Action == delivery.DeadLetter:
		d.m.deadLetters.WithLabelValues(fn, dec.Next.Reason).Inc()
		log.Warn("message is now a dead letter", "reason", dec.Next.Reason, "error", res.Err,
			"routed_to", routedTo(dec), "callback", dec.Callback != nil)
	}
	return nil
}

func routedTo(dec delivery.Decision) string {
	if dec.Route == nil {
		return ""
	}
	return dec.Route.Function
}

// Header is what a delivery of e under p sends: the kept request headers
// plus the mailbox's control headers with the settled values. Stored
// headers the mailbox sets itself are dropped first (the API does not
// store them, but an envelope stored before it did, or put on NATS by
// hand, may hold them): the delivery's signature covers only the
// mailbox's values.
func Header(e *envelope.Envelope, p delivery.Policy) http.Header {
	h := envelope.StripHeader(e.Header, e.Kind == envelope.KindDeadLetter)
	if h == nil {
		h = http.Header{}
	}
	h.Set(envelope.HeaderRetries, strconv.Itoa(e.Retries))
	h.Set(envelope.HeaderMaxRetries, strconv.Itoa(p.MaxRetries))
	h.Set(envelope.HeaderDelay, formatDelay(p.Delay))
	h.Set(envelope.HeaderMessageID, e.ID)
	return h
}

// sign signs h, the headers of a call with e, naming e's function
// (signature.HeaderFunction), when the dispatcher has a Signer. A header
// that cannot be signed (a line break, only in a forged envelope) fails
// the attempt rather than sending it unsigned.
func (d *Dispatcher) sign(e *envelope.Envelope, h http.Header) (http.Header, error) {
	if d.signer == nil {
		return h, nil
	}
	if h == nil {
		h = http.Header{}
	}
	h.Set(signature.HeaderFunction, e.Function)
	sign := d.signer.SignDelivery
	if e.Kind == envelope.KindCallback {
		// Its X-Mailbox-Function names the function it reports on: signed
		// as a delivery, its receiver could replay it to that function.
		sign = d.signer.SignCallback
	}
	if err := sign(h, e.Body, time.Now()); err != nil {
		return nil, err
	}
	return h, nil
}

// formatDelay writes whole seconds as an integer, as the seed's clients
// parse it, and anything finer as a Go duration, which the API accepts too.
func formatDelay(d time.Duration) string {
	if d%time.Second == 0 {
		return strconv.FormatInt(int64(d/time.Second), 10)
	}
	return d.String()
}

// isDialError reports a call that never reached the gateway. A timeout or
// a reset after connecting is the function's failure, not the gateway's.
func isDialError(err error) bool {
	var op *net.OpError
	return errors.As(err, &op) && op.Op == "dial"
}
