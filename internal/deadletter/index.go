// Package deadletter serves the dead letters a backend keeps: it follows
// the backend's dead-letter log (queue.DeadLetterLog) into an in-memory
// index of what each dead letter is (not its body), answers lists,
// counts and look-ups from it, replays and removes dead letters, and
// keeps the log within its retention and its limit.
package deadletter

import (
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/openfaas/mailbox/internal/envelope"
	"github.com/openfaas/mailbox/internal/queue"
)

// Entry is what the index keeps of one dead letter: enough to list,
// filter, count and find it. The body stays on the broker.
type Entry struct {
	Seq        uint64    `json:"seq"`
	ID         string    `json:"id"`
	Function   string    `json:"function"`
	Kind       string    `json:"kind,omitempty"`
	Reason     string    `json:"reason"`
	Retries    int       `json:"retries"`
	Replays    int       `json:"replays,omitempty"`
	LastStatus int       `json:"last_status,omitempty"`
	LastError  string    `json:"last_error,omitempty"`
	AcceptedAt time.Time `json:"accepted_at,omitzero"`
	DeadAt     time.Time `json:"dead_at"`
	BodyBytes  int       `json:"body_bytes"`
}

// maxIndexedError bounds the error text an entry keeps; the whole text
// is read with the body.
const maxIndexedError = 200

// entryOf indexes the dead letter stored in r. Bytes that are not an
// envelope are indexed too, as a malformed dead letter named after its
// seq, so that they are listed, counted and can be removed.
func entryOf(r queue.Record) *Entry {
	e, err := envelope.Decode(r.Data)
	if err != nil {
		return &Entry{
			Seq: r.Seq, ID: "seq-" + strconv.FormatUint(r.Seq, 10),
			Reason: envelope.ReasonMalformed, LastError: err.Error(),
			DeadAt: r.Time.UTC(), BodyBytes: len(r.Data),
		}
	}
	dead := e.DeadAt
	if dead.IsZero() {
		dead = r.Time
	}
	return &Entry{
		Seq: r.Seq, ID: e.ID, Function: e.Function, Kind: e.Kind,
		Reason: e.Reason, Retries: e.Retries, Replays: e.Replays,
		LastStatus: e.LastStatus, LastError: clip(e.LastError, maxIndexedError),
		AcceptedAt: e.AcceptedAt.UTC(), DeadAt: dead.UTC(), BodyBytes: len(e.Body),
	}
}

func clip(s string, n int) string {
	if len(s) <= n {
		return s
	}
	for n > 0 && !utf8.RuneStart(s[n]) {
		n--
	}
	return s[:n]
}

// Filter selects dead letters; a zero field selects all.
type Filter struct {
	Function string
	Reason   string
	// Since and Until bound DeadAt: Since <= DeadAt < Until.
	Since, Until time.Time
	// Query is a case-insensitive substring of the id, the function or
	// the last error.
	Query string
}

func (f Filter) match(e *Entry) bool {
	if f.Function != "" && e.Function != f.Function {
		return false
	}
	if f.Reason != "" && e.Reason != f.Reason {
		return false
	}
	if !f.Since.IsZero() && e.DeadAt.Before(f.Since) {
		return false
	}
	if !f.Until.IsZero() && !e.DeadAt.Before(f.Until) {
		return false
	}
	if f.Query != "" {
		q := strings.ToLower(f.Query)
		return strings.Contains(strings.ToLower(e.ID), q) ||
			strings.Contains(e.Function, q) ||
			strings.Contains(strings.ToLower(e.LastError), q)
	}
	return true
}

// Count is the number of dead letters of one function for one reason.
type Count struct {
	Function string `json:"function"`
	Reason   string `json:"reason"`
	Count    int    `json:"count"`
}

type countKey struct{ function, reason string }

// gone is how a dead letter that is no longer kept went.
type gone struct {
	Seq   uint64
	Cause string
	// n tells this removal from an earlier one of the id in goneOrder.
	n uint64
}

type goneRef struct {
	id string
	n  uint64
}

