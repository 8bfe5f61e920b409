package queue

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/openfaas/mailbox/internal/envelope"
	"github.com/openfaas/mailbox/internal/status"
)

// QuotaWait bounds how long Reserve waits for its index to catch up.
const QuotaWait = 2 * time.Second

// ReserveFor bounds how long a reservation counts (status.Index.Reserve):
// past it, a message whose status the index never read (a status write
// that failed, or was dropped by a full status.Recorder) no longer counts,
// and an instant dead letter's place is given back.
const ReserveFor = time.Minute

// The quotas, named as their settings.
const (
	QuotaWaiting            = "max_waiting"
	QuotaWaitingBytes       = "max_waiting_bytes"
	QuotaWaitingPerFunction = "max_waiting_per_function"
)

// Quota bounds the messages waiting or in flight (status.Counted), so
// that a flood of requeues is refused instead of filling the broker's
// storage. Only new messages from the requeue API are checked
// (Queue.Reserve), each reserving its place before it is stored; an
// instant dead letter from the API holds one for ReserveFor, as it uses
// storage too. Retries, holds, routed dead letters, callbacks and dead
// letters of messages already accepted are always stored, or they would
// be lost. A zero field sets no bound.
//
// The bound is per process: each API process counts the index, which
// lags the writes, and its own reservations, so N processes may each
// accept up to the headroom left in a burst.
type Quota struct {
	// MaxWaiting bounds the messages waiting in all.
	MaxWaiting int
	// MaxWaitingBytes bounds their bodies' bytes in all.
	MaxWaitingBytes int64
	// MaxWaitingPerFunction bounds the messages waiting for one function.
	MaxWaitingPerFunction int
}

// Check refuses a new message of bytes for function when storing it would
// take u past a bound: a *QuotaError naming the quota, nil otherwise.
func (q Quota) Check(u status.Usage, function string, bytes int64) error {
	switch {
	case q.MaxWaitingPerFunction > 0 && u.Function >= q.MaxWaitingPerFunction:
		return &QuotaError{Quota: QuotaWaitingPerFunction, Limit: int64(q.MaxWaitingPerFunction), Function: function}
	case q.MaxWaiting > 0 && u.Count >= q.MaxWaiting:
		return &QuotaError{Quota: QuotaWaiting, Limit: int64(q.MaxWaiting)}
	case q.MaxWaitingBytes > 0 && u.Bytes+bytes > q.MaxWaitingBytes:
		return &QuotaError{Quota: QuotaWaitingBytes, Limit: q.MaxWaitingBytes}
	}
	return nil
}

// Reserve reserves claims in x (status.Index.Reserve) against q: a claim
// with Repeat that x holds as waiting already is refused with ErrRepeat
// (stored again it would count once, and a client repeating one request
// could fill the broker unseen), one past a bound with a *QuotaError. It
// waits up to QuotaWait for x to catch up; while it has not, the check
// counts what x has read and this process's reservations, which still
// bound what this process accepts.
func (q Quota) Reserve(ctx context.Context, x *status.Index, log *slog.Logger, claims []status.Claim) (release func(), err error) {
	ctx, cancel := context.WithTimeout(ctx, QuotaWait)
	defer cancel()
	if err := x.WaitSynced(ctx); err != nil {
		log.Warn("quota checked against a status index still catching up", "function", claims[0].Function, "id", claims[0].ID)
	}
	return x.Reserve(claims, time.Now(), ReserveFor, func(c status.Claim, u status.Usage, waits bool) error {
		if c.Repeat && waits {
			return fmt.Errorf("%w: %s of %s with %d retries is waiting", ErrRepeat, c.ID, c.Function, c.Retries)
		}
		return q.Check(u, c.Function, c.Bytes)
	})
}

// Claim is e reserved as a new message: hold for an instant dead letter,
// repeat to refuse it when it waits already.
func Claim(e *envelope.Envelope, hold, repeat bool) status.Claim {
	return status.Claim{ID: e.ID, Function: e.Function, Retries: e.Retries, Bytes: int64(len(e.Body)), Hold: hold, Repeat: repeat}
}

// None reports whether q bounds nothing.
func (q Quota) None() bool {
	return q.MaxWaiting <= 0 && q.MaxWaitingBytes <= 0 && q.MaxWaitingPerFunction <= 0
}

// ErrQuota means a message was refused because a quota on waiting
// messages is reached; the error is a *QuotaError, which names it.
var ErrQuota = errors.New("queue: quota reached")

// QuotaError is a message refused by a quota.
type QuotaError struct {
	// Quota is the setting reached: QuotaWaiting, QuotaWaitingBytes or
	// QuotaWaitingPerFunction.
	Quota string
	Limit int64
	// Function is the function whose quota is reached
	// (QuotaWaitingPerFunction only).
	Function string
}

func (e *QuotaError) Error() string {
	who := "waiting messages"
	if e.Function != "" {
		who = "messages waiting for " + e.Function
	}
	return fmt.Sprintf("%s: %s reached %s %d", ErrQuota, who, e.Quota, e.Limit)
}

// Is makes errors.Is(err, ErrQuota) true.
func (e *QuotaError) Is(target error) bool { return target == ErrQuota }
