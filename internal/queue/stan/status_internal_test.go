package stan

import (
	"fmt"
	"runtime"
	"testing"
	"time"

	"github.com/openfaas/mailbox/internal/status"
)

func TestStatusIndexLimitAndExpiry(t *testing.T) {
	now := time.Now()
	x := newStatusIndex(3)
	put := func(id string, expires time.Time) {
		x.put(status.Status{ID: id, State: status.Delivered, UpdatedAt: now, ExpiresAt: expires}, now)
	}
	later := now.Add(time.Hour)
	put("a", later)
	put("b", later)
	put("c", later)
	put("a", later) // an update: a is now the most recently updated
	put("d", later) // full: b, updated longest ago, goes
	for id, want := range map[string]bool{"a": true, "b": false, "c": true, "d": true} {
		if _, ok := x.get(id, now); ok != want {
			t.Errorf("%s known: %v, want %v", id, ok, want)
		}
	}
	put("old", now.Add(-time.Second)) // expired on arrival, as in a replay
	if _, ok := x.get("old", now); ok {
		t.Error("an expired status was kept")
	}
	if _, ok := x.get("c", later); ok {
		t.Error("a status was found past its expiry")
	}
	if n := x.len(); n != 2 {
		t.Errorf("%d statuses after one expired, want 2", n)
	}
}

// TestStatusIndexMemory measures the index at its default limit, with ids
// as the API makes them; the README quotes it.
func TestStatusIndexMemory(t *testing.T) {
	if testing.Short() {
		t.Skip("measures memory")
	}
	const limit = 50_000
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	x := newStatusIndex(limit)
	now := time.Now()
	for i := range limit {
		id := fmt.Sprintf("%032x", i)
		x.put(status.Status{ID: id, Function: "function-name.openfaas-fn", State: status.DeadLettered,
			Reason: "max-retries", Route: id + "-dl", Callback: id + "-cb", Retries: 10, LastStatus: 500,
			DueAt: now, AcceptedAt: now, UpdatedAt: now, ExpiresAt: now.Add(time.Hour)}, now)
	}
	runtime.GC()
	runtime.ReadMemStats(&after)
	mib := float64(after.HeapAlloc-before.HeapAlloc) / (1 << 20)
	t.Logf("%d statuses: %.1f MiB, %.0f bytes each", x.len(), mib, mib*(1<<20)/limit)
	if mib > 24 {
		t.Fatalf("index of %d statuses takes %.1f MiB, more than documented", limit, mib)
	}
}
