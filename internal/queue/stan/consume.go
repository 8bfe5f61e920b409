package stan

import (
	"context"
	"sync"
	"time"

	"github.com/nats-io/nuid"
	stango "github.com/nats-io/stan.go"

	"github.com/openfaas/mailbox/internal/envelope"
	"github.com/openfaas/mailbox/internal/queue"
)

// ackMargin is added to the time a message is expected to be held (its
// wait, handler call and publish timeout) before the server delivers it
// again to another member.
const ackMargin = 2 * time.Second

// readyLead is how long before its due time a message is moved to the
// ready channel: enough for the publish, its fsync and the delivery to the
// consumer, which holds the last milliseconds on a timer.
const readyLead = 50 * time.Millisecond

// readyPrefetch is how many ready messages a consumer holds beyond the
// MaxInflight being delivered: those moved early by readyLead and those
// waiting for a delivery slot. At 64 it covers over a thousand messages a
// second falling due.
const readyPrefetch = 64

// startBudget is how long after it reaches the consumer a ready message
// must have started its handler call: at most a second early (a sub-second
// delay from the API goes straight to ready) plus one handler call's time
// waiting for a delivery slot. A message that cannot start by then is left
// unacknowledged for the server to deliver again, so no message is ever
// held past its ack wait, which would deliver it twice.
func (q *Queue) startBudget() time.Duration { return time.Second + q.o.HandlerTimeout }

// Consume runs the tier workers and the ready consumer as members of one
// durable queue group, so connector replicas share the work and a message
// held by a replica that dies goes to another. It returns nil once ctx
// ends and in-flight handler calls have finished (bounded by
// HandlerTimeout), or an error once the queue is closed.
func (q *Queue) Consume(ctx context.Context, h queue.Handler) error {
	for {
		g, err := q.wait(ctx)
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return err
		}
		q.consumeGeneration(ctx, g, h)
		if ctx.Err() != nil {
			return nil
		}
	}
}

// consumeGeneration consumes on one connection until it is lost, the
// queue closes or ctx ends.
func (q *Queue) consumeGeneration(ctx context.Context, g *generation, h queue.Handler) {
	w := newWorkers()
	var subs []stango.Subscription
	defer func() {
		for _, s := range subs {
			// Close, not Unsubscribe: the durable keeps its position and
			// the server hands unacknowledged messages to other members.
			_ = s.Close()
		}
	}()

	subscribe := func(channel string, window int, hold time.Duration, cb stango.MsgHandler) error {
		s, err := g.sc.QueueSubscribe(channel, q.o.Prefix+"-connector", cb,
			stango.DurableName("connector"),
			stango.SetManualAckMode(),
			stango.MaxInflight(window),
			stango.AckWait(hold+q.o.PublishTimeout+ackMargin),
			// Only used when the durable is first created: messages
			// stored before any connector ran must be delivered too.
			stango.DeliverAllAvailable(),
		)
		if err == nil {
			subs = append(subs, s)
		}
		return err
	}

	// The ready window is larger than MaxInflight so that messages moved
	// early wait here, not on the server; slots bounds the calls.
	slots := make(chan struct{}, q.o.MaxInflight)
	err := subscribe(q.readyChannel(), q.o.MaxInflight+readyPrefetch, q.startBudget()+q.o.HandlerTimeout, func(m *stango.Msg) {
		startBy := time.Now().Add(q.startBudget())
		w.spawn(func() { q.deliver(w, g, m, startBy, slots, h) })
	})
	for k := 0; k <= MaxTier && err == nil; k++ {
		tier := time.Duration(1<<k) * time.Second
		// A tier message is held for the tier, plus under a second when
		// its remainder goes to the ready channel.
		err = subscribe(q.tierChannel(k), q.o.TierWindow, tier+time.Second, func(m *stango.Msg) {
			w.spawn(func() { q.forward(w, g, m, tier) })
		})
	}
	if err != nil {
		q.log.Warn("cannot subscribe, retrying", "error", err)
		w.stop(0)
		select {
		case <-ctx.Done():
		case <-g.lost:
		case <-q.closed:
		case <-time.After(time.Second):
		}
		return
	}

	select {
	case <-ctx.Done():
		// Graceful: let in-flight deliveries finish and be acknowledged.
		w.stop(q.o.HandlerTimeout)
	case <-g.lost:
		w.stop(0)
	case <-q.closed:
		w.stop(0)
	}
}