// index is the dead letters of the log as far as it has been read. It is
// not safe for concurrent use: Store guards it.
type index struct {
	// seqs are the seqs of entries in log order, removed ones included
	// until compact drops them.
	seqs    []uint64
	entries map[uint64]*Entry
	// byID is the newest kept dead letter of each id; dups counts the
	// older ones kept with the same id, only for ids that have some.
	byID   map[string]uint64
	dups   map[string]int
	counts map[countKey]int
	// perFunction counts the entries of each function; over is how many
	// functions have more than limit.
	perFunction map[string]int
	limit       int
	over        int
	// gone remembers, per id, the last removal of a dead letter that has
	// no newer one, so that repeating a replay or a delete after a
	// timeout is answered as done; goneOrder, oldest first, bounds it.
	gone      map[string]gone
	goneOrder []goneRef
	goneN     uint64
	goneLimit int
	// applied is the seq of the last record read.
	applied uint64
}

// newIndex returns an empty index keeping limit dead letters per
// function, and remembering the last limit removals.
func newIndex(limit int) *index {
	return &index{
		entries:     map[uint64]*Entry{},
		byID:        map[string]uint64{},
		dups:        map[string]int{},
		counts:      map[countKey]int{},
		perFunction: map[string]int{},
		limit:       limit,
		gone:        map[string]gone{},
		goneLimit:   limit,
	}
}

// overLimit reports whether a function has more than limit entries.
func (x *index) overLimit() bool { return x.over > 0 }

// apply reads r into the index. It returns the entry r removed, if r is
// the first removal of a kept entry, so that its author can count it.
func (x *index) apply(r queue.Record) (removed *Entry) {
	if r.Seq > x.applied {
		x.applied = r.Seq
	}
	switch {
	case r.Removal != nil:
		e, ok := x.entries[r.Removal.Seq]
		if !ok {
			// Removed before this index read it (JetStream deletes the
			// record): still remembered, so that a repeat is answered.
			if _, kept := x.byID[r.Removal.ID]; r.Removal.ID != "" && !kept {
				x.forget(r.Removal.ID, gone{Seq: r.Removal.Seq, Cause: r.Removal.Cause})
			}
			return nil
		}
		x.drop(e, r.Removal.Cause)
		return e
	case r.Data == nil:
		return nil // a record the backend could not read: only passed
	}
	if _, ok := x.entries[r.Seq]; ok {
		return nil // read again after a re-follow
	}
	e := entryOf(r)
	x.entries[e.Seq] = e
	x.seqs = append(x.seqs, e.Seq)
	if old, ok := x.byID[e.ID]; ok {
		x.dups[e.ID]++
		x.byID[e.ID] = max(old, e.Seq)
	} else {
		x.byID[e.ID] = e.Seq
	}
	delete(x.gone, e.ID)
	x.counts[countKey{e.Function, e.Reason}]++
	if x.perFunction[e.Function]++; x.perFunction[e.Function] == x.limit+1 {
		x.over++
	}
	return nil
}

// forget remembers that id's last dead letter went as g, forgetting the
// oldest such memory past goneLimit.
func (x *index) forget(id string, g gone) {
	x.goneN++
	g.n = x.goneN
	x.gone[id] = g
	x.goneOrder = append(x.goneOrder, goneRef{id, g.n})
	for len(x.goneOrder) > x.goneLimit {
		old := x.goneOrder[0]
		if x.gone[old.id].n == old.n {
			delete(x.gone, old.id)
		}
		x.goneOrder = x.goneOrder[1:]
	}
}

