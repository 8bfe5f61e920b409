// Package limit keeps the mailbox's calls to each function within the limits
// the function declares, across every connector replica: at most
// MaxConcurrency calls in flight at once and at most Rate calls per Per.
//
// # Membership
//
// Each replica opens its own NATS connection and publishes a heartbeat on
// <prefix>.replicas every Heartbeat with a replica id unique to the process.
// A peer not heard from for 3 of its heartbeats is dropped; a replica that
// stops says goodbye, once the calls it granted have been released, and is
// dropped at once. A replica that cannot reach NATS keeps the membership it
// last knew and never drops a peer for silence, since the silence may be its
// own. It also hears its own heartbeats (NATS echoes them); when it has not
// heard one for 2.5 heartbeats it stops granting anything, because the others
// are about to drop it and take its share. Once it hears itself again, and
// likewise when it starts, it grants nothing for a settle period (2.5
// heartbeats), so that the others have seen it and lowered their shares.
//
// # Shares
//
// For each function the live replicas are ranked by rendezvous hashing
// (score(function, replica id), highest first), which every replica
// computes alike. Concurrency: the replica at rank r of n may hold
// floor(C/n) calls, plus one if r < C mod n; the shares add up to exactly C.
// A share that goes down applies at once (calls already in flight finish);
// one that goes up applies only once the higher value has held for a settle
// period and no peer reports, in its heartbeat, that it still holds more
// calls of that function than its own share (it does so after a lowering
// until enough of its calls have finished).
//
// Rate: the calls of a function are placed on a grid of slots
// ceil(Per/Rate) apart on the wall clock (slot j at j*gap after the Unix
// epoch), so that any window of length Per holds at most Rate slots. Slot j
// belongs to the replica at rank j mod n, which gives each replica Rate/n
// slots per Per (fractions included, so a limit below the number of replicas
// still reaches every replica). A replica grants a slot at most once, and
// only slots it owns. Because Acquire reserves slots up to Horizon ahead,
// ownership of slot j is decided by the views of the membership that held
// around j - Horizon: a replica uses slot j only if it was valid and owned j
// in every view it held during [j - Horizon - 2*settle, j - Horizon]. Two
// replicas that learnt each membership change within a settle period of one
// another therefore never own the same slot, even with reservations made
// before the change still to come. The price is that a replica joining or
// leaving changes who owns the slots only from Horizon (+ 2 settle periods)
// onwards: a new replica takes its first slot that much after it started,
// and a departed replica's slots go unused for that long.
//
// # Guarantee
//
// Concurrency: the calls granted and not yet released for a function, over
// all replicas, never exceed MaxConcurrency. Rate: the slots granted for a
// function (each call starts at its slot), over all replicas, never number
// more than Rate in any half-open window of length Per. Conditions:
//   - every replica hears each membership change (a heartbeat, a goodbye, or
//     3 heartbeats of silence) within a settle period of every other; one
//     lost heartbeat is tolerated, a NATS cluster split that hides replicas
//     from each other is not;
//   - calls in flight on a replica cut off from NATS: it stops granting 2.5
//     heartbeats after it last heard itself; the others drop it 3 heartbeats
//     after they last heard it (2 if they missed its last one) and take over
//     its concurrency share max(settle period, MaxCall) after that. With
//     MaxCall at least the longest call plus a heartbeat this always holds;
//     with MaxCall 0, a call of that replica still running 2 heartbeats
//     after it stopped granting counts beyond the limit until it ends (a
//     replica that crashed takes its calls with it, so this is about a
//     replica that lives on without NATS);
//   - a message comes back with its reserved slot once; a second delivery
//     of the same message on the same replica is noticed and takes a new
//     slot, on another replica it is not;
//   - for the rate, clocks: a call starts when the starting replica's clock
//     reads its slot, a little later (timer wake-up), or, for a reserved slot
//     whose message comes back late, up to Hold later (later than that the
//     slot is void and a new one is taken). Measured at call start on one
//     clock, any window of length Per - (skew + lateness) holds at most Rate
//     calls, where skew is the largest clock difference between replicas and
//     lateness the largest delay of a start after its slot;
//   - after a function's Rate or Per changes, slots reserved on the old grid
//     (up to Horizon ahead) are still honoured, so for that long each limit
//     holds on its own, not the sum.
package limit

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nuid"
	"github.com/prometheus/client_golang/prometheus"
)

