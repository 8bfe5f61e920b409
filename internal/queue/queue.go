// Package queue is the seam between the mailbox and its broker. Each backend
// (NATS Streaming in queue/stan, later JetStream) implements Queue; the API
// only schedules, the connector schedules and consumes.
package queue

import (
	"context"
	"errors"

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
