package limit

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"slices"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/openfaas/mailbox/internal/names"
)

// view is one membership: the ids of the live replicas, sorted, this one
// included. Views are never changed once made, so *view is a cache key.
type view struct{ members []string }

// segment is a stretch of this replica's history from start (wall clock,
// Unix ns) to the next segment's start: the view it held and whether it was
// valid (allowed to take shares: heard itself for a settle period, not
// cut off, not leaving).
type segment struct {
	start int64
	v     *view
	valid bool
}

type peer struct {
	lastSeen  time.Time
	heartbeat time.Duration
	over      map[string]struct{}
	overAll   bool
}

// hello is the message on <prefix>.replicas.
type hello struct {
	ID          string `json:"id"`
	HeartbeatMs int64  `json:"heartbeat_ms"`
	// HorizonMs must be the same on every replica: slot ownership is
	// decided by the views held Horizon before each slot.
	HorizonMs int64 `json:"horizon_ms"`
	// Bye: the replica leaves; nothing of its is in flight.
	Bye bool `json:"bye,omitempty"`
	// Over lists the functions of which the replica holds more calls than
	// its current concurrency share; OverAll stands for every function.
	Over    []string `json:"over,omitempty"`
	OverAll bool     `json:"over_all,omitempty"`
}

// Run takes part in the membership until ctx ends: it heartbeats, listens
// to the others and drops the silent. Then it grants nothing more, waits
// (heartbeating) for the calls it granted to be released, up to
// DrainTimeout, says goodbye, closes its NATS connection and returns nil.
// Call it once.
func (l *Limiter) Run(ctx context.Context) error {
	if !l.started.CompareAndSwap(false, true) {
		return errors.New("limit: Run called twice")
	}
	defer l.nc.Close()
	sub, err := l.nc.Subscribe(l.subject, l.receive)
	if err != nil {
		return fmt.Errorf("limit: subscribe %s: %w", l.subject, err)
	}
	t := time.NewTicker(l.o.Heartbeat)
	defer t.Stop()
	l.publish(false)
	for ctx.Err() == nil {
		select {
		case <-ctx.Done():
		case <-t.C:
			l.tick()
			l.publish(false)
		case <-l.kick:
			l.publish(false)
		}
	}

	l.mu.Lock()
	l.closing = true
	l.refresh(time.Now())
	drained := l.inflight == 0
	l.mu.Unlock()
	if !drained {
		l.publish(false) // names every function with calls in flight
		deadline := time.NewTimer(l.o.DrainTimeout)
		defer deadline.Stop()
	wait:
		for {
			select {
			case <-l.released:
				l.mu.Lock()
				drained = l.inflight == 0
				l.mu.Unlock()
				if drained {
					break wait
				}
			case <-t.C:
				l.tick()
				l.publish(false)
			case <-l.kick:
				l.publish(false)
			case <-deadline.C:
				break wait
			}
		}
	}
	_ = sub.Unsubscribe()
	if !drained {
		l.mu.Lock()
		n := l.inflight
		l.mu.Unlock()
		l.log.Warn("limit: leaving without a goodbye: calls still in flight", "calls", n)
		return nil
	}
	l.publish(true)
	if err := l.nc.FlushTimeout(l.o.Heartbeat); err != nil {
		l.log.Debug("limit: goodbye not confirmed", "error", err)
	}
	return nil
}

// receive handles a heartbeat or goodbye, its own included.
func (l *Limiter) receive(m *nats.Msg) {
	var h hello
	if err := json.Unmarshal(m.Data, &h); err != nil {
		l.log.Debug("limit: ignoring a message on the membership subject", "error", err)
		return
	}
	if err := l.check(h); err != nil {
		l.log.Debug("limit: ignoring a heartbeat", "error", err)
		return
	}
	now := time.Now()
	l.mu.Lock()
	defer l.mu.Unlock()
	if h.ID == l.id {
		l.echo(now)
		return
	}
	if l.closing {
		return
	}
	p := l.peers[h.ID]
	if h.Bye {
		if p != nil {
			delete(l.peers, h.ID)
			l.log.Info("limit: replica left", "replica", h.ID)
			l.setView(now)
		}
		return
	}
	if p == nil {
		if len(l.peers) >= maxPeers {
			l.log.Warn("limit: ignoring a new replica: too many known", "replica", h.ID, "replicas", len(l.peers)+1)
			return
		}
		p = &peer{}
		l.peers[h.ID] = p
		l.log.Info("limit: replica joined", "replica", h.ID)
		if h.HorizonMs != l.o.Horizon.Milliseconds() || h.HeartbeatMs != l.o.Heartbeat.Milliseconds() {
			l.log.Error("limit: replica has another heartbeat or horizon: the limits may be exceeded",
				"replica", h.ID, "heartbeat_ms", h.HeartbeatMs, "horizon_ms", h.HorizonMs,
				"own_heartbeat_ms", l.o.Heartbeat.Milliseconds(), "own_horizon_ms", l.o.Horizon.Milliseconds())
		}
		l.setView(now)
		// Tell the newcomer about us, and our over-shares after the
		// lowering, before its settle period ends.
		notify(l.kick)
	}
	p.lastSeen = now
	p.heartbeat = time.Duration(h.HeartbeatMs) * time.Millisecond
	p.overAll = h.OverAll
	clear(p.over)
	if len(h.Over) > 0 && p.over == nil {
		p.over = make(map[string]struct{}, len(h.Over))
	}
	for _, f := range h.Over {
		p.over[f] = struct{}{}
	}
}

