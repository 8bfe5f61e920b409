// Package queuetest is the conformance suite every queue backend passes.
// A backend's test calls Exercise with a constructor for a fresh embedded
// server; the suite never branches on which backend it runs.
package queuetest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net/http"
	"runtime"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/openfaas/mailbox/internal/envelope"
	"github.com/openfaas/mailbox/internal/poll"
	"github.com/openfaas/mailbox/internal/queue"
	"github.com/openfaas/mailbox/internal/status"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

// Options are the client settings the suite varies.
type Options struct {
	MaxInflight    int
	HandlerTimeout time.Duration
	// Window bounds the messages a consumer holds per internal stream
	// (the backend's equivalent of a tier window).
	Window int
	// Registerer, if set, receives the backend's metrics.
	Registerer prometheus.Registerer
	// StatusRetention is how long statuses are kept; zero: the default.
	StatusRetention time.Duration
	// Logger receives the backend's logs; the suite sets it to the test's
	// output, shown when the test fails.
	Logger *slog.Logger
	// DuplicateWindow is how long a backend that de-duplicates remembers
	// a stored message's id; zero: the backend's default.
	DuplicateWindow time.Duration
	// Quota bounds the messages waiting; zero: none.
	Quota queue.Quota
}

// Common returns the backend options for o on the broker at url, with a
// short publish timeout.
func (o Options) Common(url string) queue.Options {
	return queue.Options{
		URL:             url,
		MaxInflight:     o.MaxInflight,
		HandlerTimeout:  o.HandlerTimeout,
		PublishTimeout:  time.Second,
		StatusRetention: o.StatusRetention,
		Logger:          o.Logger,
		Registerer:      o.Registerer,
		Quota:           o.Quota,
	}
}

// Server is one embedded broker with its data, started for one test.
type Server interface {
	// Open returns a new client; the suite closes it.
	Open(t *testing.T, o Options) queue.Queue
	// Restart stops the broker and starts it again on the same address
	// and data, as after a crash of the broker process.
	Restart(t testing.TB)
	// Stop stops the broker for good.
	Stop()
	// DeadLetters returns every dead letter stored so far.
	DeadLetters(t *testing.T) []*envelope.Envelope
	// PublishRaw stores data, which need not be an envelope, where a
	// consumer takes it as due at once.
	PublishRaw(t *testing.T, data []byte)
	// Deduplicates reports whether the backend stores a message scheduled
	// twice with the same function, id and retry count once, answering
	// the second Schedule queue.ErrRepeat, within its de-duplication
	// window and after it (JetStream). A backend that does not stores
	// both, and both are delivered (NATS Streaming).
	Deduplicates() bool
	// DeletesDeadLetters reports whether RemoveDeadLetter deletes the
	// removed record, so that ReadDeadLetter no longer finds it
	// (JetStream); otherwise only the log says it is removed.
	DeletesDeadLetters() bool
}

// Exercise runs the suite. newServer starts a fresh broker for each test.
func Exercise(t *testing.T, newServer func(t *testing.T) Server) {
	tests := []struct {
		name string
		run  func(t *testing.T, s Server)
	}{
		{"PublishConsume", testPublishConsume},
		{"DelayHonoured", testDelayHonoured},
		{"Overdue", testOverdue},
		{"DueOrder", testDueOrder},
		{"ShortNotBehindLong", testShortNotBehindLong},
		{"HandlerErrorRedelivers", testHandlerErrorRedelivers},
		{"HandlerDeadline", testHandlerDeadline},
		{"ConsumerCrash", testConsumerCrash},
		{"ServerRestart", testServerRestart},
		{"DeadLetter", testDeadLetter},
		{"DeadLetterLog", testDeadLetterLog},
		{"TooLarge", testTooLarge},
		{"Unavailable", testUnavailable},
		{"BoundedBacklog", testBoundedBacklog},
		{"Deduplicates", testDeduplicates},
		{"IDsScopedToFunction", testIDsScopedToFunction},
		{"RepeatInsideWindow", func(t *testing.T, s Server) { testRepeat(t, s, false) }},
		{"RepeatOutsideWindow", func(t *testing.T, s Server) { testRepeat(t, s, true) }},
		{"Quota", testQuota},
		{"QuotaReservations", testQuotaReservations},
		{"Malformed", testMalformed},
		{"MalformedRedelivered", testMalformedRedelivered},
		{"StatusRecordAndRead", testStatusRecordAndRead},
		{"StatusLatestWins", testStatusLatestWins},
		{"StatusRetention", testStatusRetention},
		{"StatusSurvivesRestart", testStatusSurvivesRestart},
		{"WaitingCounts", testWaitingCounts},
		{"WaitingForgetsExpired", testWaitingForgetsExpired},
		{"WaitingSurvivesRestart", testWaitingSurvivesRestart},
		{"StatusPerFunction", testStatusPerFunction},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			tc.run(t, newServer(t))
		})
	}
}

var defaults = Options{MaxInflight: 16, HandlerTimeout: time.Second, Window: 64}

// open returns a connected client that is closed when the test ends.
func open(t *testing.T, s Server, o Options) queue.Queue {
	t.Helper()
	if o.Logger == nil {
		o.Logger = slog.New(slog.NewTextHandler(t.Output(), nil))
	}
	q := s.Open(t, o)
	t.Cleanup(func() { _ = q.Close() })
	poll.Until(t, 10*time.Second, "client connects", q.Connected)
	return q
}

func message(id string, due time.Time) *envelope.Envelope {
	return &envelope.Envelope{
		ID:         id,
		Function:   "fn",
		Header:     http.Header{"Content-Type": {"text/plain"}, "X-Custom": {"a", "b"}},
		Body:       []byte("body of " + id),
		Policy:     envelope.Policy{MaxRetries: new(3), Delay: new(time.Second)},
		AcceptedAt: time.Now().UTC(),
		DueAt:      due,
	}
}

func schedule(t *testing.T, q queue.Queue, es ...*envelope.Envelope) {
	t.Helper()
	for _, e := range es {
		if err := q.Schedule(context.Background(), e); err != nil {
			t.Fatalf("Schedule(%s): %v", e.ID, err)
		}
	}
}

// scheduleAgain schedules e, which may have been stored already: a
// repeat (queue.ErrRepeat) is no failure.
func scheduleAgain(t *testing.T, q queue.Queue, es ...*envelope.Envelope) {
	t.Helper()
	for _, e := range es {
		if err := q.Schedule(context.Background(), e); err != nil && !errors.Is(err, queue.ErrRepeat) {
			t.Fatalf("Schedule(%s) again: %v", e.ID, err)
		}
	}
}

