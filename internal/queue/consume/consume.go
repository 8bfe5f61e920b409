// Package consume holds what every backend's consumer does the same way
// once the broker has handed it a message: track the goroutines so they
// can be drained, wait until a message is due, bound concurrent handler
// calls, give each call a deadline inside the broker's ack wait, and keep
// bytes that are not an envelope as a dead letter.
package consume

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"runtime/debug"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/openfaas/mailbox/internal/envelope"
	"github.com/openfaas/mailbox/internal/queue"
)

// AckMargin is added to the time a message is expected to be held (its
// wait, handler call and publish timeout) to make the broker's ack wait.
const AckMargin = 2 * time.Second

// Message is a broker message as the consumer sees it.
type Message interface {
	Data() []byte
	// Ack removes the message.
	Ack() error
	// Release gives the message back to be delivered again: after a short
	// delay where the broker can (JetStream), else after its ack wait.
	Release()
}

// Pool tracks the goroutines of one consumer so they can be drained.
type Pool struct {
	ctx    context.Context // for handler calls and forwards
	cancel context.CancelFunc

	mu       sync.Mutex
	stopped  bool
	stopping chan struct{} // closed when no new work starts; sleepers give up
	wg       sync.WaitGroup
}

// NewPool returns a running pool.
func NewPool() *Pool {
	ctx, cancel := context.WithCancel(context.Background())
	return &Pool{ctx: ctx, cancel: cancel, stopping: make(chan struct{})}
}

// Context is cancelled when the pool has stopped waiting for its work.
func (p *Pool) Context() context.Context { return p.ctx }

// Spawn runs f unless the pool is stopping, and reports whether it does.
// The broker sends no more than a subscription's window, so the number of
// goroutines is bounded by the sum of the windows.
func (p *Pool) Spawn(f func()) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.stopped {
		return false
	}
	p.wg.Add(1)
	go func() {
		defer p.wg.Done()
		f()
	}()
	return true
}

// Stopping is closed once the pool starts no new work.
func (p *Pool) Stopping() <-chan struct{} { return p.stopping }

// SleepUntil waits until t; it reports false if the pool stops first.
func (p *Pool) SleepUntil(t time.Time) bool {
	timer := time.NewTimer(time.Until(t))
	defer timer.Stop()
	select {
	case <-p.stopping:
		return false
	case <-timer.C:
		return true
	}
}

// Stop refuses new work, waits up to grace for running work, then cancels
// what is left and waits for it to return.
func (p *Pool) Stop(grace time.Duration) {
	defer p.cancel()
	p.mu.Lock()
	if !p.stopped {
		p.stopped = true
		close(p.stopping)
	}
	p.mu.Unlock()
	done := make(chan struct{})
	go func() {
		p.wg.Wait()
		close(done)
	}()
	if grace > 0 {
		timer := time.NewTimer(grace)
		defer timer.Stop()
		select {
		case <-done:
			return
		case <-timer.C:
		}
	}
	p.cancel()
	<-done
}

// Deliverer calls the handler for messages that are due.
type Deliverer struct {
	Pool *Pool
	// HandlerTimeout bounds each handler call.
	HandlerTimeout time.Duration
	// DeadLetter stores a dead letter; used for malformed messages.
	DeadLetter func(ctx context.Context, e *envelope.Envelope) error
	// DeadLetters counts malformed messages; nil counts nothing.
	DeadLetters *prometheus.CounterVec
	Log         *slog.Logger

	slots chan struct{}
}

// NewDeliverer returns a Deliverer making at most maxInflight handler
// calls at once for messages other than callbacks, which the handler
// bounds itself.
func NewDeliverer(d Deliverer, maxInflight int) *Deliverer {
	d.slots = make(chan struct{}, maxInflight)
	return &d
}

// StartBudget is how long after it reaches the consumer a message may
// take to start its handler call: up to early before it is due, plus one
// handler call's time waiting for a delivery slot. A message that cannot
// start by then is left unacknowledged for the broker to deliver again, so
// no message is held past its ack wait, which would deliver it twice.
func (d *Deliverer) StartBudget(early time.Duration) time.Duration {
	return early + d.HandlerTimeout
}

