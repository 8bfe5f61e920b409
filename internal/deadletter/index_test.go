package deadletter

import (
	"fmt"
	"testing"
	"time"

	"github.com/openfaas/mailbox/internal/envelope"
	"github.com/openfaas/mailbox/internal/queue"
)

var t0 = time.Date(2026, 11, 23, 8, 0, 0, 0, time.UTC)

// record is the log record of a dead letter at seq.
func record(t *testing.T, seq uint64, id, function, reason string, dead time.Time) queue.Record {
	t.Helper()
	data, err := envelope.Encode(&envelope.Envelope{ID: id, Function: function, Reason: reason, DeadAt: dead, Body: []byte("body of " + id), LastError: "boom"})
	if err != nil {
		t.Fatal(err)
	}
	return queue.Record{Seq: seq, Time: dead, Data: data}
}

func removal(seq, of uint64, cause string) queue.Record {
	return queue.Record{Seq: seq, Removal: &queue.Removal{Seq: of, Cause: cause, By: "p1"}}
}

func ids(items []Entry) []string {
	var out []string
	for _, e := range items {
		out = append(out, e.ID)
	}
	return out
}

func TestIndexListsNewestFirstWithCursorAndCounts(t *testing.T) {
	x := newIndex(10)
	for i := 1; i <= 5; i++ {
		fn := "a"
		if i%2 == 0 {
			fn = "b"
		}
		x.apply(record(t, uint64(i), fmt.Sprintf("m%d", i), fn, envelope.ReasonMaxRetries, t0.Add(time.Duration(i)*time.Minute)))
	}
	x.apply(record(t, 6, "m6", "a", envelope.ReasonRejected, t0.Add(6*time.Minute)))

	items, next, total := x.page(Filter{}, 0, 4)
	if got := fmt.Sprint(ids(items)); got != "[m6 m5 m4 m3]" || next != 3 || total != 6 {
		t.Fatalf("first page %s, next %d, total %d", got, next, total)
	}
	items, next, _ = x.page(Filter{}, next, 4)
	if got := fmt.Sprint(ids(items)); got != "[m2 m1]" || next != 0 {
		t.Fatalf("second page %s, next %d", got, next)
	}
	items, _, total = x.page(Filter{Function: "a", Reason: envelope.ReasonMaxRetries}, 0, 10)
	if got := fmt.Sprint(ids(items)); got != "[m5 m3 m1]" || total != 3 {
		t.Fatalf("function a, max-retries: %s (total %d)", got, total)
	}
	items, _, _ = x.page(Filter{Since: t0.Add(2 * time.Minute), Until: t0.Add(4 * time.Minute)}, 0, 10)
	if got := fmt.Sprint(ids(items)); got != "[m3 m2]" {
		t.Fatalf("since 2m until 4m: %s", got)
	}
	items, _, _ = x.page(Filter{Query: "M4"}, 0, 10)
	if got := fmt.Sprint(ids(items)); got != "[m4]" {
		t.Fatalf("query M4: %s", got)
	}
	want := "[{a max-retries 3} {b max-retries 2} {a rejected 1}]"
	if got := fmt.Sprint(x.countList()); got != want {
		t.Fatalf("counts %s, want %s", got, want)
	}
}

