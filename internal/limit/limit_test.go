package limit

import (
	"context"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/openfaas/mailbox/internal/jsserver/jsservertest"
	"github.com/openfaas/mailbox/internal/logtest"
	"github.com/openfaas/mailbox/internal/poll"
)

const (
	hb      = 100 * time.Millisecond
	hold    = 200 * time.Millisecond
	horizon = 500 * time.Millisecond
	wait    = 15 * time.Second // poll timeout
)

// replica is one Limiter running as if in its own process.
type replica struct {
	*Limiter
	reg    *prometheus.Registry
	logs   *logtest.Buffer
	cancel context.CancelFunc
	done   chan struct{} // closed when Run has returned
	err    error
	once   sync.Once
}

func start(t testing.TB, url string, tweak ...func(*Options)) *replica {
	t.Helper()
	r := &replica{reg: prometheus.NewRegistry(), logs: &logtest.Buffer{}, done: make(chan struct{})}
	o := Options{
		URL: url, Prefix: "test", Heartbeat: hb, Hold: hold, Horizon: horizon,
		DrainTimeout: 5 * time.Second, // a failing test leaks calls
		Registerer:   r.reg,
		Logger:       slog.New(slog.NewTextHandler(r.logs, &slog.HandlerOptions{Level: slog.LevelDebug})),
	}
	for _, f := range tweak {
		f(&o)
	}
	l, err := New(o)
	if err != nil {
		t.Fatal(err)
	}
	r.Limiter = l
	ctx, cancel := context.WithCancel(context.Background())
	r.cancel = cancel
	go func() {
		r.err = l.Run(ctx)
		close(r.done)
	}()
	t.Cleanup(r.stop)
	return r
}

// stop cancels Run and waits for it to return.
func (r *replica) stop() {
	r.once.Do(func() {
		r.cancel()
		<-r.done
		if r.err != nil {
			panic(r.err)
		}
	})
}

// The accessors below take the lock as Acquire does.

func (l *Limiter) testCap(function string, lim Limits) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	now := time.Now()
	l.refresh(now)
	return l.concurrencyCap(function, l.state(function, lim, now), now.UnixNano())
}

func (l *Limiter) testInflight(function string) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	if st := l.funcs[function]; st != nil {
		return st.inflight
	}
	return 0
}

func (l *Limiter) testValid() bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.refresh(time.Now())
	return l.current().valid
}

func (l *Limiter) testOwns(function string, lim Limits, j int64) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	now := time.Now()
	l.refresh(now)
	owned, _, _ := l.slotCheck(function, l.state(function, lim, now), j)
	return owned
}

func (l *Limiter) testNext(function string) int64 {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.funcs[function].next
}

func waitStable(t *testing.T, n int, reps ...*replica) {
	t.Helper()
	poll.Until(t, wait, fmt.Sprintf("%d replicas see %d and are valid", len(reps), n), func() bool {
		for _, r := range reps {
			if r.Replicas() != n || !r.testValid() {
				return false
			}
		}
		return true
	})
}

// concurrencyHeld is what the replicas may hold together now: for each, its
// share or, if more, its calls in flight. It must never exceed C.
func concurrencyHeld(fn string, lim Limits, reps ...*replica) (sum int, caps []int) {
	for _, r := range reps {
		c := r.testCap(fn, lim)
		caps = append(caps, c)
		sum += max(c, r.testInflight(fn))
	}
	return sum, caps
}

// rateOwners counts, for each of the Rate slots ending at the horizon, how
// many replicas own it; every slot must have at most one owner.
func rateOwners(t *testing.T, fn string, lim Limits, reps ...*replica) (exactlyOne bool) {
	t.Helper()
	g := gap(lim)
	end := floorDiv(time.Now().UnixNano()+int64(horizon), g)
	exactlyOne = true
	for j := end - int64(lim.Rate) + 1; j <= end; j++ {
		owners := 0
		for _, r := range reps {
			if r.testOwns(fn, lim, j) {
				owners++
			}
		}
		if owners > 1 {
			t.Fatalf("%s %+v: slot %d owned by %d replicas", fn, lim, j, owners)
		}
		exactlyOne = exactlyOne && owners == 1
	}
	return exactlyOne
}

