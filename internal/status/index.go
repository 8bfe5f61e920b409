package status

import (
	"container/heap"
	"context"
	"math"
	"sync"
	"time"

	"github.com/openfaas/mailbox/internal/envelope"
)

// Index is the latest status of each message, built by a backend from
// the statuses it stores, read in any order: a status replaces the one
// held for its message only if it supersedes it (Supersedes). A message
// is an id of a function: two functions may use the same id, and each
// keeps its own status and counts for its own function; Get(id) answers
// the one set last. It also counts,
// per function, the ids whose latest status is waiting or in flight
// (Waiting), kept up to date on every change, so reading the counts costs
// one step per function, not per id.
//
// An Index holds at most a limit of ids. When full, a new id makes it
// forget a final status first: of the function holding the most final
// statuses, the one updated longest ago, so that one function's flood of
// statuses pushes out its own, not another's. Only when it holds no final
// status it forgets the waiting or in-flight status updated longest ago
// (which then no longer counts). An expired status is forgotten when
// it expires (checked on every call, in order of expiry).
//
// An Index is synced once its backend has read what was stored up to the
// moment it started reading (SetSynced); lookups wait for that
// (WaitSynced).
type Index struct {
	limit      int
	countsOnly bool

	mu sync.Mutex
	// byID holds the entries of each id, one per function, the one set
	// last first, the others following through sibling.
	byID map[string]*entry
	n    int // entries held
	// busiest orders the functions holding final statuses, the one
	// holding the most first; each keeps its own, least recently updated
	// first.
	busiest   functionHeap
	open      lru // waiting and in flight, least recently updated first
	expiry    expiryHeap
	functions map[string]*function
	// counted and countedBytes are the ids counted, and their bytes, in
	// all.
	counted      int
	countedBytes int64
	synced       bool
	changed      chan struct{} // closed and replaced when synced changes
	// ledger is what this process reserved and the index has not read
	// (Reserve), which Usage counts as well.
	ledger ledger
}

// entry is one id: what Supersedes needs, its function, its place in a
// list and in the expiry heap, and the whole status unless the index only
// counts.
type entry struct {
	id         string
	fn         *function
	state      string // one of the State constants
	accepted   time.Time
	retries    int
	holds      int
	bytes      int64 // the body's, while counted
	expires    int64 // Unix nanoseconds; math.MaxInt64 for never
	full       *Status
	prev, next *entry
	sibling    *entry // the same id's entry of another function
	heap       int32
	counted    bool // waiting or in flight, and not a callback
	isFinal    bool // in the final list, else in the open list
}

// function is one function name held by the index, shared by its ids.
type function struct {
	name    string
	entries int // ids of the function held
	open    int // of them, those counted
	finals  int // of them, those final, in final
	final   lru // its final statuses, least recently updated first
	rank    int // its place in busiest; -1 when it holds no final status
}

// NewIndex returns an empty Index holding at most limit ids. With
// countsOnly it keeps only what the counts need: a final status removes
// its id instead of being kept, and Get returns the id's state, function,
// life and attempts only. countsOnly is for a backend that hands the index
// an id's statuses in the order they superseded each other (JetStream
// writes them conditionally), so that a late step cannot follow a final
// one it no longer holds.
func NewIndex(limit int, countsOnly bool) *Index {
	x := &Index{
		limit:      max(limit, 1),
		countsOnly: countsOnly,
		byID:       map[string]*entry{},
		functions:  map[string]*function{},
		changed:    make(chan struct{}),
	}
	x.open.init()
	return x
}

// Counted reports whether s counts among the messages of its function
// waiting or in flight: a message or a routed dead letter (both are calls
// to s.Function) that is not final. A callback is POSTed to a URL, not to
// its Function, so it never counts.
func Counted(s Status) bool { return !s.Final() && s.Kind != envelope.KindCallback }

// Put keeps s as the status of s.ID unless the one held supersedes it. A
// superseding status that has already expired, or (counting only) is
// final, removes the id.
func (x *Index) Put(s Status, now time.Time) {
	x.mu.Lock()
	defer x.mu.Unlock()
	x.expire(now)
	x.seen(s)
	gone := s.Expired(now) || (x.countsOnly && s.Final())
	if e := x.find(s.ID, s.Function); e != nil {
		if !s.Supersedes(e.status(), now) {
			return
		}
		if gone {
			x.remove(e)
			return
		}
		x.unlink(e)
		x.link(e)
		x.set(e, s)
		return
	}
	if gone {
		return
	}
	for x.n >= x.limit {
		x.remove(x.oldest())
	}
	e := &entry{id: s.ID, heap: -1}
	x.link(e)
	x.set(e, s)
}

// find returns the entry of id for function, or nil.
func (x *Index) find(id, function string) *entry {
	for e := x.byID[id]; e != nil; e = e.sibling {
		if e.fn.name == function {
			return e
		}
	}
	return nil
}