// recorder is a handler that remembers what it received and when.
type recorder struct {
	mu   sync.Mutex
	got  []*envelope.Envelope
	at   map[string]time.Time
	fail func(e *envelope.Envelope) error // nil: accept everything
}

func newRecorder() *recorder { return &recorder{at: map[string]time.Time{}} }

func (r *recorder) handle(_ context.Context, e *envelope.Envelope) error {
	now := time.Now()
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.fail != nil {
		if err := r.fail(e); err != nil {
			return err
		}
	}
	// Copy: the body may alias the broker's buffer.
	c := *e
	c.Body = bytes.Clone(e.Body)
	r.got = append(r.got, &c)
	if _, ok := r.at[e.ID]; !ok {
		r.at[e.ID] = now
	}
	return nil
}

// firstDeliveries lists the messages received, each once, in the order
// of their first delivery: delivery is at least once, and a backend that
// lost its connection may deliver again what it held.
func (r *recorder) firstDeliveries() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	var ids []string
	seen := map[string]bool{}
	for _, e := range r.got {
		if !seen[e.ID] {
			seen[e.ID] = true
			ids = append(ids, e.ID)
		}
	}
	return ids
}

// distinct is the number of different messages received.
func (r *recorder) distinct() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.at)
}

func (r *recorder) has(id string) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	_, ok := r.at[id]
	return ok
}

// consume runs q.Consume with h until the test ends; stop ends it early.
func consume(t *testing.T, q queue.Queue, h queue.Handler) (stop func()) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- q.Consume(ctx, h) }()
	var once sync.Once
	stop = func() {
		once.Do(func() {
			cancel()
			if err := <-done; err != nil {
				t.Errorf("Consume: %v", err)
			}
		})
	}
	t.Cleanup(stop)
	return stop
}

func testPublishConsume(t *testing.T, s Server) {
	q := open(t, s, defaults)
	r := newRecorder()
	consume(t, q, r.handle)
	want := map[string]*envelope.Envelope{}
	for i := range 20 {
		e := message(fmt.Sprintf("m%02d", i), time.Now())
		want[e.ID] = e
		schedule(t, q, e)
	}
	empty := message("empty", time.Now())
	empty.Body = nil
	want[empty.ID] = empty
	schedule(t, q, empty)

	poll.Until(t, 15*time.Second, "all messages delivered", func() bool { return r.distinct() == len(want) })
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, got := range r.got {
		w := want[got.ID]
		if !bytes.Equal(got.Body, w.Body) || got.Function != w.Function || *got.MaxRetries != *w.MaxRetries ||
			got.Header.Get("Content-Type") != "text/plain" || len(got.Header["X-Custom"]) != 2 || !got.DueAt.Equal(w.DueAt) {
			t.Errorf("delivered %+v, want %+v", got, w)
		}
	}
}

func testDelayHonoured(t *testing.T, s Server) {
	q := open(t, s, defaults)
	r := newRecorder()
	consume(t, q, r.handle)
	due := time.Now().Add(2500 * time.Millisecond)
	schedule(t, q, message("late", due))
	poll.Until(t, 15*time.Second, "delayed message delivered", func() bool { return r.has("late") })
	if at := r.at["late"]; at.Before(due) {
		t.Fatalf("delivered at %v, %v before it was due", at, due.Sub(at))
	}
}

func testOverdue(t *testing.T, s Server) {
	q := open(t, s, defaults)
	r := newRecorder()
	consume(t, q, r.handle)
	// Due long ago, as after a long outage or a requeue with a clock ahead.
	schedule(t, q, message("overdue", time.Now().Add(-time.Hour)), message("just", time.Now().Add(-time.Millisecond)))
	poll.Until(t, 10*time.Second, "overdue messages delivered at once", func() bool { return r.distinct() == 2 })
}

func testDueOrder(t *testing.T, s Server) {
	q := open(t, s, defaults)
	r := newRecorder()
	consume(t, q, r.handle)
	now := time.Now()
	// Published in an order unlike their due order, through several tiers.
	schedule(t, q,
		message("third", now.Add(4500*time.Millisecond)),
		message("first", now.Add(1500*time.Millisecond)),
		message("second", now.Add(3*time.Second)),
		message("zeroth", now.Add(100*time.Millisecond)),
	)
	poll.Until(t, 20*time.Second, "all delivered", func() bool { return r.distinct() == 4 })
	got := r.firstDeliveries()
	want := []string{"zeroth", "first", "second", "third"}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("delivery order %v, want %v", got, want)
	}
}

func testShortNotBehindLong(t *testing.T, s Server) {
	q := open(t, s, Options{MaxInflight: 4, HandlerTimeout: time.Second, Window: 8})
	r := newRecorder()
	consume(t, q, r.handle)
	now := time.Now()
	for i := range 200 {
		schedule(t, q, message(fmt.Sprintf("hour%03d", i), now.Add(time.Hour)))
	}
	for i := range 200 {
		schedule(t, q, message(fmt.Sprintf("minute%03d", i), now.Add(time.Minute+time.Duration(i)*time.Millisecond)))
	}
	for i := range 5 {
		schedule(t, q, message(fmt.Sprintf("second%d", i), time.Now().Add(time.Second)))
	}
	poll.Until(t, 20*time.Second, "1 s messages delivered while 1 h and 1 min ones wait", func() bool { return r.distinct() == 5 })
	for _, id := range r.firstDeliveries() {
		if id[:6] != "second" {
			t.Fatalf("delivered %s early", id)
		}
	}
}

func testHandlerErrorRedelivers(t *testing.T, s Server) {
	q := open(t, s, defaults)
	r := newRecorder()
	failed := 0
	r.fail = func(e *envelope.Envelope) error {
		if failed < 2 {
			failed++
			return errors.New("not yet")
		}
		return nil
	}
	consume(t, q, r.handle)
	schedule(t, q, message("retry", time.Now()))
	poll.Until(t, 30*time.Second, "message delivered again after handler errors", func() bool { return r.has("retry") })
	if failed != 2 {
		t.Fatalf("handler failed %d times, want 2", failed)
	}
}

func testHandlerDeadline(t *testing.T, s Server) {
	q := open(t, s, defaults)
	deadlines := make(chan time.Duration, 10)
	consume(t, q, func(ctx context.Context, e *envelope.Envelope) error {
		deadline, ok := ctx.Deadline()
		if !ok {
			deadlines <- -1
			return nil
		}
		deadlines <- time.Until(deadline)
		return nil
	})
	schedule(t, q, message("deadline", time.Now()))
	poll.Until(t, 10*time.Second, "handler called", func() bool { return len(deadlines) > 0 })
	// The handler must learn when the broker will give its message to
	// someone else, so that it can give up first.
	if d := <-deadlines; d <= 0 || d > defaults.HandlerTimeout {
		t.Fatalf("handler deadline in %v, want within HandlerTimeout %v", d, defaults.HandlerTimeout)
	}
}

