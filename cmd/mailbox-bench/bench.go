package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"runtime/pprof"
	"strconv"
	"time"

	"github.com/openfaas/mailbox/internal/config"
	"github.com/openfaas/mailbox/internal/jsserver"
	"github.com/openfaas/mailbox/internal/stanserver"
)

// options are the knobs of one run; main fills them from flags, the test
// with tiny sizes.
type options struct {
	// Backends to measure, in order: stan, jetstream.
	Backends []string
	// Clients is the number of concurrent publishers and HTTP clients.
	Clients int
	// Warmup runs before each rate window and is not counted.
	Warmup time.Duration
	// Window is how long each rate is measured.
	Window time.Duration
	// BodyBytes is the size of each requeued or stored body.
	BodyBytes int
	// Inflight is the connector's max_inflight.
	Inflight int
	// Deliver is how many messages are preloaded for the delivery rate.
	Deliver int
	// LateRate is how many messages fall due per second while lateness is
	// measured, for LateFor.
	LateRate int
	LateFor  time.Duration
	// Waiting is how many messages wait while connector memory is
	// measured.
	Waiting int
	// Stable is how long the connector's peak RSS must not grow before it
	// is read.
	Stable time.Duration
	// Dir holds the servers' stores and the connector binary.
	Dir string
	// Connector is a connector binary to run; empty builds one in Dir.
	Connector string
	// CPUProfiles, if set, is a directory receiving a CPU profile per
	// backend and phase.
	CPUProfiles string
}

// result is what one backend measured. A zero field was not measured.
type result struct {
	Backend string

	Raw     load // durable publishes straight to the server
	Ingest  load // requeues accepted (202) through the HTTP API
	Ceiling load // a trivial handler answering 202

	Delivery delivery
	Lateness lateness
	Backlog  backlog

	Errs []error // phases that failed
}

// leadMin and leadMax bound how long before its due time a message of the
// lateness phase is stored.
const (
	leadMin = time.Second
	leadMax = 2 * time.Second
)

// runAll measures every backend in turn; the backends do not overlap, so
// each has the machine to itself.
func runAll(ctx context.Context, o options, log *slog.Logger) ([]*result, error) {
	if o.Connector == "" {
		o.Connector = filepath.Join(o.Dir, "connector")
		log.Info("building the connector", "out", o.Connector)
		cmd := exec.CommandContext(ctx, "go", "build", "-o", o.Connector, "github.com/openfaas/mailbox/connector")
		if out, err := cmd.CombinedOutput(); err != nil {
			return nil, fmt.Errorf("go build connector: %w\n%s", err, out)
		}
	}
	var results []*result
	for _, backend := range o.Backends {
		r := runBackend(ctx, o, backend, log.With("backend", backend))
		results = append(results, r)
		if ctx.Err() != nil {
			return results, ctx.Err()
		}
	}
	return results, nil
}