func TestIndexRemovals(t *testing.T) {
	x := newIndex(10)
	x.apply(record(t, 1, "m1", "a", envelope.ReasonMaxRetries, t0))
	x.apply(record(t, 2, "m1", "a", envelope.ReasonExpired, t0.Add(time.Minute)))
	if e, _ := x.byIDOf("m1"); e.Seq != 2 {
		t.Fatalf("m1 found at %d, want the newest, 2", e.Seq)
	}
	if removed := x.apply(removal(3, 2, queue.RemovedReplayed)); removed == nil || removed.Seq != 2 {
		t.Fatalf("first removal of 2 returned %v", removed)
	}
	if removed := x.apply(removal(4, 2, queue.RemovedReplayed)); removed != nil {
		t.Fatalf("second removal of 2 returned %v, want nil: only the first counts", removed)
	}
	if e, ok := x.byIDOf("m1"); !ok || e.Seq != 1 {
		t.Fatalf("after removing 2, m1 found %v %v, want the older one, 1", e, ok)
	}
	if _, gone := x.gone["m1"]; gone {
		t.Fatal("m1 is remembered as gone while an older one is kept")
	}
	x.apply(removal(5, 1, queue.RemovedPurged))
	if _, ok := x.byIDOf("m1"); ok {
		t.Fatal("m1 still found after both were removed")
	}
	if g := x.gone["m1"]; g.Seq != 1 || g.Cause != queue.RemovedPurged {
		t.Fatalf("gone m1 = %+v", g)
	}
	if len(x.countList()) != 0 || x.applied != 5 {
		t.Fatalf("counts %v, applied %d", x.countList(), x.applied)
	}
	// Dead again under the same id: kept, no longer gone.
	x.apply(record(t, 6, "m1", "a", envelope.ReasonRejected, t0))
	if _, gone := x.gone["m1"]; gone {
		t.Fatal("m1 dead again but still remembered as gone")
	}
	// A record read twice (after a re-follow) is indexed once.
	x.apply(record(t, 6, "m1", "a", envelope.ReasonRejected, t0))
	if got := x.countList(); len(got) != 1 || got[0].Count != 1 {
		t.Fatalf("counts after reading 6 twice: %v", got)
	}
	// A removal of a seq never indexed removes nothing, but remembers
	// its id as gone (JetStream deleted the record before this index
	// read it) unless a dead letter with that id is kept.
	r := removal(7, 99, queue.RemovedPurged)
	r.Removal.ID = "m9"
	if x.apply(r) != nil {
		t.Fatal("removal of an unknown seq returned an entry")
	}
	if g, ok := x.gone["m9"]; !ok || g.Cause != queue.RemovedPurged {
		t.Fatalf("gone m9 = %+v, %v", g, ok)
	}
	r = removal(8, 98, queue.RemovedPurged)
	r.Removal.ID = "m1"
	x.apply(r)
	if _, gone := x.gone["m1"]; gone {
		t.Fatal("m1 is kept but remembered as gone after a removal of an unknown seq")
	}
	// A record the backend could not read moves the index on.
	x.apply(queue.Record{Seq: 12})
	if x.applied != 12 || len(x.entries) != 1 {
		t.Fatalf("after a bare record: applied %d, %d entries", x.applied, len(x.entries))
	}
}

func TestIndexRemembersABoundedNumberOfGoneIDs(t *testing.T) {
	x := newIndex(3)
	for i := 1; i <= 5; i++ {
		x.apply(record(t, uint64(2*i-1), fmt.Sprintf("m%d", i), "a", envelope.ReasonMaxRetries, t0))
		x.apply(removal(uint64(2*i), uint64(2*i-1), queue.RemovedPurged))
	}
	if len(x.gone) != 3 {
		t.Fatalf("%d gone ids remembered, want 3", len(x.gone))
	}
	if _, ok := x.gone["m1"]; ok {
		t.Fatal("the oldest gone id is still remembered")
	}
	if _, ok := x.gone["m5"]; !ok {
		t.Fatal("the newest gone id is forgotten")
	}

	// An id removed twice is remembered from its last removal: A, B, C
	// with A removed again last keeps all three.
	x = newIndex(3)
	seq := uint64(0)
	gone := func(id string) {
		seq++
		x.apply(record(t, seq, id, "a", envelope.ReasonMaxRetries, t0))
		seq++
		x.apply(removal(seq, seq-1, queue.RemovedPurged))
	}
	for _, id := range []string{"A", "B", "C", "A"} {
		gone(id)
	}
	for _, id := range []string{"A", "B", "C"} {
		if _, ok := x.gone[id]; !ok {
			t.Fatalf("%s forgotten: %v", id, x.gone)
		}
	}
	gone("D") // now B goes: A's memory is its second removal
	if _, ok := x.gone["B"]; ok {
		t.Fatal("B, the oldest, still remembered")
	}
	if _, ok := x.gone["A"]; !ok {
		t.Fatal("A forgotten by the slot of its first removal")
	}
}