func testConsumerCrash(t *testing.T, s Server) {
	producer := open(t, s, defaults)
	first := open(t, s, defaults)
	held := make(chan struct{}, 100)
	// The first consumer takes messages and never finishes them.
	stopFirst := consume(t, first, func(ctx context.Context, e *envelope.Envelope) error {
		held <- struct{}{}
		<-ctx.Done()
		return ctx.Err()
	})
	for i := range 10 {
		schedule(t, producer, message(fmt.Sprintf("crash%d", i), time.Now()))
	}
	poll.Until(t, 10*time.Second, "first consumer holds messages", func() bool { return len(held) > 0 })
	stopFirst()
	_ = first.Close()

	second := open(t, s, defaults)
	r := newRecorder()
	consume(t, second, r.handle)
	poll.Until(t, 30*time.Second, "second consumer gets every message", func() bool { return r.distinct() == 10 })
}

func testServerRestart(t *testing.T, s Server) {
	q := open(t, s, defaults)
	r := newRecorder()
	consume(t, q, r.handle)
	now := time.Now()
	for i := range 10 {
		schedule(t, q, message(fmt.Sprintf("restart%d", i), now.Add(2*time.Second+time.Duration(i)*100*time.Millisecond)))
	}
	s.Restart(t)
	poll.Until(t, 30*time.Second, "every message delivered after a broker restart", func() bool { return r.distinct() == 10 })
	// Still accepting new work afterwards.
	poll.Until(t, 10*time.Second, "client reconnects", q.Connected)
	poll.Until(t, 10*time.Second, "schedule after restart", func() bool {
		// A try that timed out may have been stored.
		err := q.Schedule(context.Background(), message("after", time.Now()))
		return err == nil || errors.Is(err, queue.ErrRepeat)
	})
	poll.Until(t, 15*time.Second, "message scheduled after restart delivered", func() bool { return r.has("after") })
}

func testDeadLetter(t *testing.T, s Server) {
	q := open(t, s, defaults)
	e := message("dead", time.Now())
	e.Retries, e.Reason, e.DeadAt, e.LastStatus, e.LastError = 4, envelope.ReasonMaxRetries, time.Now().UTC(), 500, "boom"
	if err := q.DeadLetter(context.Background(), e); err != nil {
		t.Fatalf("DeadLetter: %v", err)
	}
	var got []*envelope.Envelope
	poll.Until(t, 10*time.Second, "dead letter stored", func() bool {
		got = s.DeadLetters(t)
		return len(got) == 1
	})
	d := got[0]
	if d.ID != "dead" || d.Reason != envelope.ReasonMaxRetries || d.LastStatus != 500 || d.LastError != "boom" ||
		string(d.Body) != "body of dead" || d.Retries != 4 {
		t.Fatalf("dead letter %+v", d)
	}
}

func deadLetter(t *testing.T, q queue.Queue, id string) *envelope.Envelope {
	t.Helper()
	e := message(id, time.Now())
	e.Retries, e.Reason, e.DeadAt, e.LastStatus = 3, envelope.ReasonMaxRetries, time.Now().UTC(), 500
	if err := q.DeadLetter(context.Background(), e); err != nil {
		t.Fatalf("DeadLetter(%s): %v", id, err)
	}
	return e
}

// follower records what FollowDeadLetters hands it.
type follower struct {
	mu   sync.Mutex
	recs []queue.Record
	done chan error // FollowDeadLetters's result
	stop context.CancelFunc
}

// follow runs FollowDeadLetters from after until the test ends or stop.
func follow(t *testing.T, q queue.Queue, after uint64) *follower {
	ctx, cancel := context.WithCancel(context.Background())
	f := &follower{done: make(chan error, 1), stop: cancel}
	go func() {
		f.done <- q.FollowDeadLetters(ctx, after, func(r queue.Record) {
			if r.Data == nil && r.Removal == nil {
				return // a marker: part of the log, but no dead letter
			}
			r.Data = bytes.Clone(r.Data)
			f.mu.Lock()
			f.recs = append(f.recs, r)
			f.mu.Unlock()
		})
	}()
	t.Cleanup(cancel)
	return f
}

func (f *follower) records() []queue.Record {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]queue.Record(nil), f.recs...)
}

// waitRecords polls until f has n records and returns them.
func (f *follower) waitRecords(t *testing.T, n int) []queue.Record {
	t.Helper()
	var recs []queue.Record
	poll.Until(t, 15*time.Second, fmt.Sprintf("%d records followed", n), func() bool {
		recs = f.records()
		return len(recs) >= n
	})
	return recs
}

// result waits for FollowDeadLetters to return.
func (f *follower) result(t *testing.T) error {
	t.Helper()
	select {
	case err := <-f.done:
		return err
	case <-time.After(15 * time.Second):
		t.Fatal("FollowDeadLetters did not return")
		return nil
	}
}

func lastSeq(t *testing.T, q queue.Queue) uint64 {
	t.Helper()
	seq, err := q.LastDeadLetterSeq(context.Background())
	if err != nil {
		t.Fatalf("LastDeadLetterSeq: %v", err)
	}
	return seq
}