// check refuses a heartbeat whose fields are out of bounds. Heartbeats
// come over core NATS, where anyone may publish: a peer's heartbeat
// decides when it is dropped as silent, so a forged one of hours would
// shrink every share for as long. It must be within [minHeartbeat,
// maxPeerHeartbeats of ours]; the id short and plain; the horizon and the
// functions over their share within what a replica sends.
func (l *Limiter) check(h hello) error {
	if !validID(h.ID) {
		return fmt.Errorf("id %.64q is not 1 to %d letters, digits, '-' or '_'", h.ID, maxIDLen)
	}
	if h.Bye {
		return nil
	}
	maxHeartbeat := maxPeerHeartbeats * l.o.Heartbeat
	if hb := time.Duration(h.HeartbeatMs) * time.Millisecond; h.HeartbeatMs < minHeartbeat.Milliseconds() || hb > maxHeartbeat {
		return fmt.Errorf("replica %s: heartbeat_ms %d is not within [%d, %d]", h.ID, h.HeartbeatMs, minHeartbeat.Milliseconds(), maxHeartbeat.Milliseconds())
	}
	if h.HorizonMs < 0 || h.HorizonMs > maxHorizon.Milliseconds() {
		return fmt.Errorf("replica %s: horizon_ms %d is not within [0, %d]", h.ID, h.HorizonMs, maxHorizon.Milliseconds())
	}
	if len(h.Over) > maxOver {
		return fmt.Errorf("replica %s: %d functions over their share, more than %d", h.ID, len(h.Over), maxOver)
	}
	for _, f := range h.Over {
		if !names.Valid(f) {
			return fmt.Errorf("replica %s: %.64q is not a function", h.ID, f)
		}
	}
	return nil
}

// Bounds of a heartbeat's fields (check).
const (
	// minHeartbeat is the least Options.Heartbeat.
	minHeartbeat = 10 * time.Millisecond
	// maxPeerHeartbeats: a peer's heartbeat may be up to this many of
	// ours, so a forged heartbeat is forgotten within 3 times that.
	maxPeerHeartbeats = 10
	// maxHorizon bounds horizon_ms, which is only compared with ours.
	maxHorizon = 24 * time.Hour
	// maxIDLen bounds a replica id; ours are 22 characters (nuid).
	maxIDLen = 64
)

func validID(s string) bool {
	if s == "" || len(s) > maxIDLen {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_') {
			return false
		}
	}
	return true
}

// echo records that our own heartbeat came back at now.
func (l *Limiter) echo(now time.Time) {
	l.refresh(now) // record a cut-off that ends now at its true start
	if l.lastEcho.IsZero() || now.Sub(l.lastEcho) > l.fence {
		l.linkUpSince = now
	}
	l.lastEcho = now
	l.refresh(now)
}

// linkUp reports whether this replica heard itself recently.
func (l *Limiter) linkUp(now time.Time) bool {
	return !l.lastEcho.IsZero() && now.Sub(l.lastEcho) <= l.fence
}

// refresh brings the validity of the current segment up to now.
func (l *Limiter) refresh(now time.Time) {
	up := l.linkUp(now)
	valid := !l.closing && up && now.Sub(l.linkUpSince) >= l.settle
	cur := l.current()
	if valid == cur.valid {
		return
	}
	at := now
	switch {
	case valid:
		at = l.linkUpSince.Add(l.settle)
	case !up && !l.lastEcho.IsZero():
		at = l.lastEcho.Add(l.fence)
		l.log.Warn("limit: not hearing own heartbeats: granting nothing until back", "since", at)
	}
	l.appendSegment(at.UnixNano(), cur.v, valid)
}