func TestIndexMalformedRecord(t *testing.T) {
	x := newIndex(10)
	x.apply(queue.Record{Seq: 7, Time: t0, Data: []byte("not an envelope")})
	e, ok := x.byIDOf("seq-7")
	if !ok || e.Reason != envelope.ReasonMalformed || e.LastError == "" || e.BodyBytes != 15 {
		t.Fatalf("malformed record indexed as %+v (found %v)", e, ok)
	}
}

func TestIndexOverdue(t *testing.T) {
	x := newIndex(10)
	now := t0.Add(24 * time.Hour)
	// m2 died long ago but was stored after m1: retention looks at every
	// entry, not only the oldest.
	x.apply(record(t, 1, "m1", "a", envelope.ReasonMaxRetries, now.Add(-time.Hour)))
	x.apply(record(t, 2, "m2", "a", envelope.ReasonMaxRetries, now.Add(-48*time.Hour)))
	x.apply(record(t, 3, "m3", "a", envelope.ReasonMaxRetries, now.Add(-time.Minute)))
	x.apply(record(t, 4, "m4", "a", envelope.ReasonMaxRetries, now))

	expired, over := x.overdue(now, 24*time.Hour, 2)
	if len(expired) != 1 || expired[0].ID != "m2" || len(over) != 1 || over[0].ID != "m1" {
		t.Fatalf("retention 24h, limit 2: expired %v, over %v", expired, over)
	}
	expired, over = x.overdue(now, 0, 10)
	if len(expired) != 0 || len(over) != 0 {
		t.Fatalf("no retention, under the limit: expired %v, over %v", expired, over)
	}
}

func TestIndexCompacts(t *testing.T) {
	x := newIndex(10)
	for i := uint64(1); i <= 3000; i++ {
		x.apply(record(t, 2*i-1, fmt.Sprint(i), "a", envelope.ReasonMaxRetries, t0))
		x.apply(removal(2*i, 2*i-1, queue.RemovedPurged))
	}
	if len(x.seqs) > 1025 {
		t.Fatalf("%d seqs kept for %d entries", len(x.seqs), len(x.entries))
	}
}

// dead_letter_limit applies per function: junk dead letters of one
// function (X-Retries above X-Max-Retries, each an instant dead letter)
// push out that function's oldest only, never another's.
func TestIndexLimitPerFunction(t *testing.T) {
	x := newIndex(2)
	x.apply(record(t, 1, "real1", "billing", envelope.ReasonMaxRetries, t0))
	x.apply(record(t, 2, "real2", "billing", envelope.ReasonMaxRetries, t0.Add(time.Second)))
	for i := uint64(3); i <= 10; i++ {
		x.apply(record(t, i, fmt.Sprint("junk", i), "flood", envelope.ReasonMaxRetries, t0.Add(time.Duration(i)*time.Second)))
	}
	if !x.overLimit() {
		t.Fatalf("index of 8 flood dead letters with limit 2 is not over its limit")
	}
	_, over := x.overdue(t0.Add(time.Minute), 0, 2)
	if got := fmt.Sprint(entryIDs(over)); got != "[junk3 junk4 junk5 junk6 junk7 junk8]" {
		t.Fatalf("over the limit: %s, want flood's oldest six and none of billing's", got)
	}
	for i, e := range over {
		x.apply(removal(uint64(11+i), e.Seq, queue.RemovedLimit))
	}
	if x.overLimit() {
		t.Fatalf("still over the limit after the removals")
	}
}

func entryIDs(es []*Entry) []string {
	var out []string
	for _, e := range es {
		out = append(out, e.ID)
	}
	return out
}
