package jetstream

import (
	"context"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/openfaas/mailbox/internal/queue"
	"github.com/openfaas/mailbox/internal/queue/consume"
)

// ackTimeout bounds the wait for the server to confirm an ack.
const ackTimeout = 5 * time.Second

// releaseDelay is how long a message given back waits before the server
// delivers it again, so a failing handler does not spin.
const releaseDelay = time.Second

// early is the most a message reaches the consumer before it is due:
// scheduleLead, or a sub-second delay published straight to due, plus the
// scheduler's firing jitter.
const early = time.Second

// ackWait is how long the server waits before delivering a message again.
// A pulled message may wait in the client's buffer for a held slot (freed
// within one start budget, one call and one confirmed ack), then has its
// own start budget, call and confirmed ack.
func (q *Queue) ackWait() time.Duration {
	round := early + q.o.HandlerTimeout + q.o.HandlerTimeout + ackTimeout
	return 2*round + consume.AckMargin
}

// ensureConsumer creates or updates the durable consumer connectors share.
func (q *Queue) ensureConsumer(ctx context.Context) (jetstream.Consumer, error) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	return q.js.CreateOrUpdateConsumer(ctx, q.o.Stream, jetstream.ConsumerConfig{
		Durable:        q.o.Consumer,
		FilterSubjects: []string{q.dueSubject(">"), q.legacyDueSubject()},
		AckPolicy:      jetstream.AckExplicitPolicy,
		AckWait:        q.ackWait(),
		MaxAckPending:  -1, // each connector bounds what it holds itself
		MaxDeliver:     -1, // a message is never dropped after N tries
		DeliverPolicy:  jetstream.DeliverAllPolicy,
	})
}

// Consume pulls due messages from the durable consumer, shared with other
// connectors, and calls h for each once it is due. It returns nil once ctx
// ends and in-flight calls have finished (bounded by HandlerTimeout).
func (q *Queue) Consume(ctx context.Context, h queue.Handler) error {
	select {
	case <-q.readyCh:
	case <-ctx.Done():
		return nil
	}
	pool := consume.NewPool()
	d := consume.NewDeliverer(consume.Deliverer{
		Pool:           pool,
		HandlerTimeout: q.o.HandlerTimeout,
		DeadLetter:     q.DeadLetter,
		DeadLetters:    q.deadLetters,
		Log:            q.log,
	}, q.o.MaxInflight)
	budget := d.StartBudget(early)
	// held bounds the messages this connector holds; while it is full the
	// callback blocks and the client stops pulling.
	window := q.o.MaxInflight + prefetch
	held := make(chan struct{}, window)
	handle := func(m jetstream.Msg) {
		// Once stopping, what is still in the client's buffer goes back
		// at once, for another connector to take.
		if ctx.Err() != nil {
			_ = m.Nak()
			return
		}
		select {
		case held <- struct{}{}:
		case <-ctx.Done():
			_ = m.Nak()
			return
		}
		startBy := time.Now().Add(budget)
		if !pool.Spawn(func() {
			defer func() { <-held }()
			d.Deliver(msg{m}, startBy, h)
		}) {
			<-held
			_ = m.Nak()
		}
	}

	backoff := 100 * time.Millisecond
	for {
		cc, err := q.subscribe(ctx, handle, window)
		if err == nil {
			backoff = 100 * time.Millisecond
			select {
			case <-ctx.Done():
				// Drain hands the buffered messages to handle, which gives
				// them back; Stop would leave them to their ack wait.
				cc.Drain()
				<-cc.Closed()
			case <-cc.Closed():
				q.log.Warn("consumer closed, subscribing again")
			}
		} else {
			q.log.Warn("cannot consume, retrying", "error", err, "retry_in", backoff)
		}
		if ctx.Err() != nil {
			pool.Stop(q.o.HandlerTimeout)
			return nil
		}
		select {
		case <-ctx.Done():
		case <-time.After(backoff):
		}
		backoff = min(backoff*2, 5*time.Second)
	}
}

func (q *Queue) subscribe(ctx context.Context, handle jetstream.MessageHandler, window int) (jetstream.ConsumeContext, error) {
	c, err := q.ensureConsumer(ctx)
	if err != nil {
		return nil, err
	}
	return c.Consume(handle,
		jetstream.PullMaxMessages(window),
		// Short pulls: after a leader change the next pull, which finds
		// the new leader, is at most this far away.
		jetstream.PullExpiry(5*time.Second),
		jetstream.ConsumeErrHandler(func(_ jetstream.ConsumeContext, err error) {
			q.log.Debug("consume", "error", err)
		}),
	)
}

// msg adapts a JetStream message to the consumer.
type msg struct{ m jetstream.Msg }

func (m msg) Data() []byte { return m.m.Data() }
func (m msg) Release()     { _ = m.m.NakWithDelay(releaseDelay) }

// Ack waits for the server to confirm, so that a message delivered just
// before a shutdown is not delivered again after it.
func (m msg) Ack() error {
	ctx, cancel := context.WithTimeout(context.Background(), ackTimeout)
	defer cancel()
	return m.m.DoubleAck(ctx)
}
