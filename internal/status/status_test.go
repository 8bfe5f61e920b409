package status

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

var t0 = time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)

func TestSupersedes(t *testing.T) {
	at := func(state string, accepted time.Time, retries, holds int) Status {
		return Status{ID: "m", State: state, AcceptedAt: accepted, Retries: retries, Holds: holds}
	}
	later := t0.Add(time.Second)
	tests := []struct {
		name     string
		s, old   Status
		replaces bool
	}{
		{"in flight after waiting", at(InFlight, t0, 0, 0), at(Waiting, t0, 0, 0), true},
		{"delivered after in flight", at(Delivered, t0, 0, 0), at(InFlight, t0, 0, 0), true},
		{"retry after in flight", at(Waiting, t0, 1, 0), at(InFlight, t0, 0, 0), true},
		{"deferral after in flight", at(Waiting, t0, 0, 1), at(InFlight, t0, 0, 0), true},
		{"dead letter after in flight", at(DeadLettered, t0, 2, 0), at(InFlight, t0, 2, 0), true},
		{"in flight again", at(InFlight, t0, 0, 0), at(InFlight, t0, 0, 0), true},
		{"late waiting after in flight", at(Waiting, t0, 0, 0), at(InFlight, t0, 0, 0), false},
		{"late in flight after delivered", at(InFlight, t0, 1, 0), at(Delivered, t0, 1, 0), false},
		{"earlier attempt after retry", at(InFlight, t0, 0, 0), at(Waiting, t0, 1, 0), false},
		{"new life after delivered", at(Waiting, later, 0, 0), at(Delivered, t0, 5, 0), true},
		{"old life after new", at(Delivered, t0, 5, 0), at(Waiting, later, 0, 0), false},
	}
	for _, tc := range tests {
		if got := tc.s.Supersedes(tc.old, t0); got != tc.replaces {
			t.Errorf("%s: Supersedes = %v, want %v", tc.name, got, tc.replaces)
		}
	}
	expired := at(Delivered, later, 9, 0)
	expired.ExpiresAt = t0
	if !at(Waiting, t0, 0, 0).Supersedes(expired, t0) {
		t.Error("an expired status blocks a new one")
	}
}

func TestExpiry(t *testing.T) {
	done := Status{State: Delivered, UpdatedAt: t0}
	if got := done.Expiry(time.Hour); !got.Equal(t0.Add(time.Hour)) {
		t.Errorf("final expiry %v", got)
	}
	waiting := Status{State: Waiting, UpdatedAt: t0, DueAt: t0.Add(100 * time.Hour)}
	if got := waiting.Expiry(time.Hour); !got.Equal(t0.Add(101 * time.Hour)) {
		t.Errorf("waiting expiry %v, want an hour after it is due", got)
	}
	overdue := Status{State: Waiting, UpdatedAt: t0, DueAt: t0.Add(-time.Hour)}
	if got := overdue.Expiry(time.Hour); !got.Equal(t0.Add(time.Hour)) {
		t.Errorf("overdue expiry %v", got)
	}
}

func TestEncodeDecode(t *testing.T) {
	s := Status{ID: "m", Function: "fn", State: DeadLettered, Retries: 3, Reason: "max-retries", LastStatus: 500,
		Route: "m-dl", AcceptedAt: t0, UpdatedAt: t0.Add(time.Second), ExpiresAt: t0.Add(time.Hour)}
	data, err := Encode(s)
	if err != nil {
		t.Fatal(err)
	}
	got, err := Decode(data)
	if err != nil || got != s {
		t.Fatalf("Decode = %+v, %v; want %+v", got, err, s)
	}
	for _, bad := range []string{"", "sync:x", `{"id":"m"}`, `{"status":"waiting"}`} {
		if _, err := Decode([]byte(bad)); !errors.Is(err, ErrFormat) {
			t.Errorf("Decode(%q): %v, want ErrFormat", bad, err)
		}
	}
}

// blockingStore stores nothing until released, and fails ids named fail.
type blockingStore struct {
	release chan struct{}
	mu      sync.Mutex
	got     []Status
}

func (b *blockingStore) RecordStatus(ctx context.Context, s Status) error {
	<-b.release
	if s.ID == "fail" {
		return errors.New("no")
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	b.got = append(b.got, s)
	return nil
}

func TestRecorderNeverBlocksAndCountsDrops(t *testing.T) {
	store := &blockingStore{release: make(chan struct{})}
	reg := prometheus.NewRegistry()
	r, err := NewRecorder(store, reg, nil)
	if err != nil {
		t.Fatal(err)
	}
	// One id: one shard, kept in order. The shard's goroutine holds one
	// while blocked, its buffer the next Buffer/Shards, the rest drop.
	const n = 3 * Buffer / Shards
	start := time.Now()
	for i := range n {
		r.Record(Status{ID: "same", State: Waiting, Retries: i})
	}
	if took := time.Since(start); took > time.Second {
		t.Fatalf("Record blocked for %v", took)
	}
	dropped, err := DroppedCounter(reg)
	if err != nil {
		t.Fatal(err)
	}
	if d := testutil.ToFloat64(dropped); d < n-Buffer/Shards-1 || d > n-Buffer/Shards {
		t.Fatalf("dropped %v of %d with a buffer of %d a shard", d, n, Buffer/Shards)
	}
	r.Record(Status{ID: "fail", State: Waiting})
	close(store.release)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	r.Wait(ctx)
	store.mu.Lock()
	defer store.mu.Unlock()
	// Which ones dropped depends on when the shard's goroutine took the
	// first; those stored keep the order recorded.
	last := -1
	for _, s := range store.got {
		if s.ID == "same" {
			if s.Retries <= last {
				t.Fatalf("stored %d after %d: out of order", s.Retries, last)
			}
			last = s.Retries
		}
	}
	if got := len(store.got) + int(testutil.ToFloat64(dropped)); got != n+1 {
		t.Fatalf("%d stored or dropped, want %d", got, n+1)
	}
	// A second recorder on the registry shares the counter.
	if _, err := NewRecorder(store, reg, nil); err != nil {
		t.Fatal(err)
	}
}

// offStore keeps no statuses; it counts the writes it is asked for.
type offStore struct{ calls int }

func (o *offStore) RecordStatus(context.Context, Status) error { o.calls++; return nil }
func (o *offStore) KeepsStatuses() bool                        { return false }

// TestRecorderOnStoreWithoutStatusesDoesNothing: with statuses off
// nothing is queued, written or counted as dropped, and no shard's
// goroutine starts (Wait returns at once).
func TestRecorderOnStoreWithoutStatusesDoesNothing(t *testing.T) {
	store := &offStore{}
	reg := prometheus.NewRegistry()
	r, err := NewRecorder(store, reg, nil)
	if err != nil {
		t.Fatal(err)
	}
	for i := range 2 * Buffer {
		r.Record(Status{ID: "m", State: Waiting, Retries: i})
	}
	if !r.idle() {
		t.Fatal("a shard is running with statuses off")
	}
	r.Wait(context.Background())
	dropped, err := DroppedCounter(reg)
	if err != nil {
		t.Fatal(err)
	}
	if store.calls != 0 || testutil.ToFloat64(dropped) != 0 {
		t.Fatalf("%d writes, %v dropped; want none", store.calls, testutil.ToFloat64(dropped))
	}
}