// Limits are a function's declared limits. A zero field is no limit: no
// concurrency limit when MaxConcurrency <= 0, no rate limit when Rate <= 0
// or Per <= 0.
type Limits struct {
	// MaxConcurrency is the most calls in flight at once.
	MaxConcurrency int
	// Rate is the most calls in any window of length Per.
	Rate int
	Per  time.Duration
}

func (l Limits) rated() bool     { return l.Rate > 0 && l.Per > 0 }
func (l Limits) unlimited() bool { return l.MaxConcurrency <= 0 && !l.rated() }

// Options configure a Limiter.
type Options struct {
	// URL of the NATS server; may list several, comma-separated. Required.
	URL string
	// CredentialsFile is a NATS .creds file. Defaults to none.
	CredentialsFile string
	// Name of the NATS connection. Defaults to mailbox-limit.
	Name string
	// Prefix of the membership subject, <Prefix>.replicas. Replicas that
	// share limits must share it. Defaults to mailbox.
	Prefix string
	// Heartbeat is the interval between heartbeats, at least 10ms, and
	// should be the same on every replica. Peers are dropped after 3 of
	// theirs; the settle period is 2.5 of one's own. Defaults to 1s.
	Heartbeat time.Duration
	// Hold is how long Acquire waits itself for a rate slot; a slot further
	// away is returned for the message to be stored until then. It is also
	// how late a reserved slot may be used. Defaults to 1s.
	Hold time.Duration
	// Horizon is how far ahead Acquire reserves rate slots, at least Hold,
	// and must be the same on every replica (a heartbeat with another one
	// is logged as an error). Beyond it a message is turned away without a
	// slot. A longer horizon re-stores a backlog less often; a shorter one
	// hands slots over sooner when replicas come and go. Defaults to 1m.
	Horizon time.Duration
	// MaxCall: when a replica goes silent without a goodbye, it may be cut
	// off from NATS with calls still in flight, so the others wait MaxCall
	// before they take over its concurrency share (its rate slots are
	// handed over as usual). Set it to the longest a call can last (the
	// dispatcher's handler timeout) plus a heartbeat, the same on every
	// replica. Defaults to 0: they wait only the settle period, and calls
	// of a cut-off replica still running 2 heartbeats after it stopped
	// granting may exceed the limit.
	MaxCall time.Duration
	// DrainTimeout is how long Run, once its context ends, waits for the
	// calls it granted to be released before it says goodbye. If they are
	// not all released by then it leaves without a goodbye, so the others
	// take its share only after they stop hearing it. Defaults to 2m.
	DrainTimeout time.Duration
	// Logger defaults to discarding.
	Logger *slog.Logger
	// Registerer for the metrics. Defaults to a private registry.
	Registerer prometheus.Registerer
}

const (
	// minRetry and maxRetry bound the retryAfter of a message turned away
	// without a slot.
	minRetry = 100 * time.Millisecond
	maxRetry = 10 * time.Minute
	// turnedTau is the time constant over which messages turned away are
	// forgotten.
	turnedTau = time.Minute
	// initialCall is the assumed call duration before any call finished.
	initialCall = time.Second
	// maxSearch bounds the slots one Acquire examines.
	maxSearch = 4096
	// maxOver is the most function names a heartbeat lists; beyond it the
	// heartbeat says "all".
	maxOver = 256
	// maxPeers bounds the other replicas known: heartbeats come over core
	// NATS, where anyone may publish one.
	maxPeers = 256
	// functionIdle is how long a function's state is kept after its last
	// use, once nothing is in flight and no reserved slot is ahead.
	functionIdle = 10 * time.Minute
)

