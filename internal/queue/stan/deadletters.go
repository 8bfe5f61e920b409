package stan

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	stango "github.com/nats-io/stan.go"

	"github.com/openfaas/mailbox/internal/queue"
)

// The dead-letter log is the dead-letter channel: dead letters and
// removals in the order they were stored. NATS Streaming cannot delete a
// message, so a removal is only a record in the log, and a removed dead
// letter stays until the channel's age limit drops it; ReadDeadLetter
// still returns it. The index following the log decides what is removed.

// followWindow is how many records the server sends a follower ahead of
// its acknowledgements: a dead letter may be as large as MaxPayload.
const followWindow = 128

// emptyLogWait is how long LastDeadLetterSeq waits for the newest record
// before it takes the log for empty, or the server for slow.
//
// NATS Streaming never says that a channel is empty: a subscription that
// starts at the last message simply receives nothing. So when nothing
// comes, LastDeadLetterSeq appends a queue.Marker and asks again: the log
// then has a last record, which comes. The marker is written once for an
// empty log (after that it is the last record, until a dead letter comes
// or the channel's age limit drops it), and again only when the server
// is slower than the wait.
const emptyLogWait = 500 * time.Millisecond

// FollowDeadLetters subscribes to the dead-letter channel on the current
// connection and returns ErrUnavailable when the connection to NATS
// drops, even for a moment: a message the server sent meanwhile is lost
// and would come again only after its ack wait, out of order.
func (q *Queue) FollowDeadLetters(ctx context.Context, after uint64, fn func(queue.Record)) error {
	g := q.connected()
	if g == nil {
		return queue.ErrUnavailable
	}
	nc := g.nc
	// Listening before checking: a drop after the check is still heard.
	dropped := nc.StatusChanged(nats.DISCONNECTED, nats.RECONNECTING, nats.CLOSED)
	defer nc.RemoveStatusListener(dropped)
	if !nc.IsConnected() {
		return queue.ErrUnavailable
	}
	start := stango.DeliverAllAvailable()
	if after > 0 {
		// A reset store numbers from 1 again: a subscription past its
		// last record would get only records after it, skipping the new
		// ones at or below after, and the caller would keep the gone ones.
		seen := q.deadLetterMark.get()
		if seen.seq != after {
			seen = mark{seq: after} // read by another Queue: its time is unknown
		}
		kept, err := q.holds(ctx, g, q.deadLetterChannel(), seen)
		if err != nil {
			return err
		}
		if !kept {
			return fmt.Errorf("%w: record %d is no longer the one read (the NATS Streaming store was reset, or the record expired)", queue.ErrLogReset, after)
		}
		start = stango.StartAtSequence(after + 1)
	}
	// mu makes fn's calls end before FollowDeadLetters returns: the
	// client may still be in the callback when it unsubscribes. last
	// skips what the server sends again after its ack wait (fn was slow)
	// and, if the channel is shorter than after, what precedes after.
	// Past the first record, sequences follow one another: a gap means a
	// record was lost on the way, and the caller follows again from last.
	var (
		mu      sync.Mutex
		stopped bool
		first   = true
		last    = after
		gap     = make(chan error, 1)
	)
	sub, err := g.sc.Subscribe(q.deadLetterChannel(), func(m *stango.Msg) {
		mu.Lock()
		defer mu.Unlock()
		if stopped || m.Sequence <= last {
			return
		}
		if !first && m.Sequence != last+1 {
			stopped = true
			gap <- fmt.Errorf("%w: following dead letters: got record %d after %d", queue.ErrUnavailable, m.Sequence, last)
			return
		}
		first, last = false, m.Sequence
		q.deadLetterMark.set(mark{seq: m.Sequence, ts: m.Timestamp})
		r, err := queue.DecodeRecord(m.Sequence, time.Unix(0, m.Timestamp), m.Data)
		if err != nil {
			q.log.Warn("dead-letter record skipped", "seq", m.Sequence, "error", err)
			return
		}
		fn(r)
	}, start, stango.MaxInflight(followWindow))
	if err != nil {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		return fmt.Errorf("%w: following dead letters: %v", queue.ErrUnavailable, err)
	}
	defer func() {
		_ = sub.Unsubscribe()
		mu.Lock()
		stopped = true
		mu.Unlock()
	}()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-dropped:
		return fmt.Errorf("%w: following dead letters: connection lost", queue.ErrUnavailable)
	case <-g.lost:
		return fmt.Errorf("%w: following dead letters: connection lost", queue.ErrUnavailable)
	case <-q.closed:
		return fmt.Errorf("%w: following dead letters: queue closed", queue.ErrUnavailable)
	case err := <-gap:
		return err
	}
}

// connected returns the current connection if NATS is reachable on it.
func (q *Queue) connected() *generation {
	g := q.current()
	if g == nil || !g.up() {
		return nil
	}
	return g
}

// LastDeadLetterSeq subscribes at the last record and reads its
// sequence. When none arrives within emptyLogWait it appends a marker and
// reads again (see emptyLogWait), so it never mistakes a slow server for
// an empty log.
func (q *Queue) LastDeadLetterSeq(ctx context.Context) (uint64, error) {
	g := q.connected()
	if g == nil {
		return 0, queue.ErrUnavailable
	}
	m, err := q.firstDeadLetter(ctx, g, stango.StartWithLastReceived(), emptyLogWait)
	if err != nil {
		return 0, err
	}
	if m == nil {
		if err := q.publish(ctx, g, q.deadLetterChannel(), queue.Marker); err != nil {
			return 0, err
		}
		if m, err = q.firstDeadLetter(ctx, g, stango.StartWithLastReceived(), q.o.PublishTimeout); err != nil {
			return 0, err
		}
		if m == nil {
			return 0, fmt.Errorf("%w: dead-letter channel: its last record was not sent within %v", queue.ErrUnavailable, q.o.PublishTimeout)
		}
	}
	return m.Sequence, nil
}