// link puts e first among its id's entries.
func (x *Index) link(e *entry) {
	e.sibling = x.byID[e.id]
	x.byID[e.id] = e
	x.n++
}

// unlink takes e out of its id's entries.
func (x *Index) unlink(e *entry) {
	if head := x.byID[e.id]; head == e {
		if e.sibling == nil {
			delete(x.byID, e.id)
		} else {
			x.byID[e.id] = e.sibling
		}
	} else {
		for p := head; p != nil; p = p.sibling {
			if p.sibling == e {
				p.sibling = e.sibling
				break
			}
		}
	}
	e.sibling = nil
	x.n--
}

// Get returns the status held for id: of the function whose status for
// it was set last, when several functions use id.
func (x *Index) Get(id string, now time.Time) (Status, bool) {
	x.mu.Lock()
	defer x.mu.Unlock()
	x.expire(now)
	e, ok := x.byID[id]
	if !ok {
		return Status{}, false
	}
	if e.full != nil {
		return *e.full, true
	}
	return e.status(), true
}

// Waiting returns, per function, how many ids it holds whose latest status
// is waiting or in flight (Counted); functions with none are left out.
func (x *Index) Waiting(now time.Time) map[string]int {
	x.mu.Lock()
	defer x.mu.Unlock()
	x.expire(now)
	out := make(map[string]int, len(x.functions))
	for name, f := range x.functions {
		if f.open > 0 {
			out[name] = f.open
		}
	}
	return out
}

// Usage is what the messages counted by Waiting hold: how many in all,
// their bytes in all, and how many of them are function's.
type Usage struct {
	Count    int
	Bytes    int64
	Function int
}

// Usage returns what the counted messages hold, in all and of function,
// with what is reserved (Reserve). A function's count includes those
// stored under its other name (Canonical).
func (x *Index) Usage(now time.Time, function string) Usage {
	x.mu.Lock()
	defer x.mu.Unlock()
	x.expire(now)
	return x.usage(function)
}

// Waits reports whether id of function (under either of its names,
// Canonical) is held as waiting with retries attempts made: the same
// message stored again would be a repeat.
func (x *Index) Waits(id, function string, retries int, now time.Time) bool {
	x.mu.Lock()
	defer x.mu.Unlock()
	x.expire(now)
	return x.waits(id, function, retries)
}

// Len is how many messages (ids of a function) the index holds.
func (x *Index) Len() int {
	x.mu.Lock()
	defer x.mu.Unlock()
	return x.n
}

// Reset forgets every status, for a backend whose store was reset under
// the index and that reads it again from the start. What this process
// reserved stays reserved.
func (x *Index) Reset() {
	x.mu.Lock()
	defer x.mu.Unlock()
	x.byID = map[string]*entry{}
	x.n = 0
	x.busiest = nil
	x.open.init()
	x.expiry = nil
	x.functions = map[string]*function{}
	x.counted, x.countedBytes = 0, 0
}

// SetSynced marks the index as read up to now (true) or lagging (false).
func (x *Index) SetSynced(v bool) {
	x.mu.Lock()
	defer x.mu.Unlock()
	if x.synced != v {
		x.synced = v
		close(x.changed)
		x.changed = make(chan struct{})
	}
}

// Synced reports whether the index is marked as read up to now.
func (x *Index) Synced() bool {
	x.mu.Lock()
	defer x.mu.Unlock()
	return x.synced
}

// WaitSynced returns nil once the index is synced, or ctx's error.
func (x *Index) WaitSynced(ctx context.Context) error {
	for {
		x.mu.Lock()
		synced, changed := x.synced, x.changed
		x.mu.Unlock()
		if synced {
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-changed:
		}
	}
}

// status is what e holds of its status: enough for Supersedes.
func (e *entry) status() Status {
	s := Status{ID: e.id, Function: e.fn.name, State: e.state, AcceptedAt: e.accepted, Retries: e.retries, Holds: e.holds}
	if e.expires != math.MaxInt64 {
		s.ExpiresAt = time.Unix(0, e.expires).UTC()
	}
	return s
}

// set makes s the status of e, which is in byID, and updates the counts,
// the lists and the expiry heap.
func (x *Index) set(e *entry, s Status) {
	if e.fn != nil {
		x.unlist(e)
		if e.counted {
			x.uncount(e)
		}
		if e.fn.name != s.Function {
			x.release(e.fn)
			e.fn = nil
		}
	}
	if e.fn == nil {
		e.fn = x.acquire(s.Function)
	}
	e.state = canonical(s.State)
	e.accepted, e.retries, e.holds = s.AcceptedAt, s.Retries, s.Holds
	e.expires = math.MaxInt64
	if !s.ExpiresAt.IsZero() {
		e.expires = s.ExpiresAt.UnixNano()
	}
	e.full = nil
	if !x.countsOnly {
		full := s
		full.Function = e.fn.name // one copy of the name for all its ids
		e.full = &full
	}
	e.counted = Counted(s)
	if e.counted {
		e.bytes = max(s.Bytes, 0)
		e.fn.open++
		x.counted++
		x.countedBytes += e.bytes
	}
	e.isFinal = s.Final()
	x.enlist(e)
	if e.heap < 0 {
		heap.Push(&x.expiry, e)
	} else {
		heap.Fix(&x.expiry, int(e.heap))
	}
}

