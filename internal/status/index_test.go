package status

import (
	"context"
	"fmt"
	"maps"
	"math/rand/v2"
	"runtime"
	"testing"
	"time"

	"github.com/openfaas/mailbox/internal/envelope"
)

func TestIndexLimitAndExpiry(t *testing.T) {
	now := time.Now()
	x := NewIndex(3, false)
	put := func(id string, expires time.Time) {
		x.Put(Status{ID: id, State: Delivered, UpdatedAt: now, ExpiresAt: expires}, now)
	}
	later := now.Add(time.Hour)
	put("a", later)
	put("b", later)
	put("c", later)
	put("a", later) // an update: a is now the most recently updated
	put("d", later) // full: b, updated longest ago, goes
	for id, want := range map[string]bool{"a": true, "b": false, "c": true, "d": true} {
		if _, ok := x.Get(id, now); ok != want {
			t.Errorf("%s known: %v, want %v", id, ok, want)
		}
	}
	put("old", now.Add(-time.Second)) // expired on arrival, as in a replay
	if _, ok := x.Get("old", now); ok {
		t.Error("an expired status was kept")
	}
	if _, ok := x.Get("c", later); ok {
		t.Error("a status was found past its expiry")
	}
	if n := x.Len(); n != 0 {
		t.Errorf("%d statuses after all expired, want 0", n)
	}
}

// at is a status of id for fn in state, of the life accepted at t0 after
// retries attempts, expiring in an hour.
func at(id, fn, state string, retries int) Status {
	return Status{ID: id, Function: fn, State: state, Retries: retries, AcceptedAt: t0,
		UpdatedAt: t0, ExpiresAt: t0.Add(time.Hour)}
}

func wantCounts(t *testing.T, x *Index, now time.Time, want map[string]int) {
	t.Helper()
	if got := x.Waiting(now); !maps.Equal(got, want) {
		t.Fatalf("Waiting = %v, want %v", got, want)
	}
}

func TestIndexCountsWaitingAndInFlight(t *testing.T) {
	x := NewIndex(100, false)
	wantCounts(t, x, t0, map[string]int{})
	x.Put(at("a1", "a", Waiting, 0), t0)
	x.Put(at("a2", "a", InFlight, 0), t0)
	x.Put(at("b1", "b", Waiting, 0), t0)
	x.Put(at("c1", "c", Delivered, 0), t0)
	cb := at("a1-cb", "a", Waiting, 0)
	cb.Kind = envelope.KindCallback // POSTed to a URL: not a call to a
	x.Put(cb, t0)
	route := at("a1-dl", "dlq", Waiting, 0)
	route.Kind = envelope.KindDeadLetter // a call to dlq
	x.Put(route, t0)
	wantCounts(t, x, t0, map[string]int{"a": 2, "b": 1, "dlq": 1})

	x.Put(at("a1", "a", InFlight, 0), t0) // a step: still counted once
	x.Put(at("a2", "a", Delivered, 0), t0)
	x.Put(at("b1", "b", DeadLettered, 0), t0)
	wantCounts(t, x, t0, map[string]int{"a": 1, "dlq": 1})

	x.Put(at("a2", "a", InFlight, 0), t0) // late: delivered supersedes it
	wantCounts(t, x, t0, map[string]int{"a": 1, "dlq": 1})

	life := at("a2", "moved", Waiting, 0) // the id requeued again, elsewhere
	life.AcceptedAt = t0.Add(time.Second)
	x.Put(life, t0)
	wantCounts(t, x, t0, map[string]int{"a": 1, "moved": 1, "dlq": 1})
	if s, ok := x.Get("a2", t0); !ok || s.Function != "moved" || s.State != Waiting {
		t.Fatalf("Get(a2) = %+v, %v", s, ok)
	}
}