func testDeadLetterLog(t *testing.T, s Server) {
	q := open(t, s, defaults)
	ctx := context.Background()
	start := time.Now()
	// An empty log has no last record, or a marker (a backend that
	// cannot tell an empty log from a slow server writes one), written
	// once: asking again finds the same.
	if empty := lastSeq(t, q); lastSeq(t, q) != empty {
		t.Fatalf("LastDeadLetterSeq of an empty log moved from %d on asking again", empty)
	}
	if _, err := q.ReadDeadLetter(ctx, 1); !errors.Is(err, queue.ErrNoDeadLetter) {
		t.Fatalf("ReadDeadLetter(1) of an empty log: %v, want ErrNoDeadLetter", err)
	}
	deadLetter(t, q, "dl1")
	deadLetter(t, q, "dl2")

	all := follow(t, q, 0)
	recs := all.waitRecords(t, 2)
	for i, id := range []string{"dl1", "dl2"} {
		r := recs[i]
		e, err := envelope.Decode(r.Data)
		if err != nil || e.ID != id || r.Removal != nil || r.Seq == 0 || (i > 0 && r.Seq <= recs[i-1].Seq) ||
			r.Time.Before(start.Add(-time.Minute)) || r.Time.After(time.Now().Add(time.Minute)) {
			t.Fatalf("record %d: %+v (%v), want dead letter %s after the one before", i, r, err, id)
		}
	}
	first, second := recs[0], recs[1]
	if seq := lastSeq(t, q); seq != second.Seq {
		t.Fatalf("LastDeadLetterSeq = %d, want %d", seq, second.Seq)
	}
	got, err := q.ReadDeadLetter(ctx, first.Seq)
	if err != nil {
		t.Fatalf("ReadDeadLetter(%d): %v", first.Seq, err)
	}
	if got.Seq != first.Seq || got.Removal != nil || !bytes.Equal(got.Data, first.Data) {
		t.Fatalf("ReadDeadLetter(%d) = %+v, want the followed record %+v", first.Seq, got, first)
	}
	if e, err := envelope.Decode(got.Data); err != nil || string(e.Body) != "body of dl1" || e.Reason != envelope.ReasonMaxRetries {
		t.Fatalf("ReadDeadLetter(%d): envelope %+v, %v", first.Seq, e, err)
	}

	removal := queue.Removal{Seq: first.Seq, Cause: queue.RemovedPurged, By: "suite"}
	if err := q.RemoveDeadLetter(ctx, removal); err != nil {
		t.Fatalf("RemoveDeadLetter: %v", err)
	}
	rm := all.waitRecords(t, 3)[2]
	if rm.Removal == nil || *rm.Removal != removal || rm.Data != nil || rm.Seq <= second.Seq {
		t.Fatalf("record after the removal: %+v, want removal %+v after seq %d", rm, removal, second.Seq)
	}
	if seq := lastSeq(t, q); seq != rm.Seq {
		t.Fatalf("LastDeadLetterSeq after a removal = %d, want %d", seq, rm.Seq)
	}
	for _, seq := range []uint64{rm.Seq, rm.Seq + 100} {
		if _, err := q.ReadDeadLetter(ctx, seq); !errors.Is(err, queue.ErrNoDeadLetter) {
			t.Fatalf("ReadDeadLetter(%d), a removal or past the log: %v, want ErrNoDeadLetter", seq, err)
		}
	}
	if s.DeletesDeadLetters() {
		if _, err := q.ReadDeadLetter(ctx, first.Seq); !errors.Is(err, queue.ErrNoDeadLetter) {
			t.Fatalf("ReadDeadLetter of a removed dead letter: %v, want ErrNoDeadLetter", err)
		}
	}
	if got, err := q.ReadDeadLetter(ctx, second.Seq); err != nil || !bytes.Equal(got.Data, second.Data) {
		t.Fatalf("ReadDeadLetter(%d), not removed: %+v, %v", second.Seq, got, err)
	}
	// Another process removing the same record.
	if err := q.RemoveDeadLetter(ctx, queue.Removal{Seq: first.Seq, Cause: queue.RemovedReplayed, By: "other"}); err != nil {
		t.Fatalf("RemoveDeadLetter again: %v", err)
	}

	// A follower resuming after seq starts there.
	later := follow(t, q, second.Seq)
	if r := later.waitRecords(t, 1)[0]; r.Seq != rm.Seq || r.Removal == nil {
		t.Fatalf("first record after %d: %+v, want the removal at %d", second.Seq, r, rm.Seq)
	}

	// Once stopped, a follower returns ctx's error and hears nothing more.
	all.stop()
	if err := all.result(t); !errors.Is(err, context.Canceled) {
		t.Fatalf("FollowDeadLetters after its ctx ended: %v, want context.Canceled", err)
	}
	stopped := len(all.records())
	deadLetter(t, q, "dl3")
	poll.Until(t, 15*time.Second, "a running follower sees the new dead letter", func() bool {
		recs := later.records()
		e, err := envelope.Decode(recs[len(recs)-1].Data)
		return err == nil && e.ID == "dl3"
	})
	if n := len(all.records()); n != stopped {
		t.Fatalf("stopped follower got %d more records", n-stopped)
	}
}

func testTooLarge(t *testing.T, s Server) {
	q := open(t, s, defaults)
	e := message("big", time.Now())
	e.Body = make([]byte, q.MaxPayload()+1)
	if err := q.Schedule(context.Background(), e); !errors.Is(err, queue.ErrTooLarge) {
		t.Fatalf("Schedule of %d bytes: %v, want ErrTooLarge", len(e.Body), err)
	}
	e.Body = make([]byte, q.MaxPayload()-1024)
	if err := q.Schedule(context.Background(), e); err != nil {
		t.Fatalf("Schedule just under the limit: %v", err)
	}
}

func testUnavailable(t *testing.T, s Server) {
	q := open(t, s, defaults)
	deadLetter(t, q, "before")
	f := follow(t, q, 0)
	f.waitRecords(t, 1)
	s.Stop()
	if err := f.result(t); !errors.Is(err, queue.ErrUnavailable) {
		t.Fatalf("FollowDeadLetters when the broker stops: %v, want ErrUnavailable", err)
	}
	poll.Until(t, 15*time.Second, "client notices the broker is gone", func() bool { return !q.Connected() })
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := q.FollowDeadLetters(ctx, 0, func(queue.Record) {}); !errors.Is(err, queue.ErrUnavailable) {
		t.Fatalf("FollowDeadLetters without a broker: %v, want ErrUnavailable", err)
	}
	if _, err := q.LastDeadLetterSeq(ctx); !errors.Is(err, queue.ErrUnavailable) {
		t.Fatalf("LastDeadLetterSeq without a broker: %v, want ErrUnavailable", err)
	}
	if _, err := q.ReadDeadLetter(ctx, 1); !errors.Is(err, queue.ErrUnavailable) {
		t.Fatalf("ReadDeadLetter without a broker: %v, want ErrUnavailable", err)
	}
	if err := q.RemoveDeadLetter(ctx, queue.Removal{Seq: 1, Cause: queue.RemovedPurged, By: "suite"}); !errors.Is(err, queue.ErrUnavailable) {
		t.Fatalf("RemoveDeadLetter without a broker: %v, want ErrUnavailable", err)
	}
	if err := q.Schedule(ctx, message("nowhere", time.Now())); !errors.Is(err, queue.ErrUnavailable) {
		t.Fatalf("Schedule without a broker: %v, want ErrUnavailable", err)
	}
	if _, err := q.Status(ctx, "nowhere"); !errors.Is(err, queue.ErrUnavailable) {
		t.Fatalf("Status without a broker: %v, want ErrUnavailable", err)
	}
	if _, err := q.Waiting(ctx); !errors.Is(err, queue.ErrUnavailable) {
		t.Fatalf("Waiting without a broker: %v, want ErrUnavailable", err)
	}
	if err := q.RecordStatus(ctx, step("nowhere", status.Waiting, time.Now(), 0)); !errors.Is(err, queue.ErrUnavailable) {
		t.Fatalf("RecordStatus without a broker: %v, want ErrUnavailable", err)
	}
}