// Limiter shares the functions' limits with the other replicas. Its methods
// are safe for concurrent use.
type Limiter struct {
	o        Options
	id       string
	subject  string
	nc       *nats.Conn
	log      *slog.Logger
	m        *metrics
	settle   time.Duration // 2.5 heartbeats
	fence    time.Duration // no echo for this long: stop granting
	overlap  time.Duration // 2 settle periods: rate ownership window
	idle     time.Duration // functionIdle; shorter in tests
	kick     chan struct{} // publish a heartbeat now
	released chan struct{} // the last call in flight was released
	started  atomic.Bool

	mu          sync.Mutex
	peers       map[string]*peer
	history     []segment // at least one; the last is current
	closing     bool
	lastEcho    time.Time // our own last heartbeat heard back; zero: never
	linkUpSince time.Time // first echo after a gap
	funcs       map[string]*fnState
	inflight    int
	// A peer dropped for silence at silentFrom (Unix ns) may still have
	// calls in flight until silentUntil: keep its concurrency share.
	silentFrom, silentUntil int64
}

// fnState is one function's bookkeeping on this replica.
type fnState struct {
	lim      Limits
	cap      int // concurrency share last applied
	inflight int // granted, not released (including waiting for a slot)
	gap      int64
	next     int64 // first grid index not yet reserved or ruled out
	lastSlot int64 // latest slot reserved here, Unix ns; 0: none
	honoured map[int64]struct{}
	ranks    map[*view]int
	conc     decayed // messages turned away for concurrency
	rate     decayed // messages turned away for the rate
	meanCall time.Duration
	lastUsed time.Time
}

func (st *fnState) rank(function, self string, v *view) int {
	if r, ok := st.ranks[v]; ok {
		return r
	}
	r := rank(function, self, v.members)
	st.ranks[v] = r
	return r
}

// decayed counts events, forgetting them with time constant turnedTau.
type decayed struct {
	v  float64
	at time.Time
}

func (d *decayed) add(now time.Time) float64 {
	d.v = d.v*math.Exp(-now.Sub(d.at).Seconds()/turnedTau.Seconds()) + 1
	d.at = now
	return d.v
}

// New checks the options and connects to NATS; the connection is retried in
// the background if the server cannot be reached. Call Run to take part in
// the membership: until Run has heard its own heartbeat for a settle period,
// Acquire grants nothing.
func New(o Options) (*Limiter, error) {
	if o.URL == "" {
		return nil, errors.New("limit: URL is required")
	}
	if o.Name == "" {
		o.Name = "mailbox-limit"
	}
	if o.Prefix == "" {
		o.Prefix = "mailbox"
	}
	if o.Heartbeat == 0 {
		o.Heartbeat = time.Second
	}
	if o.Heartbeat < minHeartbeat {
		return nil, fmt.Errorf("limit: Heartbeat %v is below %v", o.Heartbeat, minHeartbeat)
	}
	if o.Hold == 0 {
		o.Hold = time.Second
	}
	if o.Hold < 0 {
		return nil, fmt.Errorf("limit: Hold %v is negative", o.Hold)
	}
	if o.MaxCall < 0 {
		return nil, fmt.Errorf("limit: MaxCall %v is negative", o.MaxCall)
	}
	if o.Horizon == 0 {
		o.Horizon = max(time.Minute, o.Hold)
	}
	if o.Horizon < o.Hold {
		return nil, fmt.Errorf("limit: Horizon %v is shorter than Hold %v", o.Horizon, o.Hold)
	}
	if o.DrainTimeout == 0 {
		o.DrainTimeout = 2 * time.Minute
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.Registerer == nil {
		o.Registerer = prometheus.NewRegistry()
	}
	m, err := newMetrics(o.Registerer)
	if err != nil {
		return nil, fmt.Errorf("limit: metrics: %w", err)
	}
	settle := o.Heartbeat*2 + o.Heartbeat/2
	l := &Limiter{
		o:        o,
		id:       nuid.Next(),
		subject:  o.Prefix + ".replicas",
		log:      o.Logger,
		m:        m,
		settle:   settle,
		fence:    settle,
		overlap:  2 * settle,
		idle:     functionIdle,
		kick:     make(chan struct{}, 1),
		released: make(chan struct{}, 1),
		peers:    map[string]*peer{},
		funcs:    map[string]*fnState{},
	}
	l.history = []segment{{start: time.Now().UnixNano(), v: &view{members: []string{l.id}}}}
	opts := []nats.Option{
		nats.Name(o.Name),
		nats.MaxReconnects(-1),
		nats.ReconnectWait(250 * time.Millisecond),
		nats.RetryOnFailedConnect(true),
		// A heartbeat that cannot be sent now is worthless later.
		nats.ReconnectBufSize(-1),
		nats.DisconnectErrHandler(func(_ *nats.Conn, err error) {
			l.log.Warn("limit: disconnected from NATS: keeping the last membership", "error", err)
		}),
		nats.ReconnectHandler(func(nc *nats.Conn) {
			l.log.Info("limit: reconnected to NATS", "url", nc.ConnectedUrl())
		}),
	}
	if o.CredentialsFile != "" {
		opts = append(opts, nats.UserCredentials(o.CredentialsFile))
	}
	nc, err := nats.Connect(o.URL, opts...)
	if err != nil {
		return nil, fmt.Errorf("limit: connect: %w", err)
	}
	l.nc = nc
	return l, nil
}

// ID is this replica's id in the membership.
func (l *Limiter) ID() string { return l.id }

// Replicas is the number of replicas this one counts, itself included.
func (l *Limiter) Replicas() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.current().v.members)
}