func TestIndexCountsForgetExpired(t *testing.T) {
	x := NewIndex(100, false)
	soon := at("soon", "f", Waiting, 0)
	soon.ExpiresAt = t0.Add(time.Second)
	x.Put(soon, t0)
	x.Put(at("late", "f", InFlight, 0), t0)
	wantCounts(t, x, t0, map[string]int{"f": 2})
	wantCounts(t, x, t0.Add(time.Second), map[string]int{"f": 1})
	wantCounts(t, x, t0.Add(time.Hour), map[string]int{})
	if n := x.Len(); n != 0 {
		t.Fatalf("%d ids held after all expired", n)
	}
	x.Put(soon, t0.Add(time.Hour)) // a replay of an expired status
	wantCounts(t, x, t0.Add(time.Hour), map[string]int{})
}

func TestIndexEvictsFinalBeforeOpen(t *testing.T) {
	x := NewIndex(3, false)
	x.Put(at("w1", "f", Waiting, 0), t0)
	x.Put(at("d1", "f", Delivered, 0), t0)
	x.Put(at("d2", "f", Delivered, 0), t0)
	x.Put(at("w2", "f", Waiting, 0), t0) // full: d1 goes, not w1
	x.Put(at("w3", "g", Waiting, 0), t0) // d2 goes
	wantCounts(t, x, t0, map[string]int{"f": 2, "g": 1})
	for _, id := range []string{"d1", "d2"} {
		if _, ok := x.Get(id, t0); ok {
			t.Errorf("%s kept over a waiting status", id)
		}
	}
	// No final status left: the waiting one updated longest ago goes.
	x.Put(at("w2", "f", InFlight, 0), t0) // w2 updated after w1
	x.Put(at("w4", "g", Waiting, 0), t0)  // w1 goes
	wantCounts(t, x, t0, map[string]int{"f": 1, "g": 2})
	if _, ok := x.Get("w1", t0); ok {
		t.Error("w1, updated longest ago, kept")
	}
}

func TestIndexCountsOnly(t *testing.T) {
	x := NewIndex(10, true)
	x.Put(at("a", "f", Waiting, 0), t0)
	x.Put(at("b", "f", Delivered, 0), t0) // never held
	if n := x.Len(); n != 1 {
		t.Fatalf("%d ids held, want 1: a final status is not kept", n)
	}
	got, ok := x.Get("a", t0)
	if !ok || got.State != Waiting || got.Function != "f" || !got.AcceptedAt.Equal(t0) {
		t.Fatalf("Get(a) = %+v, %v", got, ok)
	}
	x.Put(at("a", "f", DeadLettered, 1), t0) // removes a
	if n := x.Len(); n != 0 {
		t.Fatalf("%d ids held after a's final status", n)
	}
	wantCounts(t, x, t0, map[string]int{})
}

// TestIndexCountsMatchAScan puts random steps of random ids, with
// eviction and expiry, and checks after each that the counts kept step by
// step are those of a scan of what the index holds.
func TestIndexCountsMatchAScan(t *testing.T) {
	for _, countsOnly := range []bool{false, true} {
		r := rand.New(rand.NewPCG(1, 2))
		x := NewIndex(50, countsOnly)
		states := []string{Waiting, InFlight, Delivered, DeadLettered}
		kinds := []string{envelope.KindMessage, envelope.KindDeadLetter, envelope.KindCallback}
		now := t0
		for i := range 20_000 {
			now = now.Add(time.Duration(r.IntN(100)) * time.Millisecond)
			s := Status{
				ID:         fmt.Sprintf("m%d", r.IntN(120)),
				Function:   fmt.Sprintf("f%d", r.IntN(4)),
				Kind:       kinds[r.IntN(len(kinds))],
				State:      states[r.IntN(len(states))],
				AcceptedAt: t0.Add(time.Duration(r.IntN(3)) * time.Second),
				Retries:    r.IntN(3),
				UpdatedAt:  now,
				ExpiresAt:  now.Add(time.Duration(r.IntN(60)) * time.Second),
			}
			x.Put(s, now)
			if got, want := x.Waiting(now), x.scan(now); !maps.Equal(got, want) {
				t.Fatalf("countsOnly %v, step %d: Waiting = %v, a scan counts %v", countsOnly, i, got, want)
			}
			if x.Len() > 50 {
				t.Fatalf("%d ids held, limit 50", x.Len())
			}
		}
	}
}

