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
// It prints a table per backend with each target, and writes charts into
// -out. Run it from the module (it builds ./connector):
//
//	go run ./cmd/mailbox-bench -out docs
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
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected arguments: %q", fs.Args())
	}
	o.Backends = strings.Split(*backends, ",")
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

	results, err := runAll(ctx, o, log)
	fmt.Fprintf(stdout, "\nmachine: %s\n", machine())
	writeTables(stdout, results)
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
	}
	for _, p := range positive {
		if p.v <= 0 {
			errs = append(errs, fmt.Errorf("%s: must be greater than zero", p.flag))
		}
	}
	if o.Warmup < 0 || o.Stable < 0 {
		errs = append(errs, errors.New("-warmup, -stable: must not be negative"))
	}
	if int64(float64(o.LateRate)*o.LateFor.Seconds()) < 1 {
		errs = append(errs, errors.New("-late-rate, -late-for: no message would fall due"))
	}
	return errors.Join(errs...)
}