func noop() {}

// Acquire asks for one call of function under lim now.
//
// ok: make the call now and call release when it has finished (release is
// safe to call more than once; it is a no-op for a function without
// limits). slot is the rate slot the call was granted, zero without a rate
// limit.
//
// !ok: store the message again, due after retryAfter, without counting an
// attempt. If slot is not zero, it is a rate slot reserved for this message:
// pass it to AcquireReserved when the message comes back (on any replica).
// Acquire waits itself for a slot no more than Hold away. A message turned
// away without a slot (no room for one more call in flight, a concurrency
// share of 0, or no rate slot of this replica within Horizon) is told to
// come back after a delay that grows with the messages this replica turned
// away for the function in the last minute or so: for the m-th, about m
// mean call durations divided by its concurrency share, or its last
// reserved slot plus m of its own slot intervals; with ±50% jitter, at
// least 100ms and at most 10m. A backlog thus comes back spread over about
// the time it takes to drain instead of being stored again every second.
// If ctx ends while Acquire waits for its slot, it returns !ok with that
// slot and retryAfter until it (possibly zero).
func (l *Limiter) Acquire(ctx context.Context, function string, lim Limits) (release func(), retryAfter time.Duration, slot time.Time, ok bool) {
	return l.acquire(ctx, function, lim, 0)
}

// AcquireReserved is Acquire for a message that carries the rate slot a
// previous Acquire reserved for it. The slot is honoured without taking a
// new one if it is no more than Hold in the past and has not been honoured
// on this replica before; a slot still more than Hold ahead returns !ok with
// retryAfter until it and newSlot = slot. A void slot (older, repeated, or
// zero) is replaced as by Acquire, and newSlot is the replacement. Without
// room for one more call in flight, it returns !ok with newSlot = slot: the
// message keeps its slot while it is still valid when it comes back.
func (l *Limiter) AcquireReserved(ctx context.Context, function string, lim Limits, slot time.Time) (release func(), retryAfter time.Duration, newSlot time.Time, ok bool) {
	var ns int64
	if !slot.IsZero() {
		ns = slot.UnixNano()
	}
	return l.acquire(ctx, function, lim, ns)
}

