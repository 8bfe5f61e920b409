// Package dispatch is the connector's work on one due message: invoke the
// function through the gateway, ask delivery.Decide what follows, and store
// that outcome (a retry or a dead letter) before the message is
// acknowledged.
package dispatch

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/openfaas/mailbox/internal/delivery"
	"github.com/openfaas/mailbox/internal/envelope"
	"github.com/openfaas/mailbox/internal/queue"
)

// Invoker calls a function; internal/invoke implements it over the gateway.
type Invoker interface {
	Invoke(ctx context.Context, function string, body []byte, header http.Header) delivery.Result
}

// Options configure a Dispatcher.
type Options struct {
	Queue   queue.Queue
	Invoker Invoker
	// Probe reports whether the gateway answers. It is called only while
	// deliveries are paused after a connection to the gateway failed.
	Probe func(ctx context.Context) error
	// CallBudget is what a delivery needs once it may proceed: the
	// invocation's timeout plus storing its outcome. While the gateway is
	// unreachable a message waits for it until only CallBudget is left
	// before the handler's deadline, then is left for redelivery.
	CallBudget time.Duration
	Registerer prometheus.Registerer
	Logger     *slog.Logger
}

// Dispatcher delivers due messages. Run it with Run.
type Dispatcher struct {
	q       queue.Queue
	invoker Invoker
	gate    *gate
	budget  time.Duration
	m       *metrics
	log     *slog.Logger
}

// New returns a Dispatcher, registering its metrics.
func New(o Options) (*Dispatcher, error) {
	if o.Queue == nil || o.Invoker == nil || o.Probe == nil || o.Registerer == nil {
		return nil, errors.New("dispatch: Queue, Invoker, Probe and Registerer are required")
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	m, err := newMetrics(o.Registerer)
	if err != nil {
		return nil, err
	}
	log := o.Logger.With("component", "dispatch")
	return &Dispatcher{
		q:       o.Queue,
		invoker: o.Invoker,
		gate:    newGate(o.Probe, m.gatewayUp, log),
		budget:  o.CallBudget,
		m:       m,
		log:     log,
	}, nil
}

// Run consumes and delivers messages until ctx ends, then returns once
// in-flight deliveries have finished.
func (d *Dispatcher) Run(ctx context.Context) error {
	gateCtx, stopGate := context.WithCancel(ctx)
	defer stopGate()
	go func() {
		// Ask the gateway once at start: when it cannot be reached,
		// deliveries wait for it before any retry is spent, and refused
		// credentials show in the log now rather than at the first outage.
		if err := d.gate.probe(gateCtx); err != nil {
			d.gate.trip()
		}
		d.gate.run(gateCtx)
	}()
	return d.q.Consume(ctx, d.handle)
}

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
	start := time.Now()
	d.m.lateness.Observe(start.Sub(e.DueAt).Seconds())
	res := d.invoker.Invoke(ctx, e.Function, e.Body, Header(e))
	d.m.duration.Observe(time.Since(start).Seconds())
	if ctx.Err() != nil {
		// Shutting down or the broker connection is gone: this call does
		// not count as an attempt.
		return ctx.Err()
	}
	if isDialError(res.Err) {
		d.gate.trip()
	}

	dec := delivery.Decide(e, res, time.Now().UTC())
	log := d.log.With("id", e.ID, "function", e.Function, "retries", e.Retries, "status", res.Status)
	switch dec.Action {
	case delivery.Ack:
		d.m.delivered.Inc()
		log.Debug("delivered")
		return nil
	case delivery.Retry:
		if err := d.q.Schedule(ctx, dec.Next); err != nil {
			return err
		}
		d.m.retried.Inc()
		log.Info("delivery failed, retry scheduled", "due_at", dec.Next.DueAt, "error", res.Err)
		return nil
	case delivery.DeadLetter:
		if err := d.q.DeadLetter(ctx, dec.Next); err != nil {
			return err
		}
		d.m.deadLetters.WithLabelValues(dec.Next.Reason).Inc()
		log.Warn("delivery failed, message is now a dead letter", "reason", dec.Next.Reason, "error", res.Err)
		return nil
	default:
		return errors.New("dispatch: unknown decision " + dec.Action.String())
	}
}

// Header is what a delivery of e sends: the kept request headers plus the
// mailbox's control headers.
func Header(e *envelope.Envelope) http.Header {
	h := e.Header.Clone()
	if h == nil {
		h = http.Header{}
	}
	h.Set(envelope.HeaderRetries, strconv.Itoa(e.Retries))
	h.Set(envelope.HeaderMaxRetries, strconv.Itoa(e.MaxRetries))
	h.Set(envelope.HeaderDelay, formatDelay(e.Delay))
	h.Set(envelope.HeaderMessageID, e.ID)
	return h
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