// sharesAddUp polls until the concurrency shares add up to C and every rate
// slot has exactly one owner, checking at every step that they never
// overlap.
func sharesAddUp(t *testing.T, reps ...*replica) {
	t.Helper()
	for _, c := range []int{1, 2, 3, 7, 10, 13} {
		for f := range 3 {
			fn, lim := fmt.Sprintf("c%d-f%d", c, f), Limits{MaxConcurrency: c}
			poll.Until(t, wait, fmt.Sprintf("%d replicas: concurrency shares of %s add up to %d", len(reps), fn, c), func() bool {
				sum, caps := concurrencyHeld(fn, lim, reps...)
				if sum > c {
					t.Fatalf("%s: shares %v add up to more than %d", fn, caps, c)
				}
				return sum == c
			})
		}
	}
	for _, rate := range []int{1, 3, 10, 20} {
		for f := range 3 {
			fn, lim := fmt.Sprintf("r%d-f%d", rate, f), Limits{Rate: rate, Per: time.Second}
			poll.Until(t, wait, fmt.Sprintf("%d replicas: every slot of %s has one owner", len(reps), fn), func() bool {
				return rateOwners(t, fn, lim, reps...)
			})
		}
	}
}

func TestSharesAddUp(t *testing.T) {
	t.Parallel()
	url := jsservertest.Start(t).URL()
	var reps []*replica
	for n := 1; n <= 5; n++ {
		reps = append(reps, start(t, url))
		waitStable(t, n, reps...)
		sharesAddUp(t, reps...)
		for _, r := range reps {
			if got := testutil.ToFloat64(r.m.replicas); got != float64(n) {
				t.Errorf("mailbox_limit_replicas = %v, want %d", got, n)
			}
		}
	}
}

func TestJoin(t *testing.T) {
	t.Parallel()
	url := jsservertest.Start(t).URL()
	a, b := start(t, url), start(t, url)
	waitStable(t, 2, a, b)
	const fn, fnRate = "join", "join-rate"
	lim, rateLim := Limits{MaxConcurrency: 10}, Limits{Rate: 20, Per: time.Second}
	sharesAddUp(t, a, b)
	poll.Until(t, wait, "shares of 2 add up", func() bool { s, _ := concurrencyHeld(fn, lim, a, b); return s == 10 })

	// a holds all of its share: when c joins, a is over its new share and c
	// must wait for a's calls to finish before it takes its own.
	var held []func()
	for {
		release, _, _, ok := a.Acquire(context.Background(), fn, lim)
		if !ok {
			break
		}
		held = append(held, release)
	}
	if len(held) != 5 {
		t.Fatalf("a holds %d calls of 10 between 2 replicas, want 5", len(held))
	}

	c := start(t, url)
	everyone := []*replica{a, b, c}
	poll.Until(t, wait, "a and b see c", func() bool {
		sum, caps := concurrencyHeld(fn, lim, everyone...)
		if sum > lim.MaxConcurrency {
			t.Fatalf("shares %v with a holding 5: more than %d", caps, lim.MaxConcurrency)
		}
		if !c.testValid() && caps[2] != 0 {
			t.Fatalf("c takes a share of %d before its settle period ends", caps[2])
		}
		// A function with nothing in flight, where only the settle
		// period holds c back.
		_, free := concurrencyHeld("join-free", lim, everyone...)
		c.mu.Lock()
		since := c.linkUpSince
		c.mu.Unlock()
		if !since.IsZero() && time.Since(since) < c.settle && (caps[2] != 0 || free[2] != 0) {
			t.Fatalf("c takes a share of %d and %d %v after it first heard itself", caps[2], free[2], time.Since(since))
		}
		for _, r := range []*replica{a, b} {
			if r.Replicas() == 3 { // lowered at once
				want := concurrencyShare(10, 3, rank(fn, r.ID(), r.currentMembers()))
				if got := r.testCap(fn, lim); got != want {
					t.Fatalf("a replica that sees 3 has a share of %d, want %d", got, want)
				}
			}
		}
		return a.Replicas() == 3 && b.Replicas() == 3
	})
	// Before its settle period c owns no rate slot either.
	if !c.testValid() {
		g := gap(rateLim)
		end := floorDiv(time.Now().UnixNano()+int64(horizon), g)
		for j := end - 40; j <= end; j++ {
			if c.testOwns(fnRate, rateLim, j) {
				t.Fatalf("c owns slot %d before its settle period ends", j)
			}
		}
	}
	waitStable(t, 3, everyone...)
	// c is valid, but a still holds 5 and reports it: c keeps its share
	// down so that the total stays within 10.
	poll.Until(t, wait, "a reports holding more than its share", func() bool {
		c.mu.Lock()
		defer c.mu.Unlock()
		return c.peerOver(fn)
	})
	sum, caps := concurrencyHeld(fn, lim, everyone...)
	if sum > lim.MaxConcurrency {
		t.Fatalf("shares %v with a holding 5: more than %d", caps, lim.MaxConcurrency)
	}
	for _, release := range held {
		release()
	}
	poll.Until(t, wait, "shares of 3 add up once a's calls end", func() bool {
		sum, caps := concurrencyHeld(fn, lim, everyone...)
		if sum > lim.MaxConcurrency {
			t.Fatalf("shares %v: more than %d", caps, lim.MaxConcurrency)
		}
		return sum == lim.MaxConcurrency
	})
	sharesAddUp(t, everyone...)
}

