package deadletter

import (
	"context"
	"errors"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/openfaas/mailbox/internal/envelope"
	"github.com/openfaas/mailbox/internal/poll"
	"github.com/openfaas/mailbox/internal/queue"
)

// logQueue is a dead-letter log in memory that can be reset, numbering
// from 1 again, without telling its followers (as a backend that cannot
// tell a reset: FollowDeadLetters never answers queue.ErrLogReset).
type logQueue struct {
	queue.Queue // the rest is not used

	mu      sync.Mutex
	recs    []queue.Record
	changed chan struct{}
}

func newLogQueue() *logQueue { return &logQueue{changed: make(chan struct{})} }

func (q *logQueue) DeadLetter(_ context.Context, e *envelope.Envelope) error {
	data, err := envelope.Encode(e)
	if err != nil {
		return err
	}
	q.mu.Lock()
	defer q.mu.Unlock()
	q.recs = append(q.recs, queue.Record{Seq: uint64(len(q.recs) + 1), Time: time.Now(), Data: data})
	close(q.changed)
	q.changed = make(chan struct{})
	return nil
}

func (q *logQueue) reset() {
	q.mu.Lock()
	defer q.mu.Unlock()
	q.recs = nil
}

func (q *logQueue) FollowDeadLetters(ctx context.Context, after uint64, fn func(queue.Record)) error {
	for {
		q.mu.Lock()
		var next []queue.Record
		for _, r := range q.recs {
			if r.Seq > after {
				next = append(next, r)
			}
		}
		changed := q.changed
		q.mu.Unlock()
		for _, r := range next {
			fn(r)
			after = r.Seq
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-changed:
		}
	}
}

func (q *logQueue) LastDeadLetterSeq(context.Context) (uint64, error) {
	q.mu.Lock()
	defer q.mu.Unlock()
	return uint64(len(q.recs)), nil
}

// runStore runs a store of q until the test ends.
func runStore(t *testing.T, q queue.Queue) *Store {
	t.Helper()
	s, err := New(Options{Queue: q, Limit: 100, Registerer: prometheus.NewRegistry(), Logger: slog.New(slog.NewTextHandler(t.Output(), nil))})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = s.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	return s
}

// killIn stores a dead letter id of fn in q.
func killIn(t *testing.T, q *logQueue, id string) {
	t.Helper()
	if err := q.DeadLetter(context.Background(), &envelope.Envelope{ID: id, Function: "fn", Reason: envelope.ReasonMaxRetries, DeadAt: time.Now().UTC()}); err != nil {
		t.Fatal(err)
	}
}

// listIDs lists s's dead letters' ids, newest first, once it runs.
func listIDs(t *testing.T, s *Store) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var page Page
	var err error
	poll.Until(t, 10*time.Second, "the store runs", func() bool {
		page, err = s.List(ctx, Filter{}, 0, 100)
		return !errors.Is(err, ErrNotRunning)
	})
	if err != nil {
		t.Fatalf("List: %v", err)
	}
	return strings.Join(ids(page.Items), " ")
}

// A log reset under the index (its newest record older than the last one
// the index read) makes the store rebuild its index, whatever the
// backend: it lists what the log holds now. Fault on the old code: the
// index kept the gone dead letters and skipped the new one, whose seq it
// had passed.
func TestStoreRebuildsAfterLogReset(t *testing.T) {
	t.Parallel()
	q := newLogQueue()
	s := runStore(t, q)
	kill := func(id string) { t.Helper(); killIn(t, q, id) }
	listed := func() string { t.Helper(); return listIDs(t, s) }
	kill("old1")
	kill("old2")
	kill("old3")
	if got := listed(); got != "old3 old2 old1" {
		t.Fatalf("before the reset: %q", got)
	}
	q.reset()
	kill("new1")
	if got := listed(); got != "new1" {
		t.Fatalf("after the reset: %q, want new1", got)
	}
}

// racingLog answers LastDeadLetterSeq with the head it read before a new
// dead letter arrived and the index read it: the head a lookup sees can
// be older than what the follower applied meanwhile.
type racingLog struct {
	*logQueue
	store *Store
	race  bool
}

func (q *racingLog) LastDeadLetterSeq(ctx context.Context) (uint64, error) {
	head, err := q.logQueue.LastDeadLetterSeq(ctx)
	if !q.race || err != nil {
		return head, err
	}
	q.race = false
	if err := q.DeadLetter(ctx, &envelope.Envelope{ID: "racing", Function: "fn", Reason: envelope.ReasonMaxRetries, DeadAt: time.Now().UTC()}); err != nil {
		return 0, err
	}
	for {
		q.store.mu.Lock()
		applied := q.store.x.applied
		q.store.mu.Unlock()
		if applied > head {
			return head, nil
		}
		select {
		case <-ctx.Done():
			return 0, ctx.Err()
		case <-time.After(time.Millisecond):
		}
	}
}

// A dead letter read by the follower while a lookup asks for the log's
// head is no reset: the store does not rebuild its index for it. Fault
// on the first version: every such race wiped and re-read the index.
func TestStoreNoRebuildWhenHeadRaces(t *testing.T) {
	t.Parallel()
	q := &racingLog{logQueue: newLogQueue()}
	s := runStore(t, q)
	q.store = s
	killIn(t, q.logQueue, "first")
	list := func() string { t.Helper(); return listIDs(t, s) }
	if got := list(); got != "first" {
		t.Fatalf("listed %q, want first", got)
	}
	q.race = true
	if got := list(); got != "racing first" {
		t.Fatalf("listed %q, want racing first", got)
	}
	s.mu.Lock()
	rebuilds := s.rebuilds
	s.mu.Unlock()
	if rebuilds != 0 {
		t.Errorf("the index was rebuilt %d times, want 0: a dead letter read during a lookup is no reset", rebuilds)
	}
}
