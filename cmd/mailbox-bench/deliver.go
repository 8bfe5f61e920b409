package main

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nuid"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/openfaas/mailbox/internal/config"
	"github.com/openfaas/mailbox/internal/envelope"
	"github.com/openfaas/mailbox/internal/queue"
	"github.com/openfaas/mailbox/internal/service"
)

// delivery is how fast a connector drained messages that were all due.
type delivery struct {
	Messages int
	Preload  time.Duration // storing them before the connector started
	Took     time.Duration // from starting the connector to the last arrival
	First    time.Duration // from starting the connector to the first arrival
	Calls    int           // including duplicate deliveries
}

func (d delivery) rate() float64 {
	if d.Took <= 0 {
		return 0
	}
	return float64(d.Messages) / d.Took.Seconds()
}

// lateness is how late messages falling due at a steady rate arrived.
type lateness struct {
	Messages int
	Rate     int             // messages falling due per second
	Sorted   []time.Duration // arrival minus due time, ascending
	// StoreBehind is the most a store started after its planned time: if
	// large, the load was not the one intended.
	StoreBehind time.Duration
	Calls       int
}

// quantile q of the lateness, 0 <= q <= 1 (nearest rank).
func (l lateness) quantile(q float64) time.Duration {
	if len(l.Sorted) == 0 {
		return 0
	}
	return l.Sorted[int(q*float64(len(l.Sorted)-1)+0.5)]
}

// deliveryRate stores o.Deliver messages due now, then starts a connector
// and times how long the sink takes to receive them all.
func deliveryRate(ctx context.Context, b *broker, o options) (delivery, error) {
	sk, err := startSink(false)
	if err != nil {
		return delivery{}, err
	}
	defer sk.stop()
	cfg, err := b.config(sk.url(), o.Inflight)
	if err != nil {
		return delivery{}, err
	}
	q, err := openQueue(ctx, cfg)
	if err != nil {
		return delivery{}, err
	}
	defer q.Close()

	body := make([]byte, o.BodyBytes)
	start := time.Now()
	err = forEach(ctx, o.Deliver, o.Clients, func(ctx context.Context, _ int) error {
		now := time.Now().UTC()
		return q.Schedule(ctx, &envelope.Envelope{ID: nuid.Next(), Function: function, Body: body, Policy: envelope.Policy{MaxRetries: new(10)}, AcceptedAt: now, DueAt: now})
	})
	if err != nil {
		return delivery{}, fmt.Errorf("preload: %w", err)
	}
	d := delivery{Messages: o.Deliver, Preload: time.Since(start)}

	start = time.Now()
	stop, err := startConnector(cfg)
	if err != nil {
		return delivery{}, err
	}
	err = waitFor(ctx, max(time.Minute, time.Duration(o.Deliver)*5*time.Millisecond), "every message delivered",
		func() bool { return sk.delivered() >= o.Deliver })
	calls, first, last := sk.snapshot()
	d.Took, d.First, d.Calls = last.Sub(start), first.Sub(start), calls
	return d, errors.Join(err, stop())
}

