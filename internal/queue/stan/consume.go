package stan

import (
	"context"
	"errors"
	"time"

	stango "github.com/nats-io/stan.go"

	"github.com/openfaas/mailbox/internal/queue"
	"github.com/openfaas/mailbox/internal/queue/consume"
)

// readyLead is how long before its due time a message is moved to the
// ready channel: enough for the publish, its fsync and the delivery to the
// consumer, which holds the last milliseconds on a timer.
const readyLead = 50 * time.Millisecond

// readyPrefetch is how many ready messages a consumer holds beyond the
// MaxInflight being delivered: those moved early by readyLead and those
// waiting for a delivery slot. At 64 it covers over a thousand messages a
// second falling due.
const readyPrefetch = 64

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
	reconnected := g.reconnects()
	w := consume.NewPool()
	var subs []stango.Subscription
	defer func() { q.closeSubscriptions(g, subs) }()

	subscribe := func(channel string, window int, hold time.Duration, cb stango.MsgHandler) error {
		s, err := g.sc.QueueSubscribe(channel, q.o.Prefix+"-connector", cb,
			stango.DurableName("connector"),
			stango.SetManualAckMode(),
			stango.MaxInflight(window),
			stango.AckWait(hold+q.o.PublishTimeout+consume.AckMargin),
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
	// early wait here, not on the server; the deliverer bounds the calls.
	d := consume.NewDeliverer(consume.Deliverer{
		Pool:           w,
		HandlerTimeout: q.o.HandlerTimeout,
		DeadLetter:     q.DeadLetter,
		DeadLetters:    q.deadLetters,
		Log:            q.log,
	}, q.o.MaxInflight)
	// A sub-second delay from the API goes straight to ready: up to a
	// second early.
	budget := d.StartBudget(time.Second)
	err := subscribe(q.readyChannel(), q.o.MaxInflight+readyPrefetch, budget+q.o.HandlerTimeout, func(m *stango.Msg) {
		startBy := time.Now().Add(budget)
		w.Spawn(func() { d.Deliver(msg{m}, startBy, h) })
	})
	for k := 0; k <= MaxTier && err == nil; k++ {
		tier := time.Duration(1<<k) * time.Second
		// A tier message is held for the tier, plus under a second when
		// its remainder goes to the ready channel.
		err = subscribe(q.tierChannel(k), q.o.TierWindow, tier+time.Second, func(m *stango.Msg) {
			w.Spawn(func() { q.forward(w, d, g, m, tier) })
		})
	}
	if err != nil {
		q.log.Warn("cannot subscribe, retrying", "error", err)
		w.Stop(0)
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
		w.Stop(q.o.HandlerTimeout)
	case <-reconnected:
		// The server kept this session (a restart on a file store, or a
		// blip of the connection), but acknowledgements sent around the
		// outage are lost, some silently, and so is what it sent before
		// the client was back: it counts those messages as held here
		// until their ack wait, and a subscription whose window they fill
		// gets nothing new (TestNoStallAfterServerRestart). Let the calls
		// under way finish and be acknowledged, then subscribe again: the
		// server sends what it counts as held at once.
		q.log.Info("NATS reconnected: subscribing again once the calls under way finish, so the server sends again what it holds for this connector", "grace", q.o.HandlerTimeout.String())
		w.Stop(q.o.HandlerTimeout)
	case <-g.lost:
		w.Stop(0)
	case <-q.closed:
		w.Stop(0)
	}
}

// forward moves a tier message on once it has waited the tier's time. A
// remainder under a second is held here, not in the ready channel, until
// just before it is due: the ready channel's window is then taken only by
// messages being delivered.
func (q *Queue) forward(w *consume.Pool, d *consume.Deliverer, g *generation, m *stango.Msg, tier time.Duration) {
	if !w.SleepUntil(time.Unix(0, m.Timestamp).Add(tier)) {
		return
	}
	e, ok := d.Decode(msg{m})
	if !ok {
		return
	}
	channel := q.channelFor(time.Until(e.DueAt))
	if channel == q.readyChannel() && !w.SleepUntil(e.DueAt.Add(-readyLead)) {
		return
	}
	// The stored bytes are forwarded as they are: nothing to re-encode.
	if err := q.publish(w.Context(), g, channel, m.Data); err != nil {
		q.log.Warn("cannot forward waiting message, the server will deliver it again", "id", e.ID, "error", err)
		return
	}
	consume.Ack(q.log, msg{m}, e.ID)
}

// msg adapts a NATS Streaming message to the consumer.
type msg struct{ m *stango.Msg }

func (m msg) Data() []byte { return m.m.Data }
func (m msg) Ack() error   { return m.m.Ack() }

// Release does nothing: NATS Streaming cannot give a message back, it
// delivers it again after its ack wait.
func (m msg) Release() {}

// closeTimeout bounds how long closeSubscriptions tries to close one
// subscription before it gives the connection up.
const closeTimeout = 10 * time.Second

// closeSubscriptions closes subs: Close, not Unsubscribe, so the durable
// keeps its position and the server hands what each held to the other
// members, or to the next member that joins. A close the server did not
// answer (just restarted, it may not serve requests yet) is tried again:
// the server would otherwise keep the subscription as a member, handing
// it messages nobody receives, for as long as this connection lives. If
// that does not work within closeTimeout, the connection is given up,
// which ends its subscriptions on the server.
func (q *Queue) closeSubscriptions(g *generation, subs []stango.Subscription) {
	for _, s := range subs {
		deadline := time.Now().Add(closeTimeout)
		for {
			err := s.Close()
			if !errors.Is(err, stango.ErrCloseReqTimeout) {
				break // closed, or the server answered
			}
			if time.Now().After(deadline) {
				q.log.Warn("cannot close a subscription, reconnecting so the server drops it", "error", err)
				g.markLost()
				return
			}
			select {
			case <-g.lost:
				return
			case <-q.closed:
				return
			case <-time.After(100 * time.Millisecond):
			}
		}
	}
}