func testBoundedBacklog(t *testing.T, s Server) {
	const backlog = 5000
	producer := open(t, s, defaults)
	due := time.Now().Add(time.Hour)
	for i := range backlog {
		schedule(t, producer, message(fmt.Sprintf("wait%05d", i), due))
	}
	o := Options{MaxInflight: 4, HandlerTimeout: time.Second, Window: 16}
	q := open(t, s, o)
	before := runtime.NumGoroutine()
	r := newRecorder()
	consume(t, q, r.handle)
	// The consumer holds at most a window per internal stream; give it
	// time to take everything it is going to take.
	var peak int
	for range 20 {
		peak = max(peak, runtime.NumGoroutine()-before)
		time.Sleep(50 * time.Millisecond)
	}
	if limit := 100 + 22*o.Window; peak > limit {
		t.Fatalf("%d goroutines for a backlog of %d, want at most %d", peak, backlog, limit)
	}
	if n := r.distinct(); n != 0 {
		t.Fatalf("%d messages delivered an hour early", n)
	}
}

func testDeduplicates(t *testing.T, s Server) {
	if !s.Deduplicates() {
		t.Skip("the backend does not de-duplicate")
	}
	q := open(t, s, defaults)
	var mu sync.Mutex
	calls := map[string]int{}
	consume(t, q, func(_ context.Context, e *envelope.Envelope) error {
		mu.Lock()
		defer mu.Unlock()
		calls[e.ID+"/"+fmt.Sprint(e.Retries)]++
		return nil
	})
	due := time.Now().Add(1500 * time.Millisecond)
	// A client repeating its requeue after a timeout: same id and retries.
	schedule(t, q, message("twice", due), message("now", time.Now()))
	scheduleAgain(t, q, message("twice", due), message("now", time.Now()))
	// The next attempt of the same message is a new message.
	retry := message("twice", due)
	retry.Retries = 1
	schedule(t, q, retry)
	// So is the message put back without an attempt (a hold), with the
	// same retries: stored once per hold.
	held := message("held", time.Now())
	schedule(t, q, held)
	held = message("held", time.Now().Add(300*time.Millisecond))
	held.Holds = 1
	schedule(t, q, held)
	scheduleAgain(t, q, held)
	poll.Until(t, 15*time.Second, "messages delivered", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return calls["twice/0"] > 0 && calls["twice/1"] > 0 && calls["now/0"] > 0 && calls["held/0"] > 1
	})
	// A duplicate would be due at the same moment; a second delivery of it
	// would have happened by the time the marker, due later, arrives.
	schedule(t, q, message("marker", time.Now().Add(500*time.Millisecond)))
	poll.Until(t, 10*time.Second, "marker delivered", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return calls["marker/0"] > 0
	})
	mu.Lock()
	defer mu.Unlock()
	if calls["twice/0"] != 1 || calls["now/0"] != 1 || calls["twice/1"] != 1 || calls["held/0"] != 2 {
		t.Fatalf("deliveries %v, want each message once, held once per hold", calls)
	}
}

// Two functions may use the same id: each message is stored, delivered
// and kept as a dead letter, whatever the other's.
func testIDsScopedToFunction(t *testing.T, s Server) {
	q := open(t, s, defaults)
	var mu sync.Mutex
	calls := map[string]int{}
	consume(t, q, func(_ context.Context, e *envelope.Envelope) error {
		mu.Lock()
		defer mu.Unlock()
		calls[e.Function+"/"+e.ID]++
		return nil
	})
	later := time.Now().Add(1500 * time.Millisecond)
	for _, fn := range []string{"fn", "other", "other.dev"} {
		soon, now := message("same", later), message("now", time.Now())
		soon.Function, now.Function = fn, fn
		schedule(t, q, soon, now)
	}
	poll.Until(t, 15*time.Second, "each function's message delivered", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(calls) == 6
	})
	for _, fn := range []string{"fn", "other"} {
		e := message("dead", time.Now())
		e.Function, e.Reason, e.DeadAt = fn, envelope.ReasonMaxRetries, time.Now().UTC()
		if err := q.DeadLetter(context.Background(), e); err != nil {
			t.Fatalf("DeadLetter(%s/dead): %v", fn, err)
		}
	}
	poll.Until(t, 10*time.Second, "each function's dead letter kept", func() bool {
		return len(s.DeadLetters(t)) == 2
	})
}

// A message scheduled again with the function, id and retries of one
// still waiting is never dropped while Schedule says it was stored, nor
// replaces the first: it is refused as a repeat (queue.ErrRepeat), or
// stored and delivered as well. Outside a de-duplication window too.
func testRepeat(t *testing.T, s Server, outsideWindow bool) {
	o := defaults
	o.DuplicateWindow = time.Minute
	if outsideWindow {
		o.DuplicateWindow = 100 * time.Millisecond // the least JetStream takes
	}
	q := open(t, s, o)
	later, other := message("again", time.Now().Add(2*time.Second)), message("now", time.Now())
	stored := time.Now()
	schedule(t, q, later, other)
	if outsideWindow {
		poll.Until(t, 5*time.Second, "ten windows passed", func() bool { return time.Since(stored) > 10*o.DuplicateWindow })
	}
	want := 2
	for _, e := range []*envelope.Envelope{later, other} {
		again := *e
		again.Body = []byte("a second body")
		err := q.Schedule(context.Background(), &again)
		switch {
		case s.Deduplicates() && !errors.Is(err, queue.ErrRepeat):
			t.Fatalf("Schedule(%s) again: %v, want ErrRepeat", e.ID, err)
		case !s.Deduplicates() && err != nil:
			t.Fatalf("Schedule(%s) again: %v, want it stored as well", e.ID, err)
		}
	}
	if s.Deduplicates() {
		want = 1
	}
	var mu sync.Mutex
	calls := map[string][]string{}
	consume(t, q, func(_ context.Context, e *envelope.Envelope) error {
		mu.Lock()
		defer mu.Unlock()
		calls[e.ID] = append(calls[e.ID], string(e.Body))
		return nil
	})
	poll.Until(t, 15*time.Second, "messages delivered", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(calls["again"]) >= want && len(calls["now"]) >= want
	})
	schedule(t, q, message("marker", time.Now().Add(500*time.Millisecond)))
	poll.Until(t, 10*time.Second, "marker delivered", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(calls["marker"]) > 0
	})
	mu.Lock()
	defer mu.Unlock()
	for _, id := range []string{"again", "now"} {
		if got := calls[id]; len(got) != want || !slices.Contains(got, "body of "+id) {
			t.Errorf("%s delivered with bodies %q, want %d deliveries, the first stored among them", id, got, want)
		}
	}
}

