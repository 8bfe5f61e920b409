package stan

import (
	"bytes"
	"context"
	"sync/atomic"
	"time"

	"github.com/nats-io/nuid"
	stango "github.com/nats-io/stan.go"

	"github.com/openfaas/mailbox/internal/queue"
	"github.com/openfaas/mailbox/internal/status"
)

// NATS Streaming keeps no last value per subject, so statuses are events
// on one channel, <prefix>.status, and a process that answers lookups
// keeps its own index of it: it subscribes from the start of the channel
// the first time Status is called (and again on each new connection;
// after a NATS reconnect under the same session, from where the link
// went down), and keeps the latest status of each id in memory (a
// status.Index), at most StatusIndexLimit of them. The same index counts the messages waiting or
// in flight per function (Waiting). The connector calls neither, so it
// keeps no index.

// StatusChannel is the channel statuses are published on.
func StatusChannel(prefix string) string { return prefix + ".status" }

// syncMark starts a marker an index publishes to learn when it has read
// the channel up to now; every index skips markers.
var syncMark = []byte("sync:")

// indexWindow is how many statuses the server sends an index ahead of
// its acknowledgements while it replays the channel.
const indexWindow = 8192

// RecordStatus publishes s to the status channel. Which status wins is
// decided when an index reads it (status.Status.Supersedes).
func (q *Queue) RecordStatus(ctx context.Context, s status.Status) error {
	s.ExpiresAt = s.Expiry(q.o.StatusRetention).UTC()
	data, err := status.Encode(s)
	if err != nil {
		return err
	}
	g := q.current()
	if g == nil {
		return queue.ErrUnavailable
	}
	return q.publish(ctx, g, StatusChannel(q.o.Prefix), data)
}

// Status looks id up in the index, starting the index on first use and
// waiting (until ctx ends) for it to have read the channel up to now.
func (q *Queue) Status(ctx context.Context, id string) (status.Status, error) {
	if err := q.syncIndex(ctx); err != nil {
		return status.Status{}, err
	}
	s, ok := q.index.Get(id, time.Now())
	if !ok {
		return status.Status{}, queue.ErrNoStatus
	}
	return s, nil
}

// Waiting counts, per function, the messages whose latest status in the
// index is waiting or in flight (status.Counted), starting the index on
// first use and waiting (until ctx ends) for it to have read the channel
// up to now.
func (q *Queue) Waiting(ctx context.Context) (map[string]int, error) {
	if err := q.syncIndex(ctx); err != nil {
		return nil, err
	}
	return q.index.Waiting(time.Now()), nil
}

// Reserve reserves claims against Options.Quota in the index Waiting
// reads (queue.Quota.Reserve). NATS Streaming's channels have no count or
// size limit (one would drop waiting messages), so this check is the only
// bound.
func (q *Queue) Reserve(ctx context.Context, claims ...status.Claim) (func(), error) {
	if q.o.Quota.None() || len(claims) == 0 {
		return func() {}, nil
	}
	if !q.Connected() {
		return nil, queue.ErrUnavailable
	}
	q.startIndex()
	return q.o.Quota.Reserve(ctx, q.index, q.log, claims)
}

// startIndex starts following the status channel into the index, once.
func (q *Queue) startIndex() { q.indexOnce.Do(func() { go q.runIndex() }) }

// syncIndex starts the index on first use and waits for it to be synced.
func (q *Queue) syncIndex(ctx context.Context) error {
	if !q.Connected() {
		return queue.ErrUnavailable
	}
	q.startIndex()
	if err := q.index.WaitSynced(ctx); err != nil {
		return queue.ErrUnavailable
	}
	return nil
}

// runIndex keeps the index subscribed, one connection after another,
// until the queue closes. A new connection (a new streaming session)
// reads the channel from the start; a NATS reconnect under the same
// session reads it from where the link went down (indexGeneration).
func (q *Queue) runIndex() {
	ctx, cancel := context.WithCancel(context.Background())
	go func() { <-q.closed; cancel() }()
	var (
		last *generation
		from uint64 // the sequence to read from; 0: the start of the channel
	)
	for {
		g, err := q.wait(ctx)
		if err != nil {
			return
		}
		if g != last {
			last, from = g, 0
		}
		from = q.indexGeneration(g, from)
		select {
		case <-q.closed:
			return
		default:
		}
	}
}