func (x *index) drop(e *Entry, cause string) {
	delete(x.entries, e.Seq)
	k := countKey{e.Function, e.Reason}
	if x.counts[k]--; x.counts[k] <= 0 {
		delete(x.counts, k)
	}
	if x.perFunction[e.Function] == x.limit+1 {
		x.over--
	}
	if x.perFunction[e.Function]--; x.perFunction[e.Function] <= 0 {
		delete(x.perFunction, e.Function)
	}
	switch {
	case x.dups[e.ID] == 0:
		delete(x.byID, e.ID)
		x.forget(e.ID, gone{Seq: e.Seq, Cause: cause})
	case x.byID[e.ID] == e.Seq:
		// The newest of several went: the next older one is found by id
		// now. Rare (an id dead, replayed and dead again, all kept), so
		// a scan is fine.
		for i := sort.Search(len(x.seqs), func(i int) bool { return x.seqs[i] >= e.Seq }) - 1; i >= 0; i-- {
			if o, ok := x.entries[x.seqs[i]]; ok && o.ID == e.ID {
				x.byID[e.ID] = o.Seq
				break
			}
		}
		fallthrough
	default:
		if x.dups[e.ID]--; x.dups[e.ID] == 0 {
			delete(x.dups, e.ID)
		}
	}
	if len(x.seqs) > 1024 && len(x.seqs) > 2*len(x.entries) {
		x.compact()
	}
}

// compact drops the seqs of removed entries.
func (x *index) compact() {
	x.seqs = slices.DeleteFunc(x.seqs, func(s uint64) bool { _, ok := x.entries[s]; return !ok })
	// goneOrder is a queue cut from the front: copy it to drop what was
	// cut.
	x.goneOrder = slices.Clone(x.goneOrder)
}

// byIDOf returns the newest kept dead letter with id.
func (x *index) byIDOf(id string) (*Entry, bool) {
	seq, ok := x.byID[id]
	if !ok {
		return nil, false
	}
	return x.entries[seq], true
}

// page returns up to limit entries matching f, newest first, older than
// seq before (0: from the newest), the seq to pass for the next page (0
// when there is none), and how many entries match f in all.
func (x *index) page(f Filter, before uint64, limit int) (items []Entry, next uint64, total int) {
	for i := len(x.seqs) - 1; i >= 0; i-- {
		e, ok := x.entries[x.seqs[i]]
		if !ok || !f.match(e) {
			continue
		}
		total++
		if before != 0 && e.Seq >= before {
			continue
		}
		if len(items) < limit {
			items = append(items, *e)
		} else if next == 0 {
			next = items[len(items)-1].Seq
		}
	}
	return items, next, total
}

// matching returns the seqs of every entry matching f, oldest first.
func (x *index) matching(f Filter) []uint64 {
	var out []uint64
	for _, s := range x.seqs {
		if e, ok := x.entries[s]; ok && f.match(e) {
			out = append(out, s)
		}
	}
	return out
}

// countList returns the counts by function and reason, largest first.
func (x *index) countList() []Count {
	out := make([]Count, 0, len(x.counts))
	for k, n := range x.counts {
		out = append(out, Count{Function: k.function, Reason: k.reason, Count: n})
	}
	slices.SortFunc(out, func(a, b Count) int {
		if a.Count != b.Count {
			return b.Count - a.Count
		}
		if c := strings.Compare(a.Function, b.Function); c != 0 {
			return c
		}
		return strings.Compare(a.Reason, b.Reason)
	})
	return out
}

// overdue returns the entries to remove to keep the index within
// retention (DeadAt before now - retention; none when retention is 0)
// and, of the others, each function's oldest past limit, so that one
// function's flood never pushes out another's dead letters; each in log
// order.
func (x *index) overdue(now time.Time, retention time.Duration, limit int) (expired, over []*Entry) {
	kept := map[string]int{}
	for _, s := range x.seqs {
		e, ok := x.entries[s]
		if ok && (retention <= 0 || !e.DeadAt.Before(now.Add(-retention))) {
			kept[e.Function]++
		}
	}
	excess := map[string]int{}
	for fn, n := range kept {
		if n > limit {
			excess[fn] = n - limit
		}
	}
	for _, s := range x.seqs {
		e, ok := x.entries[s]
		if !ok {
			continue
		}
		if retention > 0 && e.DeadAt.Before(now.Add(-retention)) {
			expired = append(expired, e)
			continue
		}
		if excess[e.Function] > 0 {
			excess[e.Function]--
			over = append(over, e)
		}
	}
	return expired, over
}