// checkQuota reserves e's place and gives it back: the check alone.
func checkQuota(q queue.Queue, e *envelope.Envelope) error {
	release, err := q.Reserve(context.Background(), queue.Claim(e, false, true))
	if err == nil {
		release()
	}
	return err
}

// waitQuota polls until checkQuota of e answers a *queue.QuotaError
// naming quota ("" for nil): the index counts what is recorded a moment
// later.
func waitQuota(t *testing.T, q queue.Queue, e *envelope.Envelope, quota string) {
	t.Helper()
	var err error
	poll.Until(t, 15*time.Second, fmt.Sprintf("the quota check of %s/%s names %q", e.Function, e.ID, quota), func() bool {
		err = checkQuota(q, e)
		qe, ok := errors.AsType[*queue.QuotaError](err)
		if quota == "" {
			return err == nil
		}
		return ok && qe.Quota == quota && errors.Is(err, queue.ErrQuota)
	})
}

// Quotas bound the messages waiting, overall in count and bytes and per
// function, as their statuses count them; only new messages are checked:
// what was accepted is always stored.
func testQuota(t *testing.T, s Server) {
	o := defaults
	o.Quota = queue.Quota{MaxWaiting: 3, MaxWaitingBytes: 1000, MaxWaitingPerFunction: 2}
	q := open(t, s, o)
	msg := func(fn, id string, size int) *envelope.Envelope {
		e := message(id, time.Now().Add(time.Hour))
		e.Function, e.Body = fn, make([]byte, size)
		return e
	}
	waiting := func(fn, id string, size int) status.Status {
		return status.Of(msg(fn, id, size), status.Waiting, time.Now())
	}
	waitQuota(t, q, msg("a", "n", 10), "")
	record(t, q, waiting("a", "a1", 100))
	// A requeue of a message still waiting (the same function, id and
	// retries) is a repeat, whether or not the backend would store it
	// again: it would count once.
	poll.Until(t, 15*time.Second, "a repeat of a1 refused as one", func() bool {
		return errors.Is(checkQuota(q, msg("a", "a1", 100)), queue.ErrRepeat)
	})
	next := msg("a", "a1", 100)
	next.Retries = 1
	if err := checkQuota(q, next); err != nil {
		t.Fatalf("the quota check of a1's next attempt: %v", err)
	}
	if err := checkQuota(q, msg("other", "a1", 100)); err != nil {
		t.Fatalf("the quota check of a1 for another function: %v", err)
	}
	record(t, q, waiting("a", "a2", 100))
	waitQuota(t, q, msg("a", "n", 10), queue.QuotaWaitingPerFunction)
	if qe, _ := errors.AsType[*queue.QuotaError](checkQuota(q, msg("a", "n", 10))); qe.Function != "a" || qe.Limit != 2 {
		t.Fatalf("per-function quota error %+v, want function a, limit 2", qe)
	}
	waitQuota(t, q, msg("b", "n", 10), "")
	record(t, q, waiting("b", "b1", 100))
	waitQuota(t, q, msg("c", "n", 10), queue.QuotaWaiting)
	// A delivery frees its place; bytes count the bodies waiting.
	b1 := waiting("b", "b1", 100)
	b1.State = status.Delivered
	record(t, q, b1)
	waitQuota(t, q, msg("c", "n", 800), "")
	waitQuota(t, q, msg("c", "n", 801), queue.QuotaWaitingBytes)

	// Past a quota, what was accepted is still stored: a retry, a routed
	// dead letter, a dead letter.
	record(t, q, waiting("c", "c1", 100))
	waitQuota(t, q, msg("d", "n", 10), queue.QuotaWaiting)
	retry := msg("a", "a1", 100)
	retry.Retries = 1
	route := msg("a", "a1-dl", 100)
	route.Kind = envelope.KindDeadLetter
	schedule(t, q, retry, route)
	dead := msg("a", "a2", 100)
	dead.Reason, dead.DeadAt = envelope.ReasonMaxRetries, time.Now().UTC()
	if err := q.DeadLetter(context.Background(), dead); err != nil {
		t.Fatalf("DeadLetter past a quota: %v", err)
	}
}

// Requests reserving at once cannot all pass a quota: the check and the
// reservation are one step, and a reservation counts until the index
// reads its message's status, then only the status counts. "fn" and
// "fn.openfaas-fn" are one function.
func testQuotaReservations(t *testing.T, s Server) {
	o := defaults
	o.Quota = queue.Quota{MaxWaiting: 100, MaxWaitingPerFunction: 5}
	q := open(t, s, o)
	msg := func(fn string, i int) *envelope.Envelope {
		e := message(fmt.Sprintf("m%d", i), time.Now().Add(time.Hour))
		e.Function, e.Body = fn, []byte("x")
		return e
	}
	var mu sync.Mutex
	var releases []func()
	refused := 0
	var wg sync.WaitGroup
	for i := range 100 {
		fn := []string{"busy", "busy.openfaas-fn"}[i%2]
		wg.Go(func() {
			release, err := q.Reserve(context.Background(), queue.Claim(msg(fn, i), false, true))
			mu.Lock()
			defer mu.Unlock()
			if qe, ok := errors.AsType[*queue.QuotaError](err); ok && qe.Quota == queue.QuotaWaitingPerFunction {
				refused++
			} else if err != nil {
				t.Errorf("Reserve: %v", err)
			} else {
				releases = append(releases, release)
			}
		})
	}
	wg.Wait()
	if len(releases) != 5 || refused != 95 {
		t.Fatalf("100 reservations at once with max_waiting_per_function 5: %d made, %d refused; want 5 and 95", len(releases), refused)
	}
	// Its status read, a reserved message counts once: the status stands
	// for the reservation.
	release, err := q.Reserve(context.Background(), queue.Claim(msg("busy", 1000), false, true))
	if err == nil {
		release()
		t.Fatal("a sixth reservation made")
	}
	releases[0]()
	releases[0]() // twice is once
	seen := msg("busy", 1001)
	release, err = q.Reserve(context.Background(), queue.Claim(seen, false, true))
	if err != nil {
		t.Fatalf("Reserve once one was released: %v", err)
	}
	defer release()
	record(t, q, status.Of(seen, status.Waiting, time.Now()))
	poll.Until(t, 15*time.Second, "the reserved message read as waiting", func() bool {
		return errors.Is(checkQuota(q, msg("busy.openfaas-fn", 1001)), queue.ErrRepeat)
	})
	releases[1]()
	waitQuota(t, q, msg("busy", 1002), "")
}

