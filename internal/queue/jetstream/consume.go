package jetstream

import (
	"context"
	"log/slog"
	"sync"
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

// ackWait is how long the server waits to hear of a message it delivered
// (an ack, a nak or a progress report) before it delivers the message
// again, to any connector. A connector reports progress on every message
// it holds (keepInProgress), so the ack wait is not sized for the longest
// call: it is how long the messages of a connector that died wait before
// another connector gets them.
const ackWait = 10 * time.Second

// progressEvery is how often a held message is reported in progress:
// four times per ack wait, so that one report lost on the way does not
// let the ack wait pass.
const progressEvery = ackWait / 4

// pullExpiry bounds each pull request. After a leader change the next
// pull, which finds the new leader, is at most this far away; a consumer
// that stops waits for the pull it has made to end.
const pullExpiry = 2 * time.Second

// holdFor is the most a connector keeps a message in progress, from when
// it receives it: its start budget (early + HandlerTimeout, waiting for
// DueAt and a delivery slot), its call (HandlerTimeout) and a confirmed
// ack. A handler that outlives its context is not waited on for ever:
// the server delivers the message again one ack wait later.
func (q *Queue) holdFor() time.Duration {
	return early + 2*q.o.HandlerTimeout + ackTimeout
}

// minDuplicateWindow is the least de-duplication window the work stream
// needs so that a retry a connector stored just before it died, without
// acknowledging the message, is refused when the connector that gets the
// message next stores it again: the dying connector's ack (ackTimeout),
// the ack wait, then the next connector's start budget (early +
// handlerTimeout) and call (handlerTimeout), and a margin. Inside the
// window the id alone refuses the second store, even when the first has
// been delivered and removed meanwhile. (A message that finds every
// connector's held window full waits on the server longer: then only a
// first store still waiting refuses the second.)
func minDuplicateWindow(handlerTimeout time.Duration) time.Duration {
	return ackTimeout + ackWait + early + 2*handlerTimeout + consume.AckMargin
}

// ensureConsumer creates or updates the durable consumer connectors share.
func (q *Queue) ensureConsumer(ctx context.Context) (jetstream.Consumer, error) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	return q.js.CreateOrUpdateConsumer(ctx, q.o.Stream, jetstream.ConsumerConfig{
		Durable:        q.o.Consumer,
		FilterSubjects: []string{q.dueSubject(">"), q.legacyDueSubject()},
		AckPolicy:      jetstream.AckExplicitPolicy,
		AckWait:        ackWait,
		MaxAckPending:  -1, // each connector bounds what it holds itself
		MaxDeliver:     -1, // a message is never dropped after N tries
		DeliverPolicy:  jetstream.DeliverAllPolicy,
	})
}

// Consume pulls due messages from the durable consumer, shared with other
// connectors, and calls h for each once it is due. It returns nil once ctx
// ends and in-flight calls have finished (bounded by HandlerTimeout).
//
// It pulls only as many messages as it has room for in held, so every
// message it receives is in its hands at once and reported in progress
// until its delivery is over: none waits unseen in a client buffer while
// its ack wait runs out.
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
	hold := q.holdFor()
	// held bounds the messages this connector holds: a place is taken
	// before the message is pulled and freed when its delivery is over.
	held := make(chan struct{}, q.o.MaxInflight+prefetch)
	// take is called for each message pulled, with its place in held.
	take := func(m jetstream.Msg) {
		// Once stopping, what is still arriving goes back at once, for
		// another connector to take.
		if ctx.Err() != nil {
			<-held
			_ = m.Nak()
			return
		}
		received := time.Now()
		p := keepInProgress(m, received.Add(hold), q.log)
		startBy := received.Add(budget)
		if !pool.Spawn(func() {
			defer func() { <-held }()
			d.Deliver(msg{m, p}, startBy, h)
		}) {
			<-held
			p.stop()
			_ = m.Nak()
		}
	}

	var c jetstream.Consumer
	backoff := 100 * time.Millisecond
	for ctx.Err() == nil {
		var err error
		if c == nil {
			c, err = q.ensureConsumer(ctx)
		}
		if err == nil {
			n := reserve(ctx, held)
			if n == 0 {
				break
			}
			var got int
			got, err = pull(c, n, take)
			for range n - got {
				<-held
			}
		}
		if err == nil {
			backoff = 100 * time.Millisecond
			continue
		}
		if ctx.Err() != nil {
			break
		}
		// The consumer may be gone or have moved: define it again.
		c = nil
		q.log.Warn("cannot consume, retrying", "error", err, "retry_in", backoff)
		q.waitToRetry(ctx, backoff)
		backoff = min(backoff*2, 5*time.Second)
	}
	pool.Stop(q.o.HandlerTimeout)
	return nil
}