// forward moves a tier message on once it has waited the tier's time. A
// remainder under a second is held here, not in the ready channel, until
// just before it is due: the ready channel's window is then taken only by
// messages being delivered.
func (q *Queue) forward(w *workers, g *generation, m *stango.Msg, tier time.Duration) {
	if !w.sleepUntil(time.Unix(0, m.Timestamp).Add(tier)) {
		return
	}
	e, err := envelope.Decode(m.Data)
	if err != nil {
		q.buryMalformed(w, g, m, err)
		return
	}
	channel := q.channelFor(time.Until(e.DueAt))
	if channel == q.readyChannel() && !w.sleepUntil(e.DueAt.Add(-readyLead)) {
		return
	}
	// The stored bytes are forwarded as they are: nothing to re-encode.
	if err := q.publish(w.ctx, g, channel, m.Data); err != nil {
		q.log.Warn("cannot forward waiting message, the server will deliver it again", "id", e.ID, "error", err)
		return
	}
	q.ack(m, e.ID)
}

// deliver calls h for a ready message once it is due and a slot is free,
// unless that is not before startBy.
func (q *Queue) deliver(w *workers, g *generation, m *stango.Msg, startBy time.Time, slots chan struct{}, h queue.Handler) {
	e, err := envelope.Decode(m.Data)
	if err != nil {
		q.buryMalformed(w, g, m, err)
		return
	}
	if !w.sleepUntil(e.DueAt) {
		return
	}
	late := time.NewTimer(time.Until(startBy))
	defer late.Stop()
	select {
	case slots <- struct{}{}:
		defer func() { <-slots }()
	case <-late.C:
		q.log.Debug("no delivery slot in time, the server will deliver the message again", "id", e.ID)
		return
	case <-w.stopping:
		return
	}
	ctx, cancel := context.WithTimeout(w.ctx, q.o.HandlerTimeout)
	defer cancel()
	if err := h(ctx, e); err != nil {
		q.log.Warn("handler failed, the server will deliver the message again", "id", e.ID, "error", err)
		return
	}
	q.ack(m, e.ID)
}

// buryMalformed keeps bytes that are not an envelope as a dead letter
// rather than dropping them.
func (q *Queue) buryMalformed(w *workers, g *generation, m *stango.Msg, cause error) {
	now := time.Now().UTC()
	dead := &envelope.Envelope{
		ID:         nuid.Next(),
		Body:       m.Data,
		AcceptedAt: now,
		LastError:  cause.Error(),
		Reason:     envelope.ReasonMalformed,
		DeadAt:     now,
	}
	data, err := envelope.Encode(dead)
	if err == nil {
		err = q.publish(w.ctx, g, q.deadLetterChannel(), data)
	}
	if err != nil {
		q.log.Warn("cannot store malformed message as a dead letter", "channel", m.Subject, "sequence", m.Sequence, "error", err)
		return
	}
	if q.deadLetters != nil {
		q.deadLetters.WithLabelValues(envelope.ReasonMalformed).Inc()
	}
	q.log.Error("malformed message stored as a dead letter", "channel", m.Subject, "sequence", m.Sequence, "dead_letter_id", dead.ID, "error", cause)
	q.ack(m, dead.ID)
}

func (q *Queue) ack(m *stango.Msg, id string) {
	if err := m.Ack(); err != nil {
		// The message will be delivered again: a duplicate, never a loss.
		q.log.Warn("cannot acknowledge message", "id", id, "error", err)
	}
}

// workers tracks the goroutines of one connection so they can be drained.
type workers struct {
	ctx    context.Context // for handler calls and forwards
	cancel context.CancelFunc

	mu       sync.Mutex
	stopped  bool
	stopping chan struct{} // closed when no new work starts; sleepers give up
	wg       sync.WaitGroup
}

func newWorkers() *workers {
	ctx, cancel := context.WithCancel(context.Background())
	return &workers{ctx: ctx, cancel: cancel, stopping: make(chan struct{})}
}

// spawn runs f unless the workers are stopping. The server does not send
// more than the subscription's window, so the number of goroutines is
// bounded by the sum of the windows.
func (w *workers) spawn(f func()) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.stopped {
		return // not acknowledged: the server delivers it again
	}
	w.wg.Add(1)
	go func() {
		defer w.wg.Done()
		f()
	}()
}

// sleepUntil waits until t; it reports false if the workers stop first.
func (w *workers) sleepUntil(t time.Time) bool {
	timer := time.NewTimer(time.Until(t))
	defer timer.Stop()
	select {
	case <-w.stopping:
		return false
	case <-timer.C:
		return true
	}
}

// stop refuses new work, waits up to grace for running work, then cancels
// what is left and waits for it to return.
func (w *workers) stop(grace time.Duration) {
	defer w.cancel()
	w.mu.Lock()
	if !w.stopped {
		w.stopped = true
		close(w.stopping)
	}
	w.mu.Unlock()
	done := make(chan struct{})
	go func() {
		w.wg.Wait()
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
	w.cancel()
	<-done
}