func testMalformed(t *testing.T, s Server) {
	reg := prometheus.NewRegistry()
	o := defaults
	o.Registerer = reg
	q := open(t, s, o)
	consume(t, q, func(context.Context, *envelope.Envelope) error { return nil })
	garbage := []byte("not an envelope")
	s.PublishRaw(t, garbage)
	var dead []*envelope.Envelope
	poll.Until(t, 15*time.Second, "malformed message kept as a dead letter", func() bool {
		dead = s.DeadLetters(t)
		return len(dead) == 1
	})
	if d := dead[0]; d.Reason != envelope.ReasonMalformed || !bytes.Equal(d.Body, garbage) || d.LastError == "" {
		t.Fatalf("dead letter %+v", d)
	}
	c, err := queue.DeadLetterCounter(reg)
	if err != nil {
		t.Fatal(err)
	}
	// Counted just after the dead letter is stored.
	poll.Until(t, 5*time.Second, "mailbox_dead_letters_total{reason=malformed} = 1", func() bool {
		return testutil.ToFloat64(c.WithLabelValues("", envelope.ReasonMalformed)) == 1
	})
}

// testMalformedRedelivered: the same bytes delivered twice, as after a
// lost acknowledgement, make dead letters with one id: one dead letter
// where the backend de-duplicates on it.
func testMalformedRedelivered(t *testing.T, s Server) {
	reg := prometheus.NewRegistry()
	o := defaults
	o.Registerer = reg
	q := open(t, s, o)
	consume(t, q, func(context.Context, *envelope.Envelope) error { return nil })
	c, err := queue.DeadLetterCounter(reg)
	if err != nil {
		t.Fatal(err)
	}
	garbage := []byte("not an envelope, twice")
	s.PublishRaw(t, garbage)
	s.PublishRaw(t, garbage)
	// Counted once each is stored (or found a duplicate).
	poll.Until(t, 15*time.Second, "both copies handled", func() bool {
		return testutil.ToFloat64(c.WithLabelValues("", envelope.ReasonMalformed)) == 2
	})
	dead := s.DeadLetters(t)
	want := 2
	if s.Deduplicates() {
		want = 1
	}
	if len(dead) != want {
		t.Fatalf("%d dead letters, want %d", len(dead), want)
	}
	for _, d := range dead {
		if d.ID != dead[0].ID || d.Reason != envelope.ReasonMalformed || !bytes.Equal(d.Body, garbage) {
			t.Fatalf("dead letters %+v, want the garbage with one id", dead)
		}
	}
}

// step is a status of message id, of the life accepted at accepted, after
// retries attempts.
func step(id, state string, accepted time.Time, retries int) status.Status {
	now := time.Now().UTC()
	s := status.Status{ID: id, Function: "fn", State: state, Retries: retries, AcceptedAt: accepted.UTC(), UpdatedAt: now}
	switch state {
	case status.Waiting:
		s.DueAt = now.Add(time.Minute)
	case status.Delivered:
		s.LastStatus = 200
	case status.DeadLettered:
		s.Reason, s.LastStatus, s.Route = envelope.ReasonMaxRetries, 500, id+"-dl"
	}
	return s
}

func record(t *testing.T, q queue.Queue, ss ...status.Status) {
	t.Helper()
	for _, s := range ss {
		if err := q.RecordStatus(context.Background(), s); err != nil {
			t.Fatalf("RecordStatus(%s %s): %v", s.ID, s.State, err)
		}
	}
}

// lookup returns the status of id, or the error of the lookup.
func lookup(q queue.Queue, id string) (status.Status, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	return q.Status(ctx, id)
}

// waitStatus polls until id's status is in state, and returns it: a
// backend may index what it stored a moment later.
func waitStatus(t *testing.T, q queue.Queue, id, state string) status.Status {
	t.Helper()
	var got status.Status
	var err error
	poll.Until(t, 15*time.Second, "status of "+id+" is "+state, func() bool {
		got, err = lookup(q, id)
		return err == nil && got.State == state
	})
	return got
}

func testStatusRecordAndRead(t *testing.T, s Server) {
	q := open(t, s, defaults)
	if _, err := lookup(q, "unknown"); !errors.Is(err, queue.ErrNoStatus) {
		t.Fatalf("Status of an unknown id: %v, want ErrNoStatus", err)
	}
	want := step("rec", status.DeadLettered, time.Now(), 3)
	record(t, q, want)
	got := waitStatus(t, q, "rec", status.DeadLettered)
	if got.Function != "fn" || got.Retries != 3 || got.Reason != envelope.ReasonMaxRetries || got.LastStatus != 500 ||
		got.Route != "rec-dl" || !got.AcceptedAt.Equal(want.AcceptedAt) || !got.UpdatedAt.Equal(want.UpdatedAt) ||
		got.ExpiresAt.Before(want.UpdatedAt.Add(23*time.Hour)) {
		t.Fatalf("status %+v, want %+v expiring after the default 24h", got, want)
	}
	waiting := step("wait", status.Waiting, time.Now(), 1)
	record(t, q, waiting)
	if got := waitStatus(t, q, "wait", status.Waiting); !got.DueAt.Equal(waiting.DueAt) || got.Retries != 1 {
		t.Fatalf("status %+v, want due at %v", got, waiting.DueAt)
	}
	if _, err := lookup(q, "unknown"); !errors.Is(err, queue.ErrNoStatus) {
		t.Fatalf("Status of an unknown id: %v, want ErrNoStatus", err)
	}
}

func testStatusLatestWins(t *testing.T, s Server) {
	q := open(t, s, defaults)
	life := time.Now().Add(-time.Minute)
	record(t, q, step("m", status.Waiting, life, 0), step("m", status.InFlight, life, 0),
		step("m", status.Waiting, life, 1), step("m", status.InFlight, life, 1), step("m", status.Delivered, life, 1))
	waitStatus(t, q, "m", status.Delivered)

	// Recorded in the background by several processes, steps can arrive
	// late: an older step of the same life never replaces a newer one.
	record(t, q, step("m", status.Waiting, life, 1), step("m", status.InFlight, life, 0))
	record(t, q, step("marker", status.Waiting, time.Now(), 0))
	waitStatus(t, q, "marker", status.Waiting)
	if got, err := lookup(q, "m"); err != nil || got.State != status.Delivered || got.Retries != 1 {
		t.Fatalf("after late steps: %+v, %v; want delivered after retries 1", got, err)
	}

	// The same id requeued again starts a new life, which wins.
	record(t, q, step("m", status.Waiting, time.Now(), 0))
	waitStatus(t, q, "m", status.Waiting)
}