func (l *Limiter) currentMembers() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.current().v.members
}

func TestLeave(t *testing.T) {
	t.Parallel()
	for _, how := range []string{"goodbye", "dies"} {
		t.Run(how, func(t *testing.T) {
			t.Parallel()
			url := jsservertest.Start(t).URL()
			const maxCall = 2 * time.Second
			tweak := func(o *Options) { o.MaxCall = maxCall }
			a, b, c := start(t, url, tweak), start(t, url, tweak), start(t, url, tweak)
			waitStable(t, 3, a, b, c)
			sharesAddUp(t, a, b, c)
			lim := Limits{MaxConcurrency: 10}
			before, _ := concurrencyHeld("c10-f0", lim, a, b)
			if how == "goodbye" {
				c.stop()
			} else {
				c.nc.Close() // no goodbye, no more heartbeats
			}
			poll.Until(t, wait, "a and b drop c", func() bool {
				return a.Replicas() == 2 && b.Replicas() == 2
			})
			want := map[string]string{"goodbye": "limit: replica left", "dies": "limit: replica silent: dropped"}[how]
			for _, r := range []*replica{a, b} {
				if !strings.Contains(r.logs.String(), want) {
					t.Errorf("c was not dropped by %q", want)
				}
			}
			if how == "dies" {
				// c may still have calls in flight: a and b keep their
				// shares for MaxCall, well past the settle period.
				dropped := time.Now()
				poll.Until(t, wait, "3 settle periods pass", func() bool {
					if now, _ := concurrencyHeld("c10-f0", lim, a, b); now != before && time.Since(dropped) < maxCall {
						t.Fatalf("a and b took c's share %v after dropping it for silence", time.Since(dropped))
					}
					return time.Since(dropped) > 3*a.settle
				})
				poll.Until(t, wait, "c, cut off, grants nothing", func() bool { return !c.testValid() })
				if got := c.testCap("c1-f0", Limits{MaxConcurrency: 1}); got != 0 {
					t.Errorf("cut-off replica has a share of %d", got)
				}
			}
			sharesAddUp(t, a, b)
			if how == "dies" {
				// c, still running but cut off, owns none of their slots.
				for _, rate := range []int{1, 3, 10, 20} {
					lim := Limits{Rate: rate, Per: time.Second}
					if !rateOwners(t, fmt.Sprintf("r%d-f0", rate), lim, a, b, c) {
						t.Errorf("rate %d: a slot without an owner", rate)
					}
				}
			}
		})
	}
}