// runBackend runs every phase on one backend. A failed phase is recorded
// and the next one runs. Raw publish and ingest share one server, so their
// ratio compares like with like; delivery, lateness and backlog each get a
// fresh server, so no phase works around what an earlier one left stored.
func runBackend(ctx context.Context, o options, backend string, log *slog.Logger) *result {
	r := &result{Backend: backend}
	dir := filepath.Join(o.Dir, backend)
	phase := func(name string, f func(b *broker) error) {
		if ctx.Err() != nil {
			return
		}
		err := func() error {
			b, err := startBroker(backend, filepath.Join(dir, name))
			if err != nil {
				return err
			}
			defer b.stop()
			return profiled(o.CPUProfiles, backend+"-"+name, func() error { return f(b) })
		}()
		if err != nil {
			log.Error("phase failed", "phase", name, "error", err)
			r.Errs = append(r.Errs, fmt.Errorf("%s: %s: %w", backend, name, err))
		}
	}

	phase("ingest", func(b *broker) error {
		var err error
		log.Info("raw durable publish", "publishers", o.Clients, "window", o.Window)
		if r.Raw, err = rawPublish(ctx, b, o); err != nil {
			return fmt.Errorf("raw publish: %w", err)
		}
		log.Info("raw durable publish", "per_second", round(r.Raw.rate()), "failed", r.Raw.Failed)
		if r.Ingest, err = requeueRate(ctx, b, o); err != nil {
			return fmt.Errorf("requeue: %w", err)
		}
		log.Info("requeue through the API", "per_second", round(r.Ingest.rate()), "failed", r.Ingest.Failed)
		if r.Ceiling, err = httpCeiling(ctx, o); err != nil {
			return fmt.Errorf("HTTP ceiling: %w", err)
		}
		log.Info("HTTP ceiling", "per_second", round(r.Ceiling.rate()))
		return nil
	})
	phase("delivery", func(b *broker) (err error) {
		log.Info("delivery rate", "messages", o.Deliver, "max_inflight", o.Inflight)
		r.Delivery, err = deliveryRate(ctx, b, o)
		if err == nil {
			log.Info("delivery rate", "per_second", round(r.Delivery.rate()), "took", r.Delivery.Took.Round(time.Millisecond))
		}
		return err
	})
	phase("lateness", func(b *broker) (err error) {
		log.Info("delivery lateness", "per_second", o.LateRate, "for", o.LateFor)
		r.Lateness, err = measureLateness(ctx, b, o)
		if err == nil {
			log.Info("delivery lateness", "p50", r.Lateness.quantile(0.5), "p99", r.Lateness.quantile(0.99), "max", r.Lateness.quantile(1))
		}
		return err
	})
	phase("backlog", func(b *broker) (err error) {
		log.Info("connector memory with messages waiting", "waiting", o.Waiting)
		r.Backlog, err = measureBacklog(ctx, b, o, log)
		if err == nil {
			log.Info("connector memory", "peak_rss_kib", r.Backlog.PeakRSSKiB, "stored_in", r.Backlog.StoreTook.Round(time.Millisecond))
		}
		return err
	})
	return r
}

// broker is an embedded NATS server for one backend.
type broker struct {
	backend string
	url     string
	stop    func()
}

func startBroker(backend, dir string) (*broker, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	switch backend {
	case "stan":
		s, err := stanserver.Start(stanserver.Options{Dir: dir})
		if err != nil {
			return nil, err
		}
		return &broker{backend: backend, url: s.URL(), stop: s.Shutdown}, nil
	case "jetstream":
		s, err := jsserver.Start(jsserver.Options{Dir: dir})
		if err != nil {
			return nil, err
		}
		return &broker{backend: backend, url: s.URL(), stop: s.Shutdown}, nil
	default:
		return nil, fmt.Errorf("backend %q is not supported: want stan or jetstream", backend)
	}
}

// env is the mailbox's configuration for this broker, as the connector
// binary reads it from its environment.
func (b *broker) env(gatewayURL string, inflight int) map[string]string {
	return map[string]string{
		"backend":      b.backend,
		"nats_url":     b.url,
		"gateway_url":  gatewayURL,
		"max_inflight": strconv.Itoa(inflight),
		"log_level":    "warn",
	}
}

// config is env validated, for the parts run in this process.
func (b *broker) config(gatewayURL string, inflight int) (config.Config, error) {
	env := b.env(gatewayURL, inflight)
	return config.Load(func(k string) (string, bool) { v, ok := env[k]; return v, ok }, nil)
}

// profiled runs f, writing its CPU profile to dir/name.pprof when dir is
// set.
func profiled(dir, name string, f func() error) error {
	if dir == "" {
		return f()
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	out, err := os.Create(filepath.Join(dir, name+".pprof"))
	if err != nil {
		return err
	}
	if err := pprof.StartCPUProfile(out); err != nil {
		out.Close()
		return err
	}
	err = f()
	pprof.StopCPUProfile()
	return errors.Join(err, out.Close())
}

// waitFor polls cond until it holds, ctx ends or timeout passes.
func waitFor(ctx context.Context, timeout time.Duration, what string, cond func() bool) error {
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			return fmt.Errorf("%s: not after %v", what, timeout)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(10 * time.Millisecond):
		}
	}
	return nil
}

func round(f float64) int64 { return int64(f + 0.5) }
