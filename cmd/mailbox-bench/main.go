// Command mailbox-bench measures the mailbox on each queue backend, in one
// run, on embedded servers in a temporary directory:
//
//   - the server's raw durable publish rate with -clients publishers: the
//     ceiling for requeues;
//   - requeues accepted per second through the HTTP API (-clients
//     keep-alive clients), against that ceiling, and the backend's
//     Schedule without HTTP as a diagnostic;
//   - the HTTP ceiling: the same clients against a handler answering 202;
//   - deliveries per second to a sink function that answers 200 at once;
//   - delivery lateness with -late-rate messages falling due per second;
//   - the connector binary's peak resident memory with -waiting messages
//     waiting.
//
// The four ingest rates are measured in -rounds interleaved rounds. Each
// phase also reports how much CPU other processes used meanwhile, so a
// busy machine shows in the results instead of silently lowering them.
//
// With -mode e2e (or all) it measures the mailbox from outside instead
// (or as well), for each backend and each -statuses value: a `mailbox
// serve` process (the binary of ./cmd/mailbox, built before anything is
// timed) on free ports, with its data_dir in the temporary directory and a
// token, takes a burst of -burst requeues of -e2e-body bytes from -clients
// keep-alive clients, each due -e2e-delay later, delivering to a sink that
// answers 200 at once; then -paced-rate requeues a second for -paced-for.
// It reports ingest req/s, delivery msg/s (first requeue sent to last
// delivery), lateness p50/p99 (arrival minus the due time the API
// answered) of both loads, and the process's peak RSS.
//
// It prints a table per backend with each target, and writes charts into
// -out. Run it from the module (it builds ./connector, and ./cmd/mailbox
// for e2e):
//
//	go run ./cmd/mailbox-bench -out docs
//	go run ./cmd/mailbox-bench -mode e2e -statuses both
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/openfaas/mailbox/internal/service"
)

func main() {
	logger := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelInfo}))
	// As in the connector binary, connector-sdk's log line for every
	// invocation becomes debug output, not shown.
	service.SetDefaultLogger(logger)

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	if err := run(ctx, os.Args[1:], os.Stdout, logger); err != nil {
		if !errors.Is(err, flag.ErrHelp) {
			fmt.Fprintln(os.Stderr, "mailbox-bench:", err)
		}
		os.Exit(1)
	}
}