func TestNATSDown(t *testing.T) {
	t.Parallel()
	srv := jsservertest.Start(t)
	a, b, c := start(t, srv.URL()), start(t, srv.URL()), start(t, srv.URL())
	everyone := []*replica{a, b, c}
	waitStable(t, 3, everyone...)
	sharesAddUp(t, everyone...)

	srv.Stop()
	stopped := time.Now()
	poll.Until(t, wait, "replicas stop granting", func() bool {
		for _, r := range everyone {
			if r.testValid() {
				return false
			}
		}
		return true
	})
	// Well past the 3 heartbeats after which a peer would be dropped: the
	// replicas keep the membership they knew.
	poll.Until(t, wait, "10 heartbeats pass", func() bool {
		for _, r := range everyone {
			if r.Replicas() != 3 {
				t.Fatalf("membership changed to %d while NATS is down", r.Replicas())
			}
			if got := r.testCap("down", Limits{MaxConcurrency: 3}); got != 0 {
				t.Fatalf("cut-off replica has a share of %d", got)
			}
			if _, _, _, ok := r.Acquire(context.Background(), "down", Limits{MaxConcurrency: 3}); ok {
				t.Fatal("cut-off replica granted a call")
			}
		}
		return time.Since(stopped) > 10*hb
	})
	srv.Restart(t)
	waitStable(t, 3, everyone...)
	sharesAddUp(t, everyone...)
}