func (x *Index) remove(e *entry) {
	x.unlink(e)
	x.unlist(e)
	heap.Remove(&x.expiry, int(e.heap))
	if e.counted {
		x.uncount(e)
	}
	x.release(e.fn)
}

// uncount takes counted e out of the counts.
func (x *Index) uncount(e *entry) {
	e.fn.open--
	x.counted--
	x.countedBytes -= e.bytes
	e.bytes = 0
}

// oldest is the entry a full index forgets: the final status updated
// longest ago of the function holding the most, else the open status
// updated longest ago.
func (x *Index) oldest() *entry {
	if len(x.busiest) > 0 {
		return x.busiest[0].final.front()
	}
	return x.open.front()
}

// expire removes what has expired at now, soonest first.
func (x *Index) expire(now time.Time) {
	x.lapse(now)
	at := now.UnixNano()
	for len(x.expiry) > 0 && x.expiry[0].expires <= at {
		x.remove(x.expiry[0])
	}
}

// enlist puts e last in its list: its function's final statuses, or the
// open ones.
func (x *Index) enlist(e *entry) {
	if !e.isFinal {
		x.open.pushBack(e)
		return
	}
	e.fn.final.pushBack(e)
	e.fn.finals++
	x.rerank(e.fn)
}

// unlist takes e out of its list.
func (x *Index) unlist(e *entry) {
	if !e.isFinal {
		x.open.remove(e)
		return
	}
	e.fn.final.remove(e)
	e.fn.finals--
	x.rerank(e.fn)
}

// rerank puts f in its place in busiest after its finals changed.
func (x *Index) rerank(f *function) {
	switch {
	case f.finals > 0 && f.rank < 0:
		heap.Push(&x.busiest, f)
	case f.finals > 0:
		heap.Fix(&x.busiest, f.rank)
	case f.rank >= 0:
		heap.Remove(&x.busiest, f.rank)
	}
}

func (x *Index) acquire(name string) *function {
	f, ok := x.functions[name]
	if !ok {
		f = &function{name: name, rank: -1}
		f.final.init()
		x.functions[name] = f
	}
	f.entries++
	return f
}

func (x *Index) release(f *function) {
	f.entries--
	if f.entries == 0 {
		delete(x.functions, f.name)
	}
}

// canonical returns the constant for state, so that entries share it.
func canonical(state string) string {
	switch state {
	case Waiting:
		return Waiting
	case InFlight:
		return InFlight
	case Delivered:
		return Delivered
	case DeadLettered:
		return DeadLettered
	}
	return state
}

// lru is a doubly linked list of entries around a sentinel.
type lru struct{ root entry }

func (l *lru) init() { l.root.next, l.root.prev = &l.root, &l.root }

func (l *lru) front() *entry {
	if l.root.next == &l.root {
		return nil
	}
	return l.root.next
}

func (l *lru) pushBack(e *entry) {
	e.prev, e.next = l.root.prev, &l.root
	l.root.prev.next = e
	l.root.prev = e
}

func (l *lru) remove(e *entry) {
	e.prev.next, e.next.prev = e.next, e.prev
	e.prev, e.next = nil, nil
}

// functionHeap orders functions by the final statuses they hold, most
// first.
type functionHeap []*function

func (h functionHeap) Len() int           { return len(h) }
func (h functionHeap) Less(i, j int) bool { return h[i].finals > h[j].finals }
func (h functionHeap) Swap(i, j int) {
	h[i], h[j] = h[j], h[i]
	h[i].rank, h[j].rank = i, j
}
func (h *functionHeap) Push(v any) {
	f := v.(*function)
	f.rank = len(*h)
	*h = append(*h, f)
}
func (h *functionHeap) Pop() any {
	old := *h
	f := old[len(old)-1]
	old[len(old)-1] = nil
	*h = old[:len(old)-1]
	f.rank = -1
	return f
}

// expiryHeap orders entries by expiry, soonest first.
type expiryHeap []*entry

func (h expiryHeap) Len() int           { return len(h) }
func (h expiryHeap) Less(i, j int) bool { return h[i].expires < h[j].expires }
func (h expiryHeap) Swap(i, j int) {
	h[i], h[j] = h[j], h[i]
	h[i].heap, h[j].heap = int32(i), int32(j)
}
func (h *expiryHeap) Push(v any) {
	e := v.(*entry)
	e.heap = int32(len(*h))
	*h = append(*h, e)
}
func (h *expiryHeap) Pop() any {
	old := *h
	e := old[len(old)-1]
	old[len(old)-1] = nil
	*h = old[:len(old)-1]
	e.heap = -1
	return e
}
