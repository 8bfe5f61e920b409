// Package queue is the seam between the mailbox and its broker. Each backend
// (NATS Streaming in queue/stan, JetStream in queue/jetstream) implements
// Queue, and both pass the suite in queue/queuetest; the API only
// schedules, the connector schedules and consumes.
package queue

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/openfaas/mailbox/internal/envelope"
	"github.com/openfaas/mailbox/internal/metric"
	"github.com/openfaas/mailbox/internal/status"
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
	// RecordStatus stores s as the latest status of s.ID, to be forgotten
	// at s.Expiry(StatusRetention), unless the status kept for s.ID
	// supersedes it (status.Status.Supersedes). It returns nil once the
	// broker has acknowledged the write, or when s was not newer. Callers
	// record through a status.Recorder, which writes in the background.
	RecordStatus(ctx context.Context, s status.Status) error
	// Status returns the latest status kept for id: ErrNoStatus when there
	// is none (never recorded, or forgotten), ErrUnavailable while the
	// broker cannot be reached.
	Status(ctx context.Context, id string) (status.Status, error)
	// Reserve checks claims, new messages the requeue API is about to
	// store, against Options.Quota and reserves their places (Quota.Reserve):
	// a *QuotaError (ErrQuota) when one would take the messages waiting
	// past a quota, ErrRepeat when a claim with Repeat is held as waiting
	// already (the same function, id and retries), and then nothing is
	// reserved. The caller calls release when the store fails; otherwise a
	// reservation ends once the index reads the message's status, or after
	// ReserveFor. With no quota set it reserves nothing and returns a
	// release that does nothing. ErrUnavailable while the broker cannot be
	// reached. Schedule and DeadLetter never check a quota: what was
	// accepted is never lost to one.
	Reserve(ctx context.Context, claims ...status.Claim) (release func(), err error)
	// Waiting counts, per function, the messages whose latest status is
	// waiting or in flight (status.Counted), leaving out functions with
	// none. It reads an index of the statuses, bounded as the backend
	// says, which it starts on first use and waits (until ctx ends) to
	// have caught up; ErrUnavailable while the broker cannot be reached.
	Waiting(ctx context.Context) (map[string]int, error)
	// MaxPayload is the largest encoded envelope the broker accepts.
	MaxPayload() int
	// Connected reports whether the broker is reachable now.
	Connected() bool
	// Close releases the connection. It is safe to call more than once.
	Close() error
	// DeadLetterLog lists, reads and removes what DeadLetter stored.
	DeadLetterLog
}

// Handler processes one due message. ctx carries the backend's deadline
// for the call: past it the broker may hand the message to another
// consumer, so a handler that waits must give up by then.
type Handler func(ctx context.Context, e *envelope.Envelope) error

var (
	// ErrUnavailable means the broker cannot be reached now; retry later.
	ErrUnavailable = errors.New("queue: broker unavailable")
	// ErrTimeout means the broker did not acknowledge a write within
	// Options.PublishTimeout (a slow or stalled broker); nothing may be
	// taken as stored. It is an ErrUnavailable.
	ErrTimeout = fmt.Errorf("%w: no acknowledgement in time", ErrUnavailable)
	// ErrStorageFull means the broker refused a write for want of
	// storage (JetStream's "insufficient resources", a store whose file
	// system is full) or, before any write, that the store's file system
	// has less free space than the mailbox keeps in reserve
	// (diskspace.Guard): retry once space is freed.
	ErrStorageFull = errors.New("queue: broker storage full")
	// ErrTooLarge means the encoded envelope exceeds MaxPayload.
	ErrTooLarge = errors.New("queue: message too large")
	// ErrNoStatus means no status is kept for a message id.
	ErrNoStatus = errors.New("queue: no status")
	// ErrRepeat means Schedule stored nothing because the backend already
	// holds the same message: the same function, id, life and attempt
	// (a client repeating a requeue, a connector storing a retry again
	// after a crash). A caller that only needs it stored counts it as
	// stored; the requeue API tells its caller it was a repeat.
	ErrRepeat = errors.New("queue: message already stored")
)

// DeadLetterCounter returns mailbox_dead_letters_total{function,reason}
// on reg, registering it on first use. The API, the connector and a
// backend that buries malformed messages (function "") each store dead
// letters; asking for the counter here makes them count into the same
// series when they share a registry, as in the standalone server.
func DeadLetterCounter(reg prometheus.Registerer) (*prometheus.CounterVec, error) {
	c := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "mailbox_dead_letters_total",
		Help: "Messages stored as dead letters, by function and reason.",
	}, []string{"function", "reason"})
	return metric.Shared(reg, c)
}

// Options are the settings every backend takes; each backend's own Options
// embed them.
type Options struct {
	// URL of the NATS server(s). Required.
	URL string
	// CredentialsFile is a NATS .creds file; empty for none.
	CredentialsFile string
	// Prefix of every channel or subject name. Defaults to mailbox.
	Prefix string
	// MaxInflight bounds concurrent handler calls per consumer. Defaults
	// to 16.
	MaxInflight int
	// HandlerTimeout bounds a handler call: its context ends then, and the
	// broker delivers an unacknowledged message again only after it, plus
	// a margin. Defaults to 30s.
	HandlerTimeout time.Duration
	// PublishTimeout bounds the wait for the broker's acknowledgement.
	// Defaults to 5s.
	PublishTimeout time.Duration
	// StatusRetention is how long a message's status is kept after its
	// last step (for a waiting message, after it is due). Defaults to 24h.
	StatusRetention time.Duration
	// Logger defaults to slog.Default().
	Logger *slog.Logger
	// Registerer, if set, counts malformed messages buried as dead letters
	// in mailbox_dead_letters_total.
	Registerer prometheus.Registerer
	// Quota bounds the messages waiting, checked by Reserve. Zero: no
	// bound.
	Quota Quota
}

// WithDefaults returns o with its defaults filled in, or an error when it
// cannot be used.
func (o Options) WithDefaults() (Options, error) {
	if o.URL == "" {
		return o, errors.New("queue: URL is required")
	}
	if o.Prefix == "" {
		o.Prefix = "mailbox"
	}
	if o.MaxInflight <= 0 {
		o.MaxInflight = 16
	}
	if o.HandlerTimeout <= 0 {
		o.HandlerTimeout = 30 * time.Second
	}
	if o.PublishTimeout <= 0 {
		o.PublishTimeout = 5 * time.Second
	}
	if o.StatusRetention <= 0 {
		o.StatusRetention = 24 * time.Hour
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	return o, nil
}

// DeadLetterCounter returns the counter for malformed messages, or nil
// without a Registerer.
func (o Options) DeadLetterCounter() (*prometheus.CounterVec, error) {
	if o.Registerer == nil {
		return nil, nil
	}
	return DeadLetterCounter(o.Registerer)
}