func (l *Limiter) acquire(ctx context.Context, function string, lim Limits, reserved int64) (func(), time.Duration, time.Time, bool) {
	if lim.unlimited() {
		return noop, 0, time.Time{}, true
	}
	now := time.Now()
	nowNs := now.UnixNano()
	hold := int64(l.o.Hold)

	l.mu.Lock()
	l.refresh(now)
	st := l.state(function, lim, now)
	useReserved := false
	if reserved != 0 && lim.rated() {
		_, repeated := st.honoured[reserved]
		switch {
		case reserved < nowNs-hold || repeated:
			// void: take a new slot below
		case reserved-nowNs > hold:
			l.mu.Unlock()
			l.m.deferred.WithLabelValues(function, "rate").Inc()
			return nil, time.Duration(reserved - nowNs), time.Unix(0, reserved), false
		default:
			useReserved = true
		}
	}

	if lim.MaxConcurrency > 0 {
		room := l.concurrencyCap(function, st, nowNs)
		if st.inflight >= room {
			retry := l.spreadConcurrency(st, room, now)
			l.mu.Unlock()
			l.m.deferred.WithLabelValues(function, "concurrency").Inc()
			var keep time.Time
			if useReserved {
				keep = time.Unix(0, reserved)
			}
			return nil, retry, keep, false
		}
	}

	var slotNs int64
	if lim.rated() {
		if useReserved {
			slotNs = reserved
			st.honoured[reserved] = struct{}{}
		} else {
			j, found := l.findSlot(function, st, nowNs)
			if !found {
				retry := l.spreadRate(st, now)
				l.mu.Unlock()
				l.m.deferred.WithLabelValues(function, "rate").Inc()
				return nil, retry, time.Time{}, false
			}
			slotNs = j * st.gap
			st.next = j + 1
			st.lastSlot = max(st.lastSlot, slotNs)
			if slotNs-nowNs > hold {
				l.mu.Unlock()
				l.m.deferred.WithLabelValues(function, "rate").Inc()
				return nil, time.Duration(slotNs - nowNs), time.Unix(0, slotNs), false
			}
		}
	}
	st.inflight++
	l.inflight++
	l.mu.Unlock()

	var slot time.Time
	if slotNs != 0 {
		slot = time.Unix(0, slotNs)
		if wait := time.Until(slot); wait > 0 {
			t := time.NewTimer(wait)
			select {
			case <-t.C:
			case <-ctx.Done():
				t.Stop()
				l.mu.Lock()
				if useReserved {
					delete(st.honoured, reserved) // not used: the message keeps it
				}
				l.mu.Unlock()
				l.release(st, 0)
				return nil, max(0, time.Until(slot)), slot, false
			}
		}
	}
	start := time.Now()
	var done atomic.Bool
	return func() {
		if done.CompareAndSwap(false, true) {
			l.release(st, time.Since(start))
		}
	}, 0, slot, true
}

// release ends one call in flight of st that lasted took (0: not made).
func (l *Limiter) release(st *fnState, took time.Duration) {
	l.mu.Lock()
	st.inflight--
	l.inflight--
	if took > 0 {
		st.meanCall += (took - st.meanCall) / 8
	}
	st.lastUsed = time.Now()
	drained := l.inflight == 0
	l.mu.Unlock()
	if drained {
		notify(l.released)
	}
}

func notify(c chan struct{}) {
	select {
	case c <- struct{}{}:
	default:
	}
}

// state returns function's state, created if need be; a change of Rate or
// Per starts a new grid.
func (l *Limiter) state(function string, lim Limits, now time.Time) *fnState {
	st := l.funcs[function]
	if st == nil {
		st = &fnState{
			honoured: map[int64]struct{}{},
			ranks:    map[*view]int{},
			meanCall: initialCall,
		}
		l.funcs[function] = st
	}
	if st.lim.Rate != lim.Rate || st.lim.Per != lim.Per {
		st.gap, st.next = 0, 0
		if lim.rated() {
			st.gap = gap(lim)
		}
	}
	st.lim = lim
	st.lastUsed = now
	return st
}

// concurrencyCap is how many calls of function this replica may hold now,
// and remembers it: a lower value applies at once, a higher one only while
// no peer reports that it holds more calls of function than its share.
func (l *Limiter) concurrencyCap(function string, st *fnState, nowNs int64) int {
	t := l.concurrencyTarget(function, st, nowNs)
	if t > st.cap && l.peerOver(function) {
		t = st.cap
	}
	st.cap = t
	return t
}

// concurrencyTarget is the smallest share of the views held during the last
// settle period (or since a peer went silent, for MaxCall after that), 0
// while this replica is not valid.
func (l *Limiter) concurrencyTarget(function string, st *fnState, nowNs int64) int {
	if !l.current().valid {
		return 0
	}
	c := st.lim.MaxConcurrency
	lo := nowNs - int64(l.settle)
	if l.silentUntil > nowNs {
		lo = min(lo, l.silentFrom)
	}
	t := c
	for i := len(l.history) - 1; i >= 0; i-- {
		s := l.history[i]
		t = min(t, concurrencyShare(c, len(s.v.members), st.rank(function, l.id, s.v)))
		if s.start <= lo {
			break
		}
	}
	return t
}