func testStatusRetention(t *testing.T, s Server) {
	o := defaults
	o.StatusRetention = 2 * time.Second
	q := open(t, s, o)
	done := step("done", status.Delivered, time.Now(), 0)
	wait := step("long", status.Waiting, time.Now(), 0)
	wait.DueAt = time.Now().Add(4 * time.Second)
	record(t, q, done, wait)
	waitStatus(t, q, "done", status.Delivered)
	waitStatus(t, q, "long", status.Waiting)
	poll.Until(t, 15*time.Second, "final status forgotten after its retention", func() bool {
		_, err := lookup(q, "done")
		return errors.Is(err, queue.ErrNoStatus)
	})
	// A waiting message is known until its retention after it is due.
	poll.Until(t, 15*time.Second, "waiting status forgotten after its due time and retention", func() bool {
		_, err := lookup(q, "long")
		return errors.Is(err, queue.ErrNoStatus)
	})
	if gone := time.Now(); gone.Before(wait.DueAt.Add(o.StatusRetention)) {
		t.Fatalf("waiting status forgotten %v before its due time + retention", wait.DueAt.Add(o.StatusRetention).Sub(gone))
	}
}

func testStatusSurvivesRestart(t *testing.T, s Server) {
	q := open(t, s, defaults)
	record(t, q, step("kept", status.DeadLettered, time.Now(), 2))
	waitStatus(t, q, "kept", status.DeadLettered)
	s.Restart(t)
	poll.Until(t, 10*time.Second, "client reconnects", q.Connected)
	if got := waitStatus(t, q, "kept", status.DeadLettered); got.Retries != 2 {
		t.Fatalf("after restart %+v", got)
	}
	// A fresh client, as a new API process, knows it too.
	if got := waitStatus(t, open(t, s, defaults), "kept", status.DeadLettered); got.Reason != envelope.ReasonMaxRetries {
		t.Fatalf("new client after restart %+v", got)
	}
}

// of is step for function fn.
func of(fn, id, state string, accepted time.Time, retries int) status.Status {
	s := step(id, state, accepted, retries)
	s.Function = fn
	return s
}

// waitCounts polls until Waiting answers want, and fails with the last
// answer otherwise: a backend may index what it stored a moment later.
func waitCounts(t *testing.T, q queue.Queue, want map[string]int) {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		got, err := q.Waiting(ctx)
		cancel()
		if err == nil && maps.Equal(got, want) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("Waiting = %v, %v; want %v", got, err, want)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func testWaitingCounts(t *testing.T, s Server) {
	q := open(t, s, defaults)
	waitCounts(t, q, map[string]int{})
	life := time.Now().Add(-time.Minute)
	route := of("dlq", "a1-dl", status.Waiting, life, 0)
	route.Kind = envelope.KindDeadLetter // a call to dlq
	callback := of("a", "a1-cb", status.Waiting, life, 0)
	callback.Kind = envelope.KindCallback // a call to a URL, not to a
	record(t, q,
		of("a", "a1", status.Waiting, life, 0),
		of("a", "a2", status.Waiting, life, 0), of("a", "a2", status.InFlight, life, 0),
		of("a", "a3", status.Waiting, life, 2),
		of("b", "b1", status.InFlight, life, 1),
		of("c", "c1", status.Delivered, life, 0),
		route, callback)
	waitCounts(t, q, map[string]int{"a": 3, "b": 1, "dlq": 1})

	// Final steps remove messages from the counts.
	record(t, q, of("a", "a2", status.Delivered, life, 0), of("a", "a3", status.DeadLettered, life, 2),
		of("b", "b1", status.Delivered, life, 1))
	waitCounts(t, q, map[string]int{"a": 1, "dlq": 1})

	// A late step of the same life counts nothing again.
	record(t, q, of("a", "a2", status.InFlight, life, 0))
	record(t, q, of("marker", "m", status.Waiting, time.Now(), 0))
	waitCounts(t, q, map[string]int{"a": 1, "dlq": 1, "marker": 1})

	// The id requeued again starts a new life, which counts.
	record(t, q, of("a", "a2", status.Waiting, time.Now(), 0))
	waitCounts(t, q, map[string]int{"a": 2, "dlq": 1, "marker": 1})
}

func testWaitingForgetsExpired(t *testing.T, s Server) {
	o := defaults
	o.StatusRetention = 2 * time.Second
	q := open(t, s, o)
	inFlight := of("fn", "flying", status.InFlight, time.Now(), 0)
	wait := of("fn", "long", status.Waiting, time.Now(), 0)
	wait.DueAt = time.Now().Add(3 * time.Second)
	record(t, q, inFlight, wait)
	waitCounts(t, q, map[string]int{"fn": 2})
	// A waiting message counts until its retention after it is due.
	waitCounts(t, q, map[string]int{})
	if gone := time.Now(); gone.Before(wait.DueAt.Add(o.StatusRetention)) {
		t.Fatalf("waiting message uncounted %v before its due time + retention", wait.DueAt.Add(o.StatusRetention).Sub(gone))
	}
}

func testWaitingSurvivesRestart(t *testing.T, s Server) {
	q := open(t, s, defaults)
	record(t, q, of("fn", "before", status.Waiting, time.Now(), 0))
	waitCounts(t, q, map[string]int{"fn": 1})
	s.Restart(t)
	poll.Until(t, 10*time.Second, "client reconnects", q.Connected)
	// Statuses stored after the reconnect are followed too.
	record(t, q, of("fn", "after", status.Waiting, time.Now(), 0), of("other", "x", status.InFlight, time.Now(), 0))
	waitCounts(t, q, map[string]int{"fn": 2, "other": 1})
	// A fresh client, as a new API process, counts them too.
	waitCounts(t, open(t, s, defaults), map[string]int{"fn": 2, "other": 1})
}

// Two functions may use the same id: each message keeps its own status
// and counts for its own function, also as a new client reads them (a
// requeue of the id to another function took the first one's status,
// and its place in the quotas, away). Status answers the one recorded
// last.
func testStatusPerFunction(t *testing.T, s Server) {
	q := open(t, s, defaults)
	life := time.Now().Add(-time.Minute)
	a := of("a", "same", status.Waiting, life, 0)
	b := of("b", "same", status.Waiting, life.Add(time.Second), 0)
	b.Bytes = 7
	record(t, q, a)
	waitStatus(t, q, "same", status.Waiting)
	record(t, q, b)
	waitCounts(t, q, map[string]int{"a": 1, "b": 1})
	poll.Until(t, 15*time.Second, "status of same is b's, recorded last", func() bool {
		got, err := lookup(q, "same")
		return err == nil && got.Function == "b" && got.Bytes == 7
	})
	waitCounts(t, open(t, s, defaults), map[string]int{"a": 1, "b": 1})
	record(t, q, of("a", "same", status.Delivered, life, 0))
	waitCounts(t, q, map[string]int{"b": 1})
}
