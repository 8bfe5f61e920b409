package status

import (
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