// scan counts what x holds, one id at a time.
func (x *Index) scan(now time.Time) map[string]int {
	x.mu.Lock()
	defer x.mu.Unlock()
	out := map[string]int{}
	for _, head := range x.byID {
		for e := head; e != nil; e = e.sibling {
			// Counting only, the entry keeps no kind: its flag says.
			s, counted := e.status(), e.counted
			if e.full != nil {
				s, counted = *e.full, Counted(*e.full)
			}
			if !s.Expired(now) && counted {
				out[s.Function]++
			}
		}
	}
	return out
}

func TestIndexWaitSynced(t *testing.T) {
	x := NewIndex(1, false)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Millisecond)
	defer cancel()
	if err := x.WaitSynced(ctx); err == nil {
		t.Fatal("WaitSynced returned before the index was synced")
	}
	go x.SetSynced(true)
	if err := x.WaitSynced(context.Background()); err != nil || !x.Synced() {
		t.Fatalf("WaitSynced: %v", err)
	}
}

// TestIndexMemory measures an index of 50,000 ids, with ids as the API
// makes them: final statuses with every field set, as NATS Streaming's
// index keeps them, and waiting ones counted only, as JetStream's does.
// The README and docs/architecture.md quote it.
func TestIndexMemory(t *testing.T) {
	if testing.Short() {
		t.Skip("measures memory")
	}
	const n = 50_000
	for _, tc := range []struct {
		countsOnly bool
		state      string
		maxBytes   float64 // per id
	}{
		{false, DeadLettered, 600},
		{true, Waiting, 260},
	} {
		var before, after runtime.MemStats
		runtime.GC()
		runtime.ReadMemStats(&before)
		x := NewIndex(n, tc.countsOnly)
		now := time.Now()
		for i := range n {
			id := fmt.Sprintf("%032x", i)
			s := Status{ID: id, Function: fmt.Sprintf("function-%d.openfaas-fn", i%10), State: tc.state,
				Retries: 10, LastStatus: 500, DueAt: now, AcceptedAt: now, UpdatedAt: now, ExpiresAt: now.Add(time.Hour)}
			if tc.state == DeadLettered {
				s.Reason, s.Route, s.Callback = "max-retries", id+"-dl", id+"-cb"
			}
			x.Put(s, now)
		}
		runtime.GC()
		runtime.ReadMemStats(&after)
		each := float64(after.HeapAlloc-before.HeapAlloc) / n
		t.Logf("countsOnly %v: %d ids, %.0f bytes each, %.1f MiB", tc.countsOnly, x.Len(), each, each*n/(1<<20))
		if each > tc.maxBytes {
			t.Errorf("countsOnly %v: %.0f bytes an id, more than the %.0f documented", tc.countsOnly, each, tc.maxBytes)
		}
		runtime.KeepAlive(x)
	}
}

// Reset forgets every status and count, and the index works as new after
// it: a backend whose store was reset reads it again from the start.
func TestIndexReset(t *testing.T) {
	x := NewIndex(2, false)
	x.Put(at("a", "fn", Waiting, 0), t0)
	x.Put(at("b", "fn", Delivered, 0), t0)
	x.Reset()
	if n := x.Len(); n != 0 {
		t.Fatalf("%d statuses after Reset, want 0", n)
	}
	if _, ok := x.Get("a", t0); ok {
		t.Fatal("a status found after Reset")
	}
	wantCounts(t, x, t0, map[string]int{})
	// Full again at its limit, forgetting the final status first.
	x.Put(at("c", "fn", Waiting, 0), t0)
	x.Put(at("d", "other", Delivered, 0), t0)
	x.Put(at("e", "fn", InFlight, 0), t0)
	wantCounts(t, x, t0, map[string]int{"fn": 2})
	if _, ok := x.Get("d", t0); ok || x.Len() != 2 {
		t.Fatalf("after Reset the limit of 2 kept d (%v) or %d statuses", ok, x.Len())
	}
}
