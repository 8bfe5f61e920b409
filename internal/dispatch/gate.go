package dispatch

import (
	"context"
	"log/slog"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// gate pauses deliveries while the gateway cannot be reached. A failed
// connection trips it; run then probes the gateway with back-off and opens
// it again once the gateway answers.
type gate struct {
	probe  func(context.Context) error
	log    *slog.Logger
	up     prometheus.Gauge   // 1 while open
	pauses prometheus.Counter // times it closed

	mu      sync.Mutex
	open    chan struct{} // closed while deliveries may proceed
	tripped chan struct{} // wakes run; one slot, so trips coalesce
}

func newGate(probe func(context.Context) error, up prometheus.Gauge, pauses prometheus.Counter, log *slog.Logger) *gate {
	g := &gate{probe: probe, log: log, up: up, pauses: pauses, open: make(chan struct{}), tripped: make(chan struct{}, 1)}
	close(g.open)
	up.Set(1)
	return g
}

// wait returns once deliveries may proceed, or ctx's error.
func (g *gate) wait(ctx context.Context) error {
	g.mu.Lock()
	open := g.open
	g.mu.Unlock()
	select {
	case <-open:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// trip pauses deliveries until run sees the gateway answer again.
func (g *gate) trip() {
	g.mu.Lock()
	defer g.mu.Unlock()
	select {
	case <-g.open:
		g.open = make(chan struct{})
		g.up.Set(0)
		g.pauses.Inc()
		g.log.Warn("cannot connect to the gateway, pausing deliveries")
	default:
		return // already paused
	}
	select {
	case g.tripped <- struct{}{}:
	default:
	}
}

// run probes while the gate is tripped, until ctx ends.
func (g *gate) run(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-g.tripped:
		}
		backoff := 100 * time.Millisecond
		for {
			err := g.probe(ctx)
			if err == nil {
				break
			}
			g.log.Warn("gateway still unreachable", "error", err, "retry_in", backoff)
			select {
			case <-ctx.Done():
				return
			case <-time.After(backoff):
			}
			backoff = min(backoff*2, 5*time.Second)
		}
		g.mu.Lock()
		g.up.Set(1) // before any delivery resumes, so the gauge never lags
		close(g.open)
		g.mu.Unlock()
		g.log.Info("gateway reachable again, resuming deliveries")
	}
}