// waitToRetry waits for backoff, or until the connection is back if it
// is down now, so that pulling resumes as soon as NATS is reachable again.
func (q *Queue) waitToRetry(ctx context.Context, backoff time.Duration) {
	down := !q.nc.IsConnected()
	timer := time.NewTimer(backoff)
	defer timer.Stop()
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-timer.C:
			return
		case <-tick.C:
			if down && q.nc.IsConnected() {
				return
			}
		}
	}
}

// reserve takes every free place in held, waiting for the first, and
// returns how many it took: 0 once ctx ends.
func reserve(ctx context.Context, held chan struct{}) int {
	select {
	case held <- struct{}{}:
	case <-ctx.Done():
		return 0
	}
	n := 1
	for n < cap(held) {
		select {
		case held <- struct{}{}:
			n++
		default:
			return n
		}
	}
	return n
}

// pull asks c for up to n messages and hands each to take as it arrives,
// until n have come or the pull expires. It is not cut short when the
// consumer stops, so that what the server sends is given back at once
// rather than left to its ack wait.
func pull(c jetstream.Consumer, n int, take func(jetstream.Msg)) (got int, err error) {
	batch, err := c.Fetch(n, jetstream.FetchMaxWait(pullExpiry))
	if err != nil {
		return 0, err
	}
	for m := range batch.Messages() {
		got++
		take(m)
	}
	return got, batch.Error()
}

// progress reports a held message in progress (InProgress) every
// progressEvery, which restarts its ack wait on the server, until it is
// stopped or its hold limit passes.
type progress struct {
	m     jetstream.Msg
	until time.Time
	log   *slog.Logger

	mu      sync.Mutex
	stopped bool
	timer   *time.Timer
}

func keepInProgress(m jetstream.Msg, until time.Time, log *slog.Logger) *progress {
	p := &progress{m: m, until: until, log: log}
	p.mu.Lock()
	defer p.mu.Unlock()
	p.timer = time.AfterFunc(progressEvery, p.report)
	return p
}

func (p *progress) report() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.stopped {
		return
	}
	if time.Now().After(p.until) {
		p.stopped = true
		var seq uint64
		if meta, err := p.m.Metadata(); err == nil {
			seq = meta.Sequence.Stream
		}
		p.log.Warn("a message is still held past its start budget, call and ack, and is no longer reported in progress: NATS will deliver it again",
			"stream_sequence", seq, "redelivered_within", ackWait)
		return
	}
	if err := p.m.InProgress(); err != nil {
		p.log.Debug("cannot report a held message in progress", "error", err)
	}
	p.timer.Reset(progressEvery)
}

// stop ends the reports; none is sent once it returns.
func (p *progress) stop() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.stopped = true
	p.timer.Stop()
}

// msg adapts a JetStream message to the consumer.
type msg struct {
	m jetstream.Msg
	p *progress
}

func (m msg) Data() []byte { return m.m.Data() }

// Release gives the message back; it is no longer reported in progress
// first, so that no report moves its redelivery.
func (m msg) Release() {
	m.p.stop()
	_ = m.m.NakWithDelay(releaseDelay)
}

// Ack waits for the server to confirm, so that a message delivered just
// before a shutdown is not delivered again after it. The message is
// reported in progress until the server has answered.
func (m msg) Ack() error {
	defer m.p.stop()
	ctx, cancel := context.WithTimeout(context.Background(), ackTimeout)
	defer cancel()
	return m.m.DoubleAck(ctx)
}
