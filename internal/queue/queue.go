// Package queue is the seam between the mailbox and its broker. Each backend
// (NATS Streaming in queue/stan, JetStream in queue/jetstream) implements
// Queue, and both pass the suite in queue/queuetest; the API only
// schedules, the connector schedules and consumes.
package queue

import (
	"context"
	"errors"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/openfaas/mailbox/internal/envelope"
)

// Queue stores envelopes durably and hands each back once it is due.
type Queue interface {
	// Schedule stores e for delivery at e.DueAt. It returns nil only after
	// the broker has acknowledged the write.
	Schedule(ctx context.Context, e *envelope.Envelope) error
	// DeadLetter stores e, whose Reason is set, as a dead letter. It
	// returns nil only after the broker has acknowledged the write.
	DeadLetter(ctx context.Context, e *envelope.Envelope) error
	// Consume calls h for each message once it is due, until ctx ends,
	// reconnecting to the broker as needed. A message is removed only when
	// h returns nil; otherwise it is delivered again later (at-least-once).
	Consume(ctx context.Context, h Handler) error
	// MaxPayload is the largest encoded envelope the broker accepts.
	MaxPayload() int
	// Connected reports whether the broker is reachable now.
	Connected() bool
	// Close releases the connection. It is safe to call more than once.
	Close() error
}

// Handler processes one due message. ctx carries the backend's deadline
// for the call: past it the broker may hand the message to another
// consumer, so a handler that waits must give up by then.
type Handler func(ctx context.Context, e *envelope.Envelope) error

var (
	// ErrUnavailable means the broker cannot be reached now; retry later.
	ErrUnavailable = errors.New("queue: broker unavailable")
	// ErrTooLarge means the encoded envelope exceeds MaxPayload.
	ErrTooLarge = errors.New("queue: message too large")
)

// DeadLetterCounter returns mailbox_dead_letters_total{reason} on reg,
// registering it on first use. The API, the connector and a backend that
// buries malformed messages each store dead letters; asking for the
// counter here makes them count into the same series when they share a
// registry, as in the standalone server.
func DeadLetterCounter(reg prometheus.Registerer) (*prometheus.CounterVec, error) {
	c := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "mailbox_dead_letters_total",
		Help: "Messages stored as dead letters, by reason.",
	}, []string{"reason"})
	if err := reg.Register(c); err != nil {
		var already prometheus.AlreadyRegisteredError
		if !errors.As(err, &already) {
			return nil, err
		}
		existing, ok := already.ExistingCollector.(*prometheus.CounterVec)
		if !ok {
			return nil, err
		}
		return existing, nil
	}
	// Known reasons start at zero so alerts can use rate() from the start.
	c.WithLabelValues(envelope.ReasonMaxRetries)
	return c, nil
}