// findSlot finds the first grid slot of st this replica owns, not yet
// reserved, between now and now + Horizon. It moves st.next past the slots
// it ruled out for good: ownership of slot j is final once j - Horizon is in
// the past, since the history only grows at its end.
func (l *Limiter) findSlot(function string, st *fnState, nowNs int64) (int64, bool) {
	g := st.gap
	j := max(st.next, ceilDiv(nowNs, g))
	jmax := floorDiv(nowNs+int64(l.o.Horizon), g)
	for steps := 0; j <= jmax && steps < maxSearch; steps++ {
		owned, next, none := l.slotCheck(function, st, j)
		if owned {
			return j, true
		}
		if none {
			break
		}
		j = next
	}
	st.next = min(j, jmax+1)
	return 0, false
}

// slotCheck reports whether this replica owns slot j of st: it was valid and
// owned j in every view it held during [j*gap - Horizon - overlap,
// j*gap - Horizon]. When it does not, next > j is the next slot worth
// checking, or none says no slot can be owned before the replica is valid.
func (l *Limiter) slotCheck(function string, st *fnState, j int64) (owned bool, next int64, none bool) {
	g := st.gap
	back := int64(l.o.Horizon) + int64(l.overlap)
	a := j*g - int64(l.o.Horizon)
	lo := a - int64(l.overlap)
	h := l.history
	if lo < h[0].start {
		// Before what this replica remembers: not its slot.
		return false, max(j+1, ceilDiv(h[0].start+back, g)), false
	}
	latest := true
	for i := len(h) - 1; i >= 0; i-- {
		s := h[i]
		if s.start > a {
			continue
		}
		end := int64(math.MaxInt64)
		if i+1 < len(h) {
			end = h[i+1].start
		}
		if end <= lo {
			break
		}
		// The first index whose window starts at or after this segment's end.
		past := int64(math.MaxInt64)
		if end != math.MaxInt64 {
			past = ceilDiv(end+back, g)
		}
		if !s.valid {
			if past == math.MaxInt64 {
				return false, 0, true
			}
			return false, max(j+1, past), false
		}
		n := int64(len(s.v.members))
		r := int64(st.rank(function, l.id, s.v))
		if !ownsSlot(j, int(n), int(r)) {
			if latest {
				step := mod(r-mod(j, n), n)
				if step == 0 {
					step = n
				}
				return false, max(j+1, min(j+step, past)), false
			}
			return false, j + 1, false
		}
		latest = false
	}
	return true, 0, false
}

// Why a message turned away is told to come back after a spread-out delay:
// a backlog of a function, delivered all at once, would otherwise be turned
// away and stored again every second, one round trip through NATS per
// message per second, while only a few can proceed. Instead each replica
// counts the messages it turned away for the function recently (forgotten
// over about a minute), and the m-th is told to come back after about the
// time this replica needs to work through m of them: m × mean call duration
// / its concurrency share, or, for the rate, the time to its last reserved
// slot plus m of its own slot intervals. With ±50% jitter, the backlog comes
// back spread over roughly the time it takes to drain, in arrival order, and
// each message is stored again only a few times. A replica with a share of
// 0 spreads the same way (as for a share of 1), so its messages end up with
// the replicas that have room.

// spreadConcurrency is the retryAfter of a message turned away for lack of
// room to hold one more call, at a share of room.
func (l *Limiter) spreadConcurrency(st *fnState, room int, now time.Time) time.Duration {
	m := st.conc.add(now)
	return spread(time.Duration(m * float64(st.meanCall) / float64(max(room, 1))))
}

// spreadRate is the retryAfter of a message turned away without a slot.
func (l *Limiter) spreadRate(st *fnState, now time.Time) time.Duration {
	m := st.rate.add(now)
	own := time.Duration(st.gap * int64(len(l.current().v.members)))
	ahead := max(0, time.Duration(st.lastSlot-now.UnixNano()))
	return min(maxRetry, ahead+spread(time.Duration(m*float64(own))))
}

func spread(d time.Duration) time.Duration {
	d = time.Duration(float64(d) * (0.5 + rand.Float64()))
	return min(maxRetry, max(minRetry, d))
}