// indexGeneration reads the channel into the index on g from sequence
// from (0: from the start), publishes a marker and marks the index
// synced once it reads the marker back, then follows the channel until
// g is lost or its NATS connection reconnects. It returns the sequence
// the next subscription on g reads from. Reading a status again changes
// nothing already known: a status only replaces one it supersedes, and
// an equal one is the same.
//
// A reconnect ends the subscription whatever it is doing: the server
// kept it, but what it sent while the link was down is lost and would
// come again only after the ack wait, so the index would miss those
// statuses meanwhile. The next subscription starts just after the last
// status this one received before the link went down, and keeps the
// index: what a link loses is the tail of what the server sent on it
// (TCP delivers in order or not at all), and the server sends one
// subscription's statuses in sequence order, so everything lost comes
// after that status and is read again. The mark counts only statuses
// received while the NATS connection's reconnect count is the one read
// before subscribing: nats.go counts a reconnect before it reads
// anything on the new link, so a status the old subscription receives
// after the reconnect (newer than the lost ones) never advances it,
// whereas a mark taken when the disconnect is reported (an asynchronous
// callback) could already have. A status received on the old link but
// handled after the count changed is read again, which is harmless.
func (q *Queue) indexGeneration(g *generation, from uint64) (next uint64) {
	// In this order: a reconnect after the count was read closes the
	// channel, so the subscription ends and its mark is not trusted.
	reconnected := g.reconnects()
	link := g.nc.Stats().Reconnects
	var read atomic.Uint64 // the last sequence received on link; 0: none
	next = from
	defer func() {
		if seq := read.Load(); seq > 0 {
			next = seq + 1
		}
	}()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() {
		select {
		case <-g.lost:
		case <-q.closed:
		case <-ctx.Done():
		case <-reconnected:
			q.log.Info("NATS reconnected: reading the status channel from the last status read before the link went down", "from_seq", max(read.Load()+1, from))
		}
		cancel()
	}()
	retry := func(what string, err error) {
		q.log.Warn("cannot "+what+", retrying", "error", err)
		select {
		case <-ctx.Done():
		case <-time.After(time.Second):
		}
	}
	token := append(append([]byte{}, syncMark...), nuid.Next()...)
	// Reading the channel again only adds to the index: when the store
	// was reset, what the index holds is gone, and it starts afresh.
	if seen := q.statusMark.get(); seen.seq > 0 {
		kept, err := q.holds(ctx, g, StatusChannel(q.o.Prefix), seen)
		if err != nil {
			retry("read the status channel", err)
			return
		}
		if !kept {
			q.log.Warn("the status channel no longer holds the last status read (the NATS Streaming store was reset, or it expired): rebuilding the status index from the channel", "seq", seen.seq)
			q.index.Reset()
			q.statusMark.set(mark{})
			next = 0
		}
	}
	start := stango.DeliverAllAvailable()
	if next > 0 {
		start = stango.StartAtSequence(next)
	}
	began, first := time.Now(), next
	var count atomic.Int64
	sub, err := g.sc.Subscribe(StatusChannel(q.o.Prefix), func(m *stango.Msg) {
		q.statusMark.set(mark{seq: m.Sequence, ts: m.Timestamp})
		if g.nc.Stats().Reconnects == link && m.Sequence > read.Load() {
			read.Store(m.Sequence)
		}
		n := count.Add(1)
		if bytes.HasPrefix(m.Data, syncMark) {
			if bytes.Equal(m.Data, token) {
				q.index.SetSynced(true)
				q.log.Info("status index synced", "from_seq", first, "read", n, "took", time.Since(began).Round(time.Millisecond).String())
			}
			return
		}
		s, err := status.Decode(m.Data)
		if err != nil {
			q.log.Warn("stored status is not one, ignored", "seq", m.Sequence, "error", err)
			return
		}
		q.index.Put(s, time.Now())
	}, start, stango.MaxInflight(indexWindow))
	if err != nil {
		retry("subscribe to the status channel", err)
		return
	}
	defer func() {
		q.index.SetSynced(false)
		_ = sub.Close()
	}()
	pctx, pcancel := context.WithTimeout(ctx, q.o.PublishTimeout)
	err = q.publish(pctx, g, StatusChannel(q.o.Prefix), token)
	pcancel()
	if err != nil {
		retry("publish the status index's marker", err)
		return
	}
	<-ctx.Done()
	return
}