// TestRateWindow runs replicas that all ask for one function as fast as they
// can, as the dispatcher would: a message turned away with a slot comes back
// at (or a little after) its slot, on any replica, with AcquireReserved. A
// fourth replica joins during the run and one leaves. In every window of
// length Per, the calls granted must number at most Rate.
func TestRateWindow(t *testing.T) {
	t.Parallel()
	url := jsservertest.Start(t).URL()
	reps := []*replica{start(t, url), start(t, url), start(t, url)}
	waitStable(t, 3, reps...)
	const fn = "rate"
	lim := Limits{Rate: 20, Per: time.Second}

	var (
		mu     sync.Mutex
		grants []int64 // slots granted, Unix ns
		by     = map[string]int{}
		live   = slices.Clone(reps)
	)
	pick := func() *replica {
		mu.Lock()
		defer mu.Unlock()
		return live[rand.IntN(len(live))]
	}
	grant := func(r *replica, slot time.Time, release func()) {
		if now := time.Now(); now.Before(slot) {
			t.Errorf("granted at %v, before its slot %v", now, slot)
		}
		release()
		mu.Lock()
		grants = append(grants, slot.UnixNano())
		by[r.ID()]++
		mu.Unlock()
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	worker := func(r *replica) {
		for ctx.Err() == nil {
			release, retry, slot, ok := r.Acquire(ctx, fn, lim)
			for !ok && !slot.IsZero() && ctx.Err() == nil {
				// Stored until its slot, delivered up to hold/2 late to
				// any replica.
				time.Sleep(time.Until(slot) + rand.N(hold/2))
				r = pick()
				release, retry, slot, ok = r.AcquireReserved(ctx, fn, lim, slot)
			}
			if ok {
				grant(r, slot, release)
				continue
			}
			time.Sleep(min(retry, 20*time.Millisecond))
		}
	}
	var wg sync.WaitGroup
	run := func(r *replica) {
		for range 4 {
			wg.Go(func() { worker(r) })
		}
	}
	for _, r := range reps {
		run(r)
	}
	time.Sleep(2 * time.Second)
	d := start(t, url) // joins
	mu.Lock()
	live = append(live, d)
	mu.Unlock()
	run(d)
	time.Sleep(2 * time.Second)
	mu.Lock()
	live = live[1:] // reps[0] leaves
	mu.Unlock()
	reps[0].stop()
	time.Sleep(2 * time.Second)
	cancel()
	wg.Wait()

	slices.Sort(grants)
	if len(grants) < 40 {
		t.Fatalf("only %d grants in 6 s at 20/s", len(grants))
	}
	g := gap(lim)
	for i, s := range grants {
		if s%g != 0 {
			t.Fatalf("slot %d is off the grid of %d ns", s, g)
		}
		if i > 0 && grants[i-1] == s {
			t.Fatalf("slot %v granted twice", time.Unix(0, s))
		}
		if i+lim.Rate < len(grants) && grants[i+lim.Rate]-s < lim.Per.Nanoseconds() {
			t.Fatalf("%d grants within %v from %v", lim.Rate+1, time.Duration(grants[i+lim.Rate]-s), time.Unix(0, s))
		}
	}
	t.Logf("%d grants over %v, by replica %v", len(grants), time.Duration(grants[len(grants)-1]-grants[0]), by)
	for _, r := range append(reps, d) {
		if by[r.ID()] == 0 {
			t.Errorf("replica %s granted nothing", r.ID())
		}
	}
}

func TestReservedSlot(t *testing.T) {
	t.Parallel()
	url := jsservertest.Start(t).URL()
	// Hold below the 200 ms between a replica's own slots, so that the
	// second slot in a row is returned rather than waited for.
	long := func(o *Options) { o.Hold, o.Horizon = 100*time.Millisecond, 2*time.Second }
	const hold = 100 * time.Millisecond
	a, b := start(t, url, long), start(t, url, long)
	waitStable(t, 2, a, b)
	const fn = "reserved"
	lim := Limits{Rate: 10, Per: time.Second}
	ctx := context.Background()

	// Take slots on a until one lies further than hold ahead.
	var slot time.Time
	poll.Until(t, wait, "a reserves a slot beyond hold", func() bool {
		release, retry, s, ok := a.Acquire(ctx, fn, lim)
		if ok {
			release()
			return false
		}
		if s.IsZero() {
			return false // a owns no slot yet
		}
		if until := time.Until(s); retry < until || retry > until+hold {
			t.Errorf("retryAfter %v for a slot %v ahead", retry, time.Until(s))
		}
		slot = s
		return true
	})
	nextA := a.testNext(fn)

	// Early: told to come back at the slot, which it keeps.
	_, retry, kept, ok := b.AcquireReserved(ctx, fn, lim, slot)
	if ok || !kept.Equal(slot) || retry <= hold {
		t.Fatalf("early: ok=%v slot %v retry %v, want !ok, the same slot, retry until it", ok, kept, retry)
	}
	nextB := b.testNext(fn)

	// On time, on the other replica: honoured without a new slot.
	time.Sleep(time.Until(slot) - hold/2)
	release, _, got, ok := b.AcquireReserved(ctx, fn, lim, slot)
	if !ok || !got.Equal(slot) {
		t.Fatalf("on time: ok=%v slot %v, want ok and %v", ok, got, slot)
	}
	if time.Now().Before(slot) {
		t.Error("granted before the slot")
	}
	release()
	if a.testNext(fn) != nextA || b.testNext(fn) != nextB {
		t.Error("honouring a reserved slot took a new one")
	}

	// Twice on the same replica: the repeat is void and pays for a new slot.
	release, _, again, ok := b.AcquireReserved(ctx, fn, lim, slot)
	if ok {
		release()
	}
	if again.Equal(slot) || b.testNext(fn) == nextB {
		t.Errorf("a slot honoured twice: got %v", again)
	}

	// More than hold in the past: void, a new slot is taken.
	asked := time.Now()
	release, _, fresh, ok := a.AcquireReserved(ctx, fn, lim, asked.Add(-2*hold))
	if ok {
		release()
	}
	if fresh.IsZero() || fresh.Before(asked) || a.testNext(fn) == nextA {
		t.Errorf("void slot: got %v (ok=%v), want a new slot", fresh, ok)
	}
}

func TestConcurrencyTurnedAway(t *testing.T) {
	t.Parallel()
	url := jsservertest.Start(t).URL()
	a, b := start(t, url), start(t, url)
	waitStable(t, 2, a, b)
	ctx := context.Background()
	const fn = "busy"
	lim := Limits{MaxConcurrency: 1}
	// One slot between two: one replica has it, the other a share of 0.
	have, none := a, b
	if a.testCap(fn, lim) == 0 {
		have, none = b, a
	}
	poll.Until(t, wait, "the share settles", func() bool { return have.testCap(fn, lim) == 1 })
	release, _, _, ok := have.Acquire(ctx, fn, lim)
	if !ok {
		t.Fatal("no call granted with a share of 1")
	}
	defer release()
	for _, r := range []*replica{have, none} {
		var retries []time.Duration
		for range 60 {
			_, retry, slot, ok := r.Acquire(ctx, fn, lim)
			if ok || !slot.IsZero() {
				t.Fatalf("granted beyond the limit: ok=%v slot %v", ok, slot)
			}
			retries = append(retries, retry)
		}
		first, last := mean(retries[:10]), mean(retries[50:])
		if last < 3*first {
			t.Errorf("retryAfter does not grow with the messages turned away: first %v, last %v", first, last)
		}
		if got := testutil.ToFloat64(r.m.deferred.WithLabelValues(fn, "concurrency")); got != 60 {
			t.Errorf("mailbox_limit_deferred_total{limit=concurrency} = %v, want 60", got)
		}
	}
}

func mean(ds []time.Duration) time.Duration {
	var sum time.Duration
	for _, d := range ds {
		sum += d
	}
	return sum / time.Duration(len(ds))
}

// TestGoodbyeAfterDrain: a replica asked to stop keeps heartbeating while a
// call it granted is in flight, and says goodbye once it is released.
func TestGoodbyeAfterDrain(t *testing.T) {
	t.Parallel()
	url := jsservertest.Start(t).URL()
	a, b := start(t, url), start(t, url)
	waitStable(t, 2, a, b)
	lim := Limits{MaxConcurrency: 4}
	release, _, _, ok := a.Acquire(context.Background(), "drain", lim)
	if !ok {
		t.Fatal("no call granted")
	}
	a.cancel()
	poll.Until(t, wait, "a stops granting", func() bool { return !a.testValid() })
	if _, _, _, ok := a.Acquire(context.Background(), "drain", lim); ok {
		t.Error("a stopping replica granted a call")
	}
	// Ten heartbeats later b still counts a, which holds a call.
	deadline := time.Now().Add(10 * hb)
	poll.Until(t, wait, "10 heartbeats pass", func() bool {
		if b.Replicas() != 2 {
			t.Fatal("b dropped a while a still holds a call")
		}
		select {
		case <-a.done:
			t.Fatal("Run returned with a call in flight")
		default:
		}
		return time.Now().After(deadline)
	})
	release()
	release() // twice is harmless
	poll.Until(t, wait, "b drops a", func() bool { return b.Replicas() == 1 })
	if !strings.Contains(b.logs.String(), "limit: replica left") {
		t.Error("a left without a goodbye")
	}
}

func TestIdleStateDropped(t *testing.T) {
	t.Parallel()
	url := jsservertest.Start(t).URL()
	a := start(t, url)
	a.mu.Lock()
	a.idle = 0
	a.mu.Unlock()
	waitStable(t, 1, a)
	release, _, _, ok := a.Acquire(context.Background(), "idle", Limits{MaxConcurrency: 1})
	if !ok {
		t.Fatal("no call granted")
	}
	count := func() int { a.mu.Lock(); defer a.mu.Unlock(); return len(a.funcs) }
	time.Sleep(3 * hb)
	if count() != 1 {
		t.Fatal("state dropped while a call is in flight")
	}
	release()
	poll.Until(t, wait, "idle state dropped", func() bool { return count() == 0 })
}

func TestOptions(t *testing.T) {
	t.Parallel()
	for _, o := range []Options{
		{},
		{URL: "nats://127.0.0.1:1", Heartbeat: time.Millisecond},
		{URL: "nats://127.0.0.1:1", Hold: 2 * time.Second, Horizon: time.Second},
		{URL: "nats://127.0.0.1:1", Hold: -time.Second},
	} {
		if _, err := New(o); err == nil {
			t.Errorf("%+v: no error", o)
		}
	}
	// No limits: granted at once, without NATS.
	l, err := New(Options{URL: "nats://127.0.0.1:1"})
	if err != nil {
		t.Fatal(err)
	}
	defer l.nc.Close()
	release, _, _, ok := l.Acquire(context.Background(), "free", Limits{})
	if !ok {
		t.Fatal("unlimited function refused")
	}
	release()
	// Limited, before Run: never alone, so nothing.
	if _, _, _, ok := l.Acquire(context.Background(), "f", Limits{MaxConcurrency: 100}); ok {
		t.Error("granted before taking part in the membership")
	}
}

func BenchmarkAcquire(b *testing.B) {
	url := jsservertest.Start(b).URL()
	r := start(b, url)
	poll.Until(b, wait, "valid", r.testValid)
	for _, bench := range []struct {
		name string
		lim  Limits
	}{
		{"concurrency", Limits{MaxConcurrency: 1 << 30}},
		{"rate", Limits{Rate: 1 << 30, Per: time.Second}}, // a slot every ns: no wait
	} {
		b.Run(bench.name, func(b *testing.B) {
			b.ReportAllocs()
			ctx := context.Background()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					release, _, _, ok := r.Acquire(ctx, "bench", bench.lim)
					if !ok {
						b.Fatal("refused")
					}
					release()
				}
			})
		})
	}
}
