package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"runtime/metrics"
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
	// Warmup is load before each rate is measured, not counted; it is
	// split over the rounds like Window.
	Warmup time.Duration
	// Window is how long each rate is measured, in Rounds interleaved
	// rounds.
	Window time.Duration
	Rounds int
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

	// Mode is what to measure: parts (the measurements in this process),
	// e2e (a `mailbox serve` process from outside) or all.
	Mode string
	// Mailbox is the mailbox binary the e2e mode runs; empty builds one
	// in Dir.
	Mailbox string
	// Burst is how many requeues the e2e mode sends at once, of E2EBody
	// bytes, each due E2EDelay later.
	Burst    int
	E2EBody  int
	E2EDelay time.Duration
	// PacedRate is how many requeues the e2e mode sends a second, for
	// PacedFor, after the burst.
	PacedRate int
	PacedFor  time.Duration
	// Statuses are the values of the statuses setting the e2e mode runs
	// each backend with, in order.
	Statuses []bool
}

func (o options) parts() bool { return o.Mode == "parts" || o.Mode == "all" }
func (o options) e2e() bool   { return o.Mode == "e2e" || o.Mode == "all" }

// result is what one backend measured. A zero field was not measured.
type result struct {
	Backend string

	Raw      load // durable publishes straight to the server
	Schedule load // the backend's Schedule, no HTTP: a diagnostic
	Ingest   load // requeues accepted (202) through the HTTP API
	Ceiling  load // a trivial handler answering 202

	Delivery delivery
	Lateness lateness
	Backlog  backlog

	// Other is the share of the CPU other processes used in each phase.
	Other []otherCPU

	Errs []error // phases that failed
}

type otherCPU struct {
	Phase string
	Share float64
}

// leadMin and leadMax bound how long before its due time a message of the
// lateness phase is stored.
const (
	leadMin = time.Second
	leadMax = 2 * time.Second
)

// build compiles the package pkg of the module into dir/name, before
// anything is timed.
func build(ctx context.Context, dir, name, pkg string, log *slog.Logger) (string, error) {
	out := filepath.Join(dir, name)
	log.Info("building", "package", pkg, "out", out)
	cmd := exec.CommandContext(ctx, "go", "build", "-o", out, pkg)
	if msg, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("go build %s: %w\n%s", pkg, err, msg)
	}
	return out, nil
}

// runAll measures every backend in turn; the backends do not overlap, so
// each has the machine to itself.
func runAll(ctx context.Context, o options, log *slog.Logger) ([]*result, error) {
	if o.Connector == "" {
		var err error
		if o.Connector, err = build(ctx, o.Dir, "connector", "github.com/openfaas/mailbox/connector", log); err != nil {
			return nil, err
		}
	}
	if _, err := os.Stat(o.Connector); err != nil {
		return nil, fmt.Errorf("-connector: %w", err)
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
//
// The phases that leave messages scheduled far ahead (ingest, backlog) run
// last: nats-server 2.15.2 does not stop a stream's schedule timer when
// the server shuts down, so the stopped server's store stays in this
// process's heap until the next schedule would have fired, an hour later,
// and its garbage collection would slow the phases after it. Each phase
// logs the live heap it starts with.
func runBackend(ctx context.Context, o options, backend string, log *slog.Logger) *result {
	r := &result{Backend: backend}
	dir := filepath.Join(o.Dir, backend)
	phase := func(name string, f func(b *broker) error) {
		if ctx.Err() != nil {
			return
		}
		runtime.GC()
		log.Info("phase", "phase", name, "heap_live_mib", liveHeapMiB())
		start, startErr := readCPU()
		began := time.Now()
		defer func() {
			end, err := readCPU()
			if err != nil || startErr != nil {
				log.Warn("cannot read CPU use", "error", errors.Join(startErr, err))
				return
			}
			share := otherShare(start, end, time.Since(began).Seconds())
			r.Other = append(r.Other, otherCPU{name, share})
			log.Info("phase done", "phase", name, "other_processes_cpu_percent", fmt.Sprintf("%.1f", 100*share))
		}()
		err := func() error {
			b, err := startBroker(backend, filepath.Join(dir, name))
			if err != nil {
				return err
			}
			defer b.stop()
			return f(b)
		}()
		if err != nil {
			log.Error("phase failed", "phase", name, "error", err)
			r.Errs = append(r.Errs, fmt.Errorf("%s: %s: %w", backend, name, err))
		}
	}
	// measure runs one measurement, under a CPU profile if asked.
	measure := func(name string, f func() error) error {
		log.Info("measuring", "what", name)
		if err := profiled(o.CPUProfiles, backend+"-"+name, f); err != nil {
			return fmt.Errorf("%s: %w", name, err)
		}
		return nil
	}
	phase("delivery", func(b *broker) error {
		return measure("delivery", func() (err error) {
			r.Delivery, err = deliveryRate(ctx, b, o)
			log.Info("measured", "what", "delivery", "messages", r.Delivery.Messages, "per_second", round(r.Delivery.rate()), "took", r.Delivery.Took.Round(time.Millisecond))
			return err
		})
	})
	phase("lateness", func(b *broker) error {
		return measure("lateness", func() (err error) {
			r.Lateness, err = measureLateness(ctx, b, o)
			log.Info("measured", "what", "lateness", "messages", r.Lateness.Messages, "p50", r.Lateness.quantile(0.5), "p99", r.Lateness.quantile(0.99), "max", r.Lateness.quantile(1))
			return err
		})
	})
	// The ingest rates are measured in interleaved rounds, so that a
	// drift of the disk's speed during the phase weighs on each alike.
	phase("ingest", func(b *broker) error {
		rig, err := newIngestRig(ctx, b, o)
		if err != nil {
			return err
		}
		defer rig.close()
		kinds := []struct {
			name string
			into *load
			op   func(context.Context) error
		}{
			{"raw-publish", &r.Raw, rig.raw},
			{"schedule", &r.Schedule, rig.schedule},
			{"requeue", &r.Ingest, rig.requeue},
			{"http-ceiling", &r.Ceiling, rig.ceiling},
		}
		for round := range o.Rounds {
			for _, k := range kinds {
				var l load
				err := measure(fmt.Sprintf("%s-%d", k.name, round+1), func() (err error) {
					l, err = hammer(ctx, o.Clients, o.Warmup/time.Duration(o.Rounds), o.Window/time.Duration(o.Rounds), k.op)
					return err
				})
				if err != nil {
					return err
				}
				k.into.add(l)
			}
		}
		for _, k := range kinds {
			log.Info("measured", "what", k.name, "per_second", round(k.into.rate()), "failed", k.into.Failed)
		}
		return nil
	})
	phase("backlog", func(b *broker) error {
		return measure("backlog", func() (err error) {
			r.Backlog, err = measureBacklog(ctx, b, o, log)
			log.Info("measured", "what", "backlog", "waiting", r.Backlog.Waiting, "stored_in", r.Backlog.StoreTook.Round(time.Millisecond), "peak_rss_kib", r.Backlog.PeakRSSKiB)
			return err
		})
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

// liveHeapMiB is the heap the last garbage collection kept.
func liveHeapMiB() int64 {
	s := []metrics.Sample{{Name: "/gc/heap/live:bytes"}}
	metrics.Read(s)
	if s[0].Value.Kind() != metrics.KindUint64 {
		return -1
	}
	return int64(s[0].Value.Uint64() >> 20)
}

func round(f float64) int64 { return int64(f + 0.5) }
