// Package dispatch is the connector's work on one due message: invoke the
// function through the gateway, ask delivery.Decide what follows, and store
// that outcome (a retry or a dead letter) before the message is
// acknowledged. It records the message's status (in flight before the
// call, then the outcome) in the background.
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
type Signer interface {
	SignDelivery(h http.Header, body []byte, now time.Time) error
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
	gate      *gate
	budget    time.Duration
	signer    Signer
	m         *metrics
	status    *status.Recorder
	log       *slog.Logger
}

// New returns a Dispatcher, registering its metrics.
func New(o Options) (*Dispatcher, error) {
	if o.Queue == nil || o.Invoker == nil || o.Functions == nil || o.Limiter == nil || o.Probe == nil || o.Registerer == nil {
		return nil, errors.New("dispatch: Queue, Invoker, Functions, Limiter, Probe and Registerer are required")
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
		d.m.callbacks.WithLabelValues(dec.Action.String()).Inc()
		if dec.Action == delivery.DeadLetter {
			d.m.deadLetters.WithLabelValues(fn, dec.Next.Reason).Inc()
		}
		log.Debug("callback", "url", e.CallbackURL, "action", dec.Action.String())
		return nil
	}
	switch {
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
// plus the mailbox's control headers with the settled values.
func Header(e *envelope.Envelope, p delivery.Policy) http.Header {
	h := e.Header.Clone()
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
	if err := d.signer.SignDelivery(h, e.Body, time.Now()); err != nil {
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
