package queue

import (
	"errors"
	"fmt"
	"time"

	"github.com/openfaas/mailbox/internal/envelope"
	"github.com/openfaas/mailbox/internal/status"
)

// QuotaWait bounds how long CheckQuota waits for its index to catch up.
const QuotaWait = 2 * time.Second

// The quotas, named as their settings.
const (
	QuotaWaiting            = "max_waiting"
	QuotaWaitingBytes       = "max_waiting_bytes"
	QuotaWaitingPerFunction = "max_waiting_per_function"
)

// Quota bounds the messages waiting or in flight (status.Counted), so
// that a flood of requeues is refused instead of filling the broker's
// storage. Only new messages from the requeue API are checked
// (Queue.CheckQuota): retries, holds, routed dead letters, callbacks and
// dead letters of messages already accepted are always stored, or they
// would be lost. A zero field sets no bound.
type Quota struct {
	// MaxWaiting bounds the messages waiting in all.
	MaxWaiting int
	// MaxWaitingBytes bounds their bodies' bytes in all.
	MaxWaitingBytes int64
	// MaxWaitingPerFunction bounds the messages waiting for one function.
	MaxWaitingPerFunction int
}

// Check refuses e, a new message, when storing it would take u past a
// bound: a *QuotaError naming the quota, nil otherwise.
func (q Quota) Check(u status.Usage, e *envelope.Envelope) error {
	switch {
	case q.MaxWaitingPerFunction > 0 && u.Function >= q.MaxWaitingPerFunction:
		return &QuotaError{Quota: QuotaWaitingPerFunction, Limit: int64(q.MaxWaitingPerFunction), Function: e.Function}
	case q.MaxWaiting > 0 && u.Count >= q.MaxWaiting:
		return &QuotaError{Quota: QuotaWaiting, Limit: int64(q.MaxWaiting)}
	case q.MaxWaitingBytes > 0 && u.Bytes+int64(len(e.Body)) > q.MaxWaitingBytes:
		return &QuotaError{Quota: QuotaWaitingBytes, Limit: q.MaxWaitingBytes}
	}
	return nil
}

// CheckIndex is Check with the usage x counts, after refusing e with
// ErrRepeat when x holds it as waiting already (the same function, id and
// retries): stored again it would count once, and a client repeating one
// request could fill the broker unseen.
func (q Quota) CheckIndex(x *status.Index, e *envelope.Envelope, now time.Time) error {
	if x.Waits(e.ID, e.Function, e.Retries, now) {
		return fmt.Errorf("%w: %s of %s with %d retries is waiting", ErrRepeat, e.ID, e.Function, e.Retries)
	}
	return q.Check(x.Usage(now, e.Function), e)
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