// measureLateness starts a connector, then stores o.LateRate messages a
// second for o.LateFor, each between leadMin and leadMax before it is due
// and carrying its due time as its body, and measures how late each
// arrives at the sink.
func measureLateness(ctx context.Context, b *broker, o options) (lateness, error) {
	sk, err := startSink(true)
	if err != nil {
		return lateness{}, err
	}
	defer sk.stop()
	cfg, err := b.config(sk.url(), o.Inflight)
	if err != nil {
		return lateness{}, err
	}
	q, err := openQueue(ctx, cfg)
	if err != nil {
		return lateness{}, err
	}
	defer q.Close()
	stop, err := startConnector(cfg)
	if err != nil {
		return lateness{}, err
	}
	defer func() { _ = stop() }()

	// Due times are evenly spaced; each message is stored a random lead
	// before its own, in the order of the store times.
	n := int(float64(o.LateRate) * o.LateFor.Seconds())
	type plan struct{ storeAt, due time.Time }
	plans := make([]plan, n)
	first := time.Now().Add(leadMax + 500*time.Millisecond)
	for i := range plans {
		due := first.Add(time.Duration(i) * time.Second / time.Duration(o.LateRate))
		plans[i] = plan{storeAt: due.Add(-leadMin - rand.N(leadMax-leadMin)), due: due}
	}
	slices.SortFunc(plans, func(a, b plan) int { return a.storeAt.Compare(b.storeAt) })

	var behind atomic.Int64
	err = forEach(ctx, n, o.Clients, func(ctx context.Context, i int) error {
		p := plans[i]
		if d := time.Until(p.storeAt); d > 0 {
			time.Sleep(d)
		} else {
			raise(&behind, int64(-d))
		}
		due := p.due.UTC()
		return q.Schedule(ctx, &envelope.Envelope{
			ID: nuid.Next(), Function: function, Body: []byte(due.Format(time.RFC3339Nano)),
			Policy: envelope.Policy{MaxRetries: new(10), Delay: new(time.Until(due))}, AcceptedAt: time.Now().UTC(), DueAt: due,
		})
	})
	if err != nil {
		return lateness{}, fmt.Errorf("store: %w", err)
	}
	if err := waitFor(ctx, time.Until(plans[n-1].due)+time.Minute, "every message delivered",
		func() bool { return sk.delivered() >= n }); err != nil {
		return lateness{}, err
	}
	sk.mu.Lock()
	l := lateness{Messages: n, Rate: o.LateRate, Sorted: slices.Clone(sk.late), StoreBehind: time.Duration(behind.Load()), Calls: sk.calls}
	bad := sk.badBody
	sk.mu.Unlock()
	if bad > 0 {
		return lateness{}, fmt.Errorf("%d deliveries without their due time as body", bad)
	}
	slices.Sort(l.Sorted)
	return l, stop()
}

// openQueue opens a queue as the API does, and waits for it to connect.
func openQueue(ctx context.Context, cfg config.Config) (queue.Queue, error) {
	q, err := service.OpenQueue(cfg, prometheus.NewRegistry(), quiet)
	if err != nil {
		return nil, err
	}
	if err := waitFor(ctx, 15*time.Second, "queue connected", q.Connected); err != nil {
		q.Close()
		return nil, err
	}
	return q, nil
}

// startConnector runs the connector's delivery loop in this process,
// wired as the connector binary wires it. stop ends it once in-flight
// deliveries finish; it may be called more than once.
func startConnector(cfg config.Config) (stop func() error, err error) {
	reg := prometheus.NewRegistry()
	q, err := service.OpenQueue(cfg, reg, quiet)
	if err != nil {
		return nil, err
	}
	d, err := service.Dispatcher(cfg, q, reg, quiet)
	if err != nil {
		q.Close()
		return nil, err
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- d.Run(ctx) }()
	var once sync.Once
	var runErr error
	return func() error {
		once.Do(func() {
			cancel()
			runErr = <-done
			q.Close()
		})
		return runErr
	}, nil
}

// forEach calls f for 0..n-1 from workers goroutines, in order of start,
// and returns the first error, after which no new call starts.
func forEach(ctx context.Context, n, workers int, f func(ctx context.Context, i int) error) error {
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	var next atomic.Int64
	var wg sync.WaitGroup
	for range min(workers, n) {
		wg.Go(func() {
			for i := int(next.Add(1)) - 1; i < n && ctx.Err() == nil; i = int(next.Add(1)) - 1 {
				if err := f(ctx, i); err != nil {
					cancel(fmt.Errorf("message %d: %w", i, err))
					return
				}
			}
		})
	}
	wg.Wait()
	return context.Cause(ctx)
}

// raise sets a to v if v is larger.
func raise(a *atomic.Int64, v int64) {
	for old := a.Load(); v > old && !a.CompareAndSwap(old, v); old = a.Load() {
	}
}
