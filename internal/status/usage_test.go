package status

import (
	"fmt"
	"maps"
	"testing"
	"time"

	"github.com/openfaas/mailbox/internal/envelope"
)

// Usage counts what the waiting quotas bound: the counted messages in
// all, their body bytes, and one function's, following every change.
func TestIndexUsage(t *testing.T) {
	for _, countsOnly := range []bool{false, true} {
		now := time.Now()
		x := NewIndex(10, countsOnly)
		later := now.Add(time.Hour)
		put := func(id, fn, state, kind string, retries int, bytes int64) {
			x.Put(Status{ID: id, Function: fn, Kind: kind, State: state, Retries: retries, Bytes: bytes, AcceptedAt: now, UpdatedAt: now, ExpiresAt: later}, now)
		}
		put("a1", "a", Waiting, "", 0, 100)
		put("a2", "a", Waiting, "", 0, 50)
		put("b1", "b", InFlight, "", 0, 10)
		put("cb", "a", Waiting, envelope.KindCallback, 0, 1000) // a URL, not a
		if got, want := x.Usage(now, "a"), (Usage{Count: 3, Bytes: 160, Function: 2}); got != want {
			t.Fatalf("countsOnly %v: usage %+v, want %+v", countsOnly, got, want)
		}
		put("a1", "a", Waiting, "", 1, 100) // a retry: still one message
		put("a2", "a", Delivered, "", 0, 50)
		if got, want := x.Usage(now, "a"), (Usage{Count: 2, Bytes: 110, Function: 1}); got != want {
			t.Fatalf("countsOnly %v: after a retry and a delivery, usage %+v, want %+v", countsOnly, got, want)
		}
		if got, want := x.Usage(later, "a"), (Usage{}); got != want {
			t.Fatalf("countsOnly %v: after expiry, usage %+v, want none", countsOnly, got)
		}
	}
}

// Two functions may use the same id: each keeps its own status and
// counts for its own function (a requeue of the id to another function
// took the first function's status, and its count, away), and Get
// answers the status set last.
func TestIndexIDsScopedToFunction(t *testing.T) {
	for _, countsOnly := range []bool{false, true} {
		now := time.Now()
		x := NewIndex(10, countsOnly)
		later := now.Add(time.Hour)
		put := func(fn, state string, accepted time.Time) {
			x.Put(Status{ID: "same", Function: fn, State: state, AcceptedAt: accepted, UpdatedAt: accepted, ExpiresAt: later, Bytes: 10}, now)
		}
		put("a", Waiting, now)
		put("b", Waiting, now.Add(time.Second))
		put("c", Waiting, now.Add(-time.Second)) // an older life elsewhere still counts
		if got, want := x.Waiting(now), map[string]int{"a": 1, "b": 1, "c": 1}; !maps.Equal(got, want) {
			t.Fatalf("countsOnly %v: Waiting = %v, want %v", countsOnly, got, want)
		}
		if u := x.Usage(now, "a"); u.Count != 3 || u.Bytes != 30 || u.Function != 1 {
			t.Fatalf("countsOnly %v: usage %+v, want 3 messages of 30 bytes, 1 of a", countsOnly, u)
		}
		if s, ok := x.Get("same", now); !ok || s.Function != "c" {
			t.Fatalf("countsOnly %v: Get = %+v, %v; want c's, set last", countsOnly, s, ok)
		}
		put("b", Delivered, now.Add(time.Second))
		put("a", InFlight, now)
		if got, want := x.Waiting(now), map[string]int{"a": 1, "c": 1}; !maps.Equal(got, want) {
			t.Fatalf("countsOnly %v: after b's delivery, Waiting = %v, want %v", countsOnly, got, want)
		}
		if s, ok := x.Get("same", now); !ok || s.Function != "a" || s.State != InFlight {
			t.Fatalf("countsOnly %v: Get = %+v, %v; want a's, in flight", countsOnly, s, ok)
		}
		if n := x.Len(); (countsOnly && n != 2) || (!countsOnly && n != 3) {
			t.Fatalf("countsOnly %v: %d held", countsOnly, n)
		}
	}
}

// A flood of one function's statuses (requeues delivered at once, junk
// instant dead letters) pushed out the oldest statuses of every
// function: a full index now forgets the oldest final status of the
// function holding the most.
func TestIndexFloodPushesOutItsOwn(t *testing.T) {
	now := time.Now()
	x := NewIndex(10, false)
	later := now.Add(time.Hour)
	put := func(fn, id, state string, at time.Time) {
		x.Put(Status{ID: id, Function: fn, State: state, AcceptedAt: at, UpdatedAt: at, ExpiresAt: later}, now)
	}
	for i := range 3 {
		put("billing", fmt.Sprint("real", i), Delivered, now.Add(-time.Hour))
	}
	put("billing", "waiting", Waiting, now.Add(-time.Hour))
	for i := range 50 {
		put("junk", fmt.Sprint("junk", i), DeadLettered, now.Add(time.Duration(i)*time.Millisecond))
	}
	for _, id := range []string{"real0", "real1", "real2", "waiting"} {
		if _, ok := x.Get(id, now); !ok {
			t.Errorf("billing's %s pushed out by junk's flood", id)
		}
	}
	if _, ok := x.Get("junk49", now); !ok || x.Len() != 10 {
		t.Errorf("junk49 kept %v, %d held; want the newest kept and 10 held", ok, x.Len())
	}
}
