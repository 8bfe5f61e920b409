package status

import (
	"strings"
	"time"

	"github.com/openfaas/mailbox/internal/names"
)

// Claim is a message a requeue is about to store, reserved in an Index
// (Reserve) so that the quotas count it before the index reads its status.
type Claim struct {
	ID       string
	Function string
	Retries  int
	Bytes    int64
	// Hold keeps the reservation until it lapses even once the index has
	// read the message's status: an instant dead letter, whose final
	// status never counts, uses storage all the same, and held it bounds
	// how many a client can make in a while.
	Hold bool
	// Repeat asks the check whether the index holds the message as
	// waiting already (the same function, id and retries).
	Repeat bool
}

// reservation is a Claim held by an Index.
type reservation struct {
	fn, id  string // fn is the canonical function name
	retries int
	bytes   int64
	hold    bool
	lapses  int64 // Unix nanoseconds
	done    bool
}

// ledger is what an Index holds reserved: claims made in this process
// whose status it has not read yet, counted with what it holds.
type ledger struct {
	perFunction map[string]int // by canonical function name
	count       int
	bytes       int64
	// pending are those released when their status is read, by canonical
	// function name and id.
	pending map[[2]string][]*reservation
	// fifo holds every reservation in order of lapse, released or not:
	// each is dropped from its front once released or lapsed, so a status
	// never read (a write that failed or was dropped) cannot hold a
	// reservation for ever.
	fifo []*reservation
}

// Canonical is the name the quotas and repeats count a function under:
// "fn" and "fn.openfaas-fn" are the same function (names.Qualify with
// names.DefaultNamespace, as auth.Targets treats them).
func Canonical(function string) string {
	return names.Qualify(function, names.DefaultNamespace)
}

// aliases are the names function may be stored under.
func aliases(function string) []string {
	q := Canonical(function)
	if short, ok := strings.CutSuffix(q, "."+names.DefaultNamespace); ok {
		return []string{short, q}
	}
	return []string{q}
}

// Reserve reserves claims, in order, each once check accepts it: check is
// given the claim, the usage counting what the index holds and what is
// reserved (the claims before it included), and whether the index holds
// the claim's message as waiting already. The check and the reservation
// are one step, so requests reserving at the same moment cannot all pass
// a bound. When check refuses one, nothing is reserved and its error is
// returned. A reservation counts until the index reads a status of its
// message (the same function and id, at least its retries), unless Hold,
// or until keep has passed, or release is called (the store failed);
// release may be called more than once.
func (x *Index) Reserve(claims []Claim, now time.Time, keep time.Duration, check func(c Claim, u Usage, waits bool) error) (release func(), err error) {
	x.mu.Lock()
	defer x.mu.Unlock()
	x.expire(now)
	made := make([]*reservation, 0, len(claims))
	undo := func() {
		for _, r := range made {
			x.unreserve(r)
		}
	}
	for _, c := range claims {
		if err := check(c, x.usage(c.Function), x.waits(c.ID, c.Function, c.Retries)); err != nil {
			undo()
			return nil, err
		}
		r := &reservation{
			fn: Canonical(c.Function), id: c.ID, retries: c.Retries, bytes: max(c.Bytes, 0),
			hold: c.Hold, lapses: now.Add(keep).UnixNano(),
		}
		x.reserve(r)
		made = append(made, r)
	}
	return func() {
		x.mu.Lock()
		defer x.mu.Unlock()
		undo()
	}, nil
}

func (x *Index) reserve(r *reservation) {
	l := &x.ledger
	if l.perFunction == nil {
		l.perFunction = map[string]int{}
		l.pending = map[[2]string][]*reservation{}
	}
	l.perFunction[r.fn]++
	l.count++
	l.bytes += r.bytes
	if !r.hold {
		k := [2]string{r.fn, r.id}
		l.pending[k] = append(l.pending[k], r)
	}
	l.fifo = append(l.fifo, r)
}

// unreserve releases r unless it is released already.
func (x *Index) unreserve(r *reservation) {
	if r.done {
		return
	}
	r.done = true
	l := &x.ledger
	if l.perFunction[r.fn]--; l.perFunction[r.fn] <= 0 {
		delete(l.perFunction, r.fn)
	}
	l.count--
	l.bytes -= r.bytes
	if r.hold {
		return
	}
	k := [2]string{r.fn, r.id}
	rs := l.pending[k]
	for i, p := range rs {
		if p == r {
			rs = append(rs[:i], rs[i+1:]...)
			break
		}
	}
	if len(rs) == 0 {
		delete(l.pending, k)
	} else {
		l.pending[k] = rs
	}
}

// seen releases the reservations s is the status of: its message is
// counted by the index from now on, or final.
func (x *Index) seen(s Status) {
	rs := x.ledger.pending[[2]string{Canonical(s.Function), s.ID}]
	for _, r := range append([]*reservation(nil), rs...) {
		if r.retries <= s.Retries {
			x.unreserve(r)
		}
	}
}

// lapse drops released reservations from the front of the FIFO and
// releases those past their time.
func (x *Index) lapse(now time.Time) {
	l := &x.ledger
	at := now.UnixNano()
	n := 0
	for n < len(l.fifo) && (l.fifo[n].done || l.fifo[n].lapses <= at) {
		x.unreserve(l.fifo[n])
		l.fifo[n] = nil
		n++
	}
	if n > 0 {
		l.fifo = l.fifo[n:]
		if len(l.fifo) == 0 {
			l.fifo = nil
		}
	}
}

// usage is Usage without the lock.
func (x *Index) usage(function string) Usage {
	u := Usage{Count: x.counted + x.ledger.count, Bytes: x.countedBytes + x.ledger.bytes}
	for _, name := range aliases(function) {
		if f, ok := x.functions[name]; ok {
			u.Function += f.open
		}
	}
	u.Function += x.ledger.perFunction[Canonical(function)]
	return u
}

// waits is Waits without the lock.
func (x *Index) waits(id, function string, retries int) bool {
	for _, name := range aliases(function) {
		if e := x.find(id, name); e != nil && e.state == Waiting && e.retries == retries {
			return true
		}
	}
	return false
}