// run is main without the process: the test calls it with its own
// arguments and output.
func run(ctx context.Context, args []string, stdout io.Writer, log *slog.Logger) error {
	fs := flag.NewFlagSet("mailbox-bench", flag.ContinueOnError)
	fs.SetOutput(stdout)
	var (
		o        options
		backends = fs.String("backends", "stan,jetstream", "backends to measure, comma-separated: stan, jetstream")
		out      = fs.String("out", "docs", "directory for the charts ("+latenessChart+", "+ratesChart+"); empty writes none")
		keep     = fs.Bool("keep", false, "keep the temporary directory")
	)
	fs.IntVar(&o.Clients, "clients", 32, "concurrent publishers and HTTP clients")
	fs.DurationVar(&o.Window, "duration", 10*time.Second, "how long each rate is measured")
	fs.DurationVar(&o.Warmup, "warmup", 2*time.Second, "load before each rate is measured, not counted (split over the rounds)")
	fs.IntVar(&o.Rounds, "rounds", 5, "interleaved rounds the ingest rates are measured in")
	fs.IntVar(&o.BodyBytes, "body", 256, "body size of each message, in bytes")
	fs.IntVar(&o.Inflight, "inflight", 64, "the connector's max_inflight")
	fs.IntVar(&o.Deliver, "deliver", 50000, "messages preloaded for the delivery rate")
	fs.IntVar(&o.LateRate, "late-rate", 1000, "messages falling due per second while lateness is measured")
	fs.DurationVar(&o.LateFor, "late-for", 20*time.Second, "how long messages fall due while lateness is measured")
	fs.IntVar(&o.Waiting, "waiting", 1_000_000, "messages waiting while connector memory is measured")
	fs.DurationVar(&o.Stable, "stable", 2*time.Second, "how long the connector's peak RSS must hold still before it is read")
	fs.StringVar(&o.Connector, "connector", "", "connector binary to run (default: go build ./connector)")
	fs.StringVar(&o.CPUProfiles, "cpuprofile", "", "directory for a CPU profile per backend and phase")
	fs.StringVar(&o.Mode, "mode", "parts", "what to measure: parts (each part in this process), e2e (a mailbox serve process, black box) or all")
	fs.StringVar(&o.Mailbox, "mailbox", "", "mailbox binary the e2e mode runs (default: go build ./cmd/mailbox)")
	fs.IntVar(&o.Burst, "burst", 20000, "e2e: requeues sent at once by -clients keep-alive clients")
	fs.IntVar(&o.E2EBody, "e2e-body", 1024, "e2e: body size of each requeue, in bytes")
	fs.DurationVar(&o.E2EDelay, "e2e-delay", time.Second, "e2e: X-Delay-Duration of each requeue")
	fs.IntVar(&o.PacedRate, "paced-rate", 1000, "e2e: requeues sent per second after the burst")
	fs.DurationVar(&o.PacedFor, "paced-for", 10*time.Second, "e2e: how long requeues are sent at -paced-rate")
	statuses := fs.String("statuses", "on", "e2e: the mailbox's statuses setting: on, off, or both (each backend run with on, then off)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected arguments: %q", fs.Args())
	}
	o.Backends = strings.Split(*backends, ",")
	switch *statuses {
	case "on":
		o.Statuses = []bool{true}
	case "off":
		o.Statuses = []bool{false}
	case "both":
		o.Statuses = []bool{true, false}
	}
	if err := o.validate(); err != nil {
		return err
	}

	dir, err := os.MkdirTemp("", "mailbox-bench-")
	if err != nil {
		return err
	}
	if *keep {
		log.Info("keeping the temporary directory", "dir", dir)
	} else {
		defer os.RemoveAll(dir)
	}
	o.Dir = dir
	log.Info("mailbox-bench", "machine", machine(), "dir", dir)

	var (
		results []*result
		e2e     []*e2eResult
	)
	if o.e2e() && o.Mailbox == "" {
		// Built before anything is timed, as the connector is.
		if o.Mailbox, err = build(ctx, dir, "mailbox", "github.com/openfaas/mailbox/cmd/mailbox", log); err != nil {
			return err
		}
	}
	if o.parts() {
		results, err = runAll(ctx, o, log)
	}
	if o.e2e() && ctx.Err() == nil {
		var e2eErr error
		e2e, e2eErr = runE2E(ctx, o, log)
		err = errors.Join(err, e2eErr)
	}
	fmt.Fprintf(stdout, "\nmachine: %s\n", machine())
	writeTables(stdout, results)
	writeE2ETables(stdout, e2e)
	if *out != "" && len(results) > 0 {
		if werr := writeCharts(*out, results); werr != nil {
			err = errors.Join(err, werr)
		} else {
			fmt.Fprintf(stdout, "\ncharts: %s, %s\n", filepath.Join(*out, latenessChart), filepath.Join(*out, ratesChart))
		}
	}
	for _, r := range results {
		err = errors.Join(append([]error{err}, r.Errs...)...)
	}
	for _, r := range e2e {
		err = errors.Join(append([]error{err}, r.Errs...)...)
	}
	return err
}

// validate names the flag of every bad value.
func (o options) validate() error {
	var errs []error
	for _, b := range o.Backends {
		if b != "stan" && b != "jetstream" {
			errs = append(errs, fmt.Errorf("-backends: %q is not stan or jetstream", b))
		}
	}
	positive := []struct {
		flag string
		v    int64
	}{
		{"-clients", int64(o.Clients)}, {"-duration", int64(o.Window)}, {"-rounds", int64(o.Rounds)}, {"-body", int64(o.BodyBytes)},
		{"-inflight", int64(o.Inflight)}, {"-deliver", int64(o.Deliver)}, {"-late-rate", int64(o.LateRate)},
		{"-late-for", int64(o.LateFor)}, {"-waiting", int64(o.Waiting)},
		{"-burst", int64(o.Burst)}, {"-e2e-body", int64(o.E2EBody)}, {"-e2e-delay", int64(o.E2EDelay)},
		{"-paced-rate", int64(o.PacedRate)}, {"-paced-for", int64(o.PacedFor)},
	}
	for _, p := range positive {
		if p.v <= 0 {
			errs = append(errs, fmt.Errorf("%s: must be greater than zero", p.flag))
		}
	}
	if len(o.Statuses) == 0 {
		errs = append(errs, errors.New("-statuses: want on, off or both"))
	}
	if o.Mode != "parts" && o.Mode != "e2e" && o.Mode != "all" {
		errs = append(errs, fmt.Errorf("-mode: %q is not parts, e2e or all", o.Mode))
	}
	if int64(float64(o.PacedRate)*o.PacedFor.Seconds()) < 1 {
		errs = append(errs, errors.New("-paced-rate, -paced-for: no requeue would be sent"))
	}
	if o.Warmup < 0 || o.Stable < 0 {
		errs = append(errs, errors.New("-warmup, -stable: must not be negative"))
	}
	if int64(float64(o.LateRate)*o.LateFor.Seconds()) < 1 {
		errs = append(errs, errors.New("-late-rate, -late-for: no message would fall due"))
	}
	return errors.Join(errs...)
}
