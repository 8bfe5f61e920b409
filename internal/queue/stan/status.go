package stan

import (
	"bytes"
	"container/list"
	"context"
	"sync"
	"time"

	"github.com/nats-io/nuid"
	stango "github.com/nats-io/stan.go"

	"github.com/openfaas/mailbox/internal/queue"
	"github.com/openfaas/mailbox/internal/status"
)

// NATS Streaming keeps no last value per subject, so statuses are events
// on one channel, <prefix>.status, and a process that answers lookups
// keeps its own index of it: it subscribes from the start of the channel
// the first time Status is called (and again after each reconnect), and
// keeps the latest status of each id in memory, at most StatusIndexLimit
// of them. The connector never calls Status, so it keeps no index.

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
	if !q.Connected() {
		return status.Status{}, queue.ErrUnavailable
	}
	q.indexOnce.Do(func() { go q.runIndex() })
	if err := q.index.waitSynced(ctx); err != nil {
		return status.Status{}, queue.ErrUnavailable
	}
	s, ok := q.index.get(id, time.Now())
	if !ok {
		return status.Status{}, queue.ErrNoStatus
	}
	return s, nil
}

// runIndex keeps the index subscribed, one connection after another,
// until the queue closes.
func (q *Queue) runIndex() {
	ctx, cancel := context.WithCancel(context.Background())
	go func() { <-q.closed; cancel() }()
	for {
		g, err := q.wait(ctx)
		if err != nil {
			return
		}
		q.indexGeneration(g)
		select {
		case <-q.closed:
			return
		default:
		}
	}
}

// indexGeneration replays the channel into the index on g, publishes a
// marker and marks the index synced once it reads the marker back, then
// follows the channel until g is lost. Replaying again after a reconnect
// changes nothing already known: a status only replaces one it
// supersedes, and an equal one is the same.
func (q *Queue) indexGeneration(g *generation) {
	token := append(append([]byte{}, syncMark...), nuid.Next()...)
	sub, err := g.sc.Subscribe(StatusChannel(q.o.Prefix), func(m *stango.Msg) {
		if bytes.HasPrefix(m.Data, syncMark) {
			if bytes.Equal(m.Data, token) {
				q.index.setSynced(true)
			}
			return
		}
		s, err := status.Decode(m.Data)
		if err != nil {
			q.log.Warn("stored status is not one, ignored", "seq", m.Sequence, "error", err)
			return
		}
		q.index.put(s, time.Now())
	}, stango.DeliverAllAvailable(), stango.MaxInflight(indexWindow))
	if err != nil {
		q.log.Warn("cannot subscribe to the status channel, retrying", "error", err)
		select {
		case <-g.lost:
		case <-q.closed:
		case <-time.After(time.Second):
		}
		return
	}
	defer func() {
		q.index.setSynced(false)
		_ = sub.Close()
	}()
	ctx, cancel := context.WithTimeout(context.Background(), q.o.PublishTimeout)
	err = q.publish(ctx, g, StatusChannel(q.o.Prefix), token)
	cancel()
	if err != nil {
		q.log.Warn("cannot publish the status index's marker, retrying", "error", err)
		select {
		case <-g.lost:
		case <-q.closed:
		case <-time.After(time.Second):
		}
		return
	}
	select {
	case <-g.lost:
	case <-q.closed:
	}
}

// statusIndex is the latest status of each id, least recently updated
// first, at most limit of them.
type statusIndex struct {
	limit int

	mu        sync.Mutex
	byID      map[string]*list.Element // of status.Status
	order     *list.List
	lastSweep time.Time
	synced    bool
	changed   chan struct{} // closed and replaced when synced changes
}

func newStatusIndex(limit int) *statusIndex {
	return &statusIndex{limit: limit, byID: map[string]*list.Element{}, order: list.New(), changed: make(chan struct{})}
}

// sweepEvery is how often put drops expired statuses.
const sweepEvery = time.Minute

// put keeps s unless the status known for its id supersedes it. At the
// limit, the expired statuses go first, then the least recently updated.
func (x *statusIndex) put(s status.Status, now time.Time) {
	x.mu.Lock()
	defer x.mu.Unlock()
	if now.Sub(x.lastSweep) >= sweepEvery {
		x.sweep(now)
	}
	if s.Expired(now) {
		return
	}
	if el, ok := x.byID[s.ID]; ok {
		if s.Supersedes(el.Value.(status.Status), now) {
			el.Value = s
			x.order.MoveToBack(el)
		}
		return
	}
	if len(x.byID) >= x.limit {
		// A full index forgets its least recently updated entry; sweeping
		// here, on every new id, would cost the whole index each time.
		for len(x.byID) >= x.limit {
			x.remove(x.order.Front())
		}
	}
	x.byID[s.ID] = x.order.PushBack(s)
}

func (x *statusIndex) get(id string, now time.Time) (status.Status, bool) {
	x.mu.Lock()
	defer x.mu.Unlock()
	el, ok := x.byID[id]
	if !ok {
		return status.Status{}, false
	}
	s := el.Value.(status.Status)
	if s.Expired(now) {
		x.remove(el)
		return status.Status{}, false
	}
	return s, true
}

func (x *statusIndex) sweep(now time.Time) {
	x.lastSweep = now
	for el := x.order.Front(); el != nil; {
		next := el.Next()
		if el.Value.(status.Status).Expired(now) {
			x.remove(el)
		}
		el = next
	}
}

func (x *statusIndex) remove(el *list.Element) {
	delete(x.byID, el.Value.(status.Status).ID)
	x.order.Remove(el)
}

func (x *statusIndex) len() int {
	x.mu.Lock()
	defer x.mu.Unlock()
	return len(x.byID)
}

func (x *statusIndex) setSynced(v bool) {
	x.mu.Lock()
	defer x.mu.Unlock()
	if x.synced != v {
		x.synced = v
		close(x.changed)
		x.changed = make(chan struct{})
	}
}

// waitSynced returns nil once the index has read the channel up to the
// time it subscribed.
func (x *statusIndex) waitSynced(ctx context.Context) error {
	for {
		x.mu.Lock()
		synced, changed := x.synced, x.changed
		x.mu.Unlock()
		if synced {
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-changed:
		}
	}
}