// ReadDeadLetter subscribes at seq and takes the first record the server
// sends: a later one when seq is no longer kept.
func (q *Queue) ReadDeadLetter(ctx context.Context, seq uint64) (queue.Record, error) {
	g := q.connected()
	if g == nil {
		return queue.Record{}, queue.ErrUnavailable
	}
	// Past the last record the server would wait for the next one.
	last, err := q.LastDeadLetterSeq(ctx)
	if err != nil {
		return queue.Record{}, err
	}
	if seq == 0 || seq > last {
		return queue.Record{}, queue.ErrNoDeadLetter
	}
	// A record at or before last arrives at once, unless every record
	// expired meanwhile.
	m, err := q.firstDeadLetter(ctx, g, stango.StartAtSequence(seq), q.o.PublishTimeout)
	switch {
	case err != nil:
		return queue.Record{}, err
	case m == nil:
		return queue.Record{}, fmt.Errorf("%w: dead letter %d: not sent within %v", queue.ErrUnavailable, seq, q.o.PublishTimeout)
	case m.Sequence != seq:
		return queue.Record{}, queue.ErrNoDeadLetter // dropped by the channel's age limit
	}
	r, err := queue.DecodeRecord(m.Sequence, time.Unix(0, m.Timestamp), m.Data)
	if err != nil || r.Data == nil {
		return queue.Record{}, queue.ErrNoDeadLetter // a removal or a marker
	}
	return r, nil
}

// firstDeadLetter subscribes to the dead-letter channel from start and
// returns the first message the server sends, or nil when none arrives
// within wait.
func (q *Queue) firstDeadLetter(ctx context.Context, g *generation, start stango.SubscriptionOption, wait time.Duration) (*stango.Msg, error) {
	return q.firstMessage(ctx, g, q.deadLetterChannel(), start, wait)
}

// mark is a record of a channel an index has read: its sequence and the
// server's time of it, which another record stored at that sequence after
// a reset does not have.
type mark struct {
	seq uint64
	ts  int64 // 0: unknown
}

// lastMark is the last record an index read from a channel.
type lastMark struct {
	mu sync.Mutex
	m  mark
}

func (l *lastMark) get() mark {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.m
}

func (l *lastMark) set(m mark) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.m = m
}

// holds reports whether channel still holds m: false when its last
// record is older (a reset store numbers from 1 again) or the record at
// m.seq is gone (expired) or another one. An empty channel reads as not
// holding it: the server answered the subscription (a stalled server
// fails it, an error, and nothing is rebuilt) and sent nothing within
// the publish timeout.
func (q *Queue) holds(ctx context.Context, g *generation, channel string, m mark) (bool, error) {
	// Asked for a sequence past its last record, the server would send
	// only what comes next: ask for the last one first.
	last, err := q.firstMessage(ctx, g, channel, stango.StartWithLastReceived(), q.o.PublishTimeout)
	if err != nil || last == nil || last.Sequence < m.seq {
		return false, err
	}
	got, err := q.firstMessage(ctx, g, channel, stango.StartAtSequence(m.seq), q.o.PublishTimeout)
	if err != nil {
		return false, err
	}
	return got != nil && got.Sequence == m.seq && (m.ts == 0 || got.Timestamp == m.ts), nil
}

// firstMessage subscribes to channel from start and returns the first
// message the server sends, or nil when none arrives within wait.
func (q *Queue) firstMessage(ctx context.Context, g *generation, channel string, start stango.SubscriptionOption, wait time.Duration) (*stango.Msg, error) {
	got := make(chan *stango.Msg, 1)
	sub, err := g.sc.Subscribe(channel, func(m *stango.Msg) {
		select {
		case got <- m:
		default:
		}
	}, start, stango.MaxInflight(1))
	if err != nil {
		return nil, fmt.Errorf("%w: channel %s: %v", queue.ErrUnavailable, channel, err)
	}
	defer func() { _ = sub.Unsubscribe() }()
	timer := time.NewTimer(wait)
	defer timer.Stop()
	select {
	case m := <-got:
		return m, nil
	case <-timer.C:
		return nil, nil
	case <-ctx.Done():
		return nil, ctx.Err()
	case <-g.lost:
		return nil, fmt.Errorf("%w: channel %s: connection lost", queue.ErrUnavailable, channel)
	case <-q.closed:
		return nil, queue.ErrUnavailable
	}
}

// RemoveDeadLetter publishes r to the dead-letter channel.
func (q *Queue) RemoveDeadLetter(ctx context.Context, r queue.Removal) error {
	if r.Seq == 0 {
		return errors.New("stan: removal of dead letter 0")
	}
	data, err := queue.EncodeRemoval(r)
	if err != nil {
		return err
	}
	g := q.current()
	if g == nil {
		return queue.ErrUnavailable
	}
	return q.publish(ctx, g, q.deadLetterChannel(), data)
}