func (l *Limiter) current() segment { return l.history[len(l.history)-1] }

func (l *Limiter) appendSegment(start int64, v *view, valid bool) {
	last := len(l.history) - 1
	start = max(start, l.history[last].start)
	s := segment{start: start, v: v, valid: valid}
	if start == l.history[last].start && last > 0 {
		l.history[last] = s // the one it replaces lasted no time
		return
	}
	l.history = append(l.history, s)
}

// setView makes the current peers the current view.
func (l *Limiter) setView(now time.Time) {
	l.refresh(now)
	members := append(slices.Collect(maps.Keys(l.peers)), l.id)
	slices.Sort(members)
	l.appendSegment(now.UnixNano(), &view{members: members}, l.current().valid)
	l.m.replicas.Set(float64(len(members)))
}

// tick drops silent peers and forgets what is no longer needed.
func (l *Limiter) tick() {
	now := time.Now()
	l.mu.Lock()
	defer l.mu.Unlock()
	l.refresh(now)
	if l.linkUp(now) {
		changed := false
		for id, p := range l.peers {
			ref := p.lastSeen
			if l.linkUpSince.After(ref) {
				ref = l.linkUpSince // we were deaf before that
			}
			if now.Sub(ref) > 3*p.heartbeat {
				delete(l.peers, id)
				changed = true
				if l.o.MaxCall > 0 {
					if l.silentUntil < now.UnixNano() {
						l.silentFrom = now.UnixNano() - 1 // the view before the drop
					}
					l.silentUntil = now.Add(l.o.MaxCall).UnixNano()
				}
				l.log.Info("limit: replica silent: dropped", "replica", id, "last_seen", p.lastSeen)
			}
		}
		if changed {
			l.setView(now)
		}
	}

	// History: the rate looks back Horizon + overlap, the concurrency a
	// settle period or MaxCall.
	cutoff := now.UnixNano() - int64(max(l.o.Horizon+l.overlap, l.o.MaxCall)+l.settle+2*l.o.Heartbeat)
	drop := 0
	for drop+1 < len(l.history) && l.history[drop+1].start <= cutoff {
		drop++
	}
	l.history = l.history[drop:]
	live := map[*view]bool{}
	for _, s := range l.history {
		live[s.v] = true
	}
	nowNs := now.UnixNano()
	for f, st := range l.funcs {
		if st.inflight == 0 && st.lastSlot < nowNs && now.Sub(st.lastUsed) > l.idle {
			delete(l.funcs, f)
			continue
		}
		if drop > 0 {
			maps.DeleteFunc(st.ranks, func(v *view, _ int) bool { return !live[v] })
		}
		// Slots more than Hold past are void anyway.
		maps.DeleteFunc(st.honoured, func(s int64, _ struct{}) bool { return s < nowNs-int64(l.o.Hold) })
	}
}

// publish sends a heartbeat, or the goodbye.
func (l *Limiter) publish(bye bool) {
	h := hello{ID: l.id, HeartbeatMs: l.o.Heartbeat.Milliseconds(), HorizonMs: l.o.Horizon.Milliseconds(), Bye: bye}
	if !bye {
		l.mu.Lock()
		h.Over, h.OverAll = l.over(time.Now().UnixNano())
		l.mu.Unlock()
	}
	data, err := json.Marshal(h)
	if err != nil {
		return
	}
	if err := l.nc.Publish(l.subject, data); err != nil {
		l.log.Debug("limit: heartbeat not sent", "error", err)
	}
}

// over lists the functions of which this replica holds more calls than its
// concurrency share now.
func (l *Limiter) over(nowNs int64) (names []string, all bool) {
	for f, st := range l.funcs {
		if st.inflight == 0 || st.lim.MaxConcurrency <= 0 {
			continue
		}
		if st.inflight > l.concurrencyTarget(f, st, nowNs) {
			if len(names) == maxOver {
				return nil, true
			}
			names = append(names, f)
		}
	}
	return names, false
}

// peerOver reports whether a peer holds more calls of function than its
// share.
func (l *Limiter) peerOver(function string) bool {
	for _, p := range l.peers {
		if p.overAll {
			return true
		}
		if _, ok := p.over[function]; ok {
			return true
		}
	}
	return false
}
