package status

import (
	"errors"
	"sync"
	"testing"
	"time"
)

// atMost is a check refusing a claim once its function counts limit.
func atMost(limit int) func(Claim, Usage, bool) error {
	return func(_ Claim, u Usage, _ bool) error {
		if u.Function >= limit {
			return errFull
		}
		return nil
	}
}

var errFull = errors.New("full")

// Reservations count with the index until the index reads their
// message's status (then the status counts), until released (a failed
// store) or until they lapse (a status never read); a held one (an
// instant dead letter) until it lapses. "fn" and "fn.openfaas-fn" are
// one function.
func TestIndexReserve(t *testing.T) {
	for _, countsOnly := range []bool{false, true} {
		now := time.Now()
		x := NewIndex(100, countsOnly)
		reserve := func(c Claim, at time.Time) (func(), error) {
			return x.Reserve([]Claim{c}, at, time.Minute, atMost(3))
		}
		if _, err := reserve(Claim{ID: "a", Function: "fn", Bytes: 10}, now); err != nil {
			t.Fatal(err)
		}
		releaseB, err := reserve(Claim{ID: "b", Function: "fn.openfaas-fn", Bytes: 20}, now)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := reserve(Claim{ID: "c", Function: "fn", Bytes: 30, Hold: true}, now); err != nil {
			t.Fatal(err)
		}
		if got, want := x.Usage(now, "fn.openfaas-fn"), (Usage{Count: 3, Bytes: 60, Function: 3}); got != want {
			t.Fatalf("countsOnly %v: usage %+v with three reserved, want %+v", countsOnly, got, want)
		}
		if _, err := reserve(Claim{ID: "d", Function: "fn"}, now); !errors.Is(err, errFull) {
			t.Fatalf("countsOnly %v: a fourth reservation: %v, want refused", countsOnly, err)
		}
		// A status of an earlier attempt is not the reserved message's.
		x.Put(Status{ID: "a", Function: "fn", State: Waiting, Retries: 0, Bytes: 10, AcceptedAt: now, UpdatedAt: now}, now)
		if got := x.Usage(now, "fn"); got.Function != 3 || got.Bytes != 60 {
			t.Fatalf("countsOnly %v: usage %+v once a's status is read, want it counted once", countsOnly, got)
		}
		if !x.Waits("a", "fn.openfaas-fn", 0, now) {
			t.Fatalf("countsOnly %v: a not waiting under the qualified name", countsOnly)
		}
		releaseB()
		releaseB()
		if got := x.Usage(now, "fn"); got.Function != 2 || got.Bytes != 40 {
			t.Fatalf("countsOnly %v: usage %+v once b is released, want 2 and 40 bytes", countsOnly, got)
		}
		// The held one stays after its final status, until it lapses.
		x.Put(Status{ID: "c", Function: "fn", State: DeadLettered, AcceptedAt: now, UpdatedAt: now}, now)
		if got := x.Usage(now, "fn"); got.Function != 2 {
			t.Fatalf("countsOnly %v: usage %+v once c's dead letter status is read, want it held", countsOnly, got)
		}
		// A status never read lapses.
		soon := now.Add(30 * time.Second)
		if _, err := reserve(Claim{ID: "e", Function: "fn", Retries: 2}, soon); err != nil {
			t.Fatal(err)
		}
		x.Put(Status{ID: "e", Function: "fn", State: Waiting, Retries: 1, AcceptedAt: now, UpdatedAt: now}, soon)
		later := now.Add(time.Minute)
		if got := x.Usage(later, "fn"); got.Function != 3 || got.Count != 3 {
			t.Fatalf("countsOnly %v: usage %+v a minute on, want a's and e's status and e's reservation", countsOnly, got)
		}
		if got := x.Usage(soon.Add(time.Minute), "fn"); got.Function != 2 || got.Bytes != 10 {
			t.Fatalf("countsOnly %v: usage %+v once every reservation lapsed, want a's and e's statuses", countsOnly, got)
		}
		if n := len(x.ledger.fifo) + len(x.ledger.pending) + len(x.ledger.perFunction); n != 0 {
			t.Fatalf("countsOnly %v: %d left in the ledger once every reservation lapsed", countsOnly, n)
		}
	}
}

// A batch is reserved whole or not at all; requests reserving at once
// cannot all pass.
func TestIndexReserveAtomic(t *testing.T) {
	now := time.Now()
	x := NewIndex(100, true)
	if _, err := x.Reserve([]Claim{{ID: "a", Function: "fn"}, {ID: "a", Function: "dlq"}, {ID: "b", Function: "dlq"}}, now, time.Minute, atMost(1)); !errors.Is(err, errFull) {
		t.Fatalf("a batch past the bound: %v, want refused", err)
	}
	if u := x.Usage(now, "fn"); u.Count != 0 {
		t.Fatalf("a refused batch left %+v reserved", u)
	}
	var wg sync.WaitGroup
	var mu sync.Mutex
	made := 0
	for range 100 {
		wg.Go(func() {
			if _, err := x.Reserve([]Claim{{ID: "x", Function: "fn"}}, now, time.Minute, atMost(5)); err == nil {
				mu.Lock()
				made++
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	if made != 5 {
		t.Fatalf("100 reservations at once under a bound of 5: %d made", made)
	}
}