// Deliver calls h for m once it is due and a delivery slot is free, unless
// that is not before startBy, and acknowledges m when h succeeds.
func (d *Deliverer) Deliver(m Message, startBy time.Time, h queue.Handler) {
	e, ok := d.Decode(m)
	if !ok {
		return
	}
	if !d.Pool.SleepUntil(e.DueAt) {
		m.Release()
		return
	}
	// A callback takes no delivery slot: the handler bounds callbacks
	// with slots of their own (internal/dispatch), so a callback endpoint
	// that is slow to answer never holds up a delivery.
	if e.Kind != envelope.KindCallback {
		release, ok := d.slot(startBy)
		if !ok {
			d.Log.Info("no delivery slot in time, the broker will deliver the message again", "id", e.ID)
			m.Release()
			return
		}
		defer release()
	} else if d.stopping() {
		m.Release()
		return
	}
	ctx, cancel := context.WithTimeout(d.Pool.ctx, d.HandlerTimeout)
	defer cancel()
	// A panic handling one message would end the process and every
	// delivery in it, and come back with the message: keep the message's
	// bytes as a malformed dead letter instead, as for bytes that do not
	// decode.
	defer func() {
		if p := recover(); p != nil {
			d.Log.Error("panic while handling a message", "id", e.ID, "panic", p, "stack", string(debug.Stack()))
			d.keepMalformed(m, fmt.Errorf("the connector panicked handling it: %v", p))
		}
	}()
	if err := h(ctx, e); err != nil {
		d.Log.Warn("handler failed, the broker will deliver the message again", "id", e.ID, "error", err)
		m.Release()
		return
	}
	Ack(d.Log, m, e.ID)
}

func (d *Deliverer) stopping() bool {
	select {
	case <-d.Pool.stopping:
		return true
	default:
		return false
	}
}

// slot takes a delivery slot, waiting until startBy at most; ok is false
// when none came in time or the pool is stopping.
func (d *Deliverer) slot(startBy time.Time) (release func(), ok bool) {
	late := time.NewTimer(time.Until(startBy))
	defer late.Stop()
	select {
	case d.slots <- struct{}{}:
		return func() { <-d.slots }, true
	case <-late.C:
		return nil, false
	case <-d.Pool.stopping:
		return nil, false
	}
}

// Decode returns m's envelope. Bytes that are not an envelope are stored
// as a dead letter with reason malformed and acknowledged, never dropped;
// ok is false then.
func (d *Deliverer) Decode(m Message) (e *envelope.Envelope, ok bool) {
	e, decodeErr := envelope.Decode(m.Data())
	if decodeErr == nil {
		return e, true
	}
	d.keepMalformed(m, decodeErr)
	return nil, false
}

// keepMalformed stores m's bytes as a dead letter with reason malformed
// and cause as its error, and acknowledges m; it releases m if the dead
// letter cannot be stored.
func (d *Deliverer) keepMalformed(m Message, cause error) {
	now := time.Now().UTC()
	dead := &envelope.Envelope{
		ID:         MalformedID(m.Data()),
		Body:       m.Data(),
		AcceptedAt: now,
		LastError:  cause.Error(),
		Reason:     envelope.ReasonMalformed,
		DeadAt:     now,
	}
	err := d.DeadLetter(d.Pool.ctx, dead)
	// Wrapped in an envelope, bytes near the size limit no longer fit: keep
	// what fits rather than never acknowledging them.
	for errors.Is(err, queue.ErrTooLarge) && len(dead.Body) > 0 {
		dead.Body = dead.Body[:len(dead.Body)/2]
		dead.LastError = fmt.Sprintf("%s (body cut to its first %d bytes to fit)", cause, len(dead.Body))
		err = d.DeadLetter(d.Pool.ctx, dead)
	}
	if err != nil {
		d.Log.Warn("cannot store malformed message as a dead letter", "dead_letter_id", dead.ID, "decode_error", cause, "error", err)
		m.Release()
		return
	}
	if d.DeadLetters != nil {
		d.DeadLetters.WithLabelValues("", envelope.ReasonMalformed).Inc()
	}
	d.Log.Error("malformed message stored as a dead letter", "dead_letter_id", dead.ID, "error", cause)
	Ack(d.Log, m, dead.ID)
}

// MalformedID is the id of the dead letter that bytes which are not an
// envelope become: "malformed-" and the first 128 bits of their SHA-256,
// in hex. It is the same each time the broker delivers the bytes again
// (after a lost acknowledgement, or a crash between storing the dead
// letter and acknowledging), so a backend that de-duplicates on the id
// (JetStream) stores one dead letter and every index shows one. Identical
// garbage published twice is one dead letter too: its bytes are kept.
func MalformedID(data []byte) string {
	sum := sha256.Sum256(data)
	return "malformed-" + hex.EncodeToString(sum[:16])
}

// Ack acknowledges m, logging a failure: the message will be delivered
// again, a duplicate, never a loss.
func Ack(log *slog.Logger, m Message, id string) {
	if err := m.Ack(); err != nil {
		log.Warn("cannot acknowledge message", "id", id, "error", err)
	}
}
