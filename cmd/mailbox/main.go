// Command mailbox runs the whole mailbox in one process, and manages the
// dead letters of a running one:
//
//	mailbox serve [flags]
//	mailbox deadletters list|show|replay|purge [flags] [ids]
//
// mailbox serve serves the requeue API and runs the connector, on an embedded NATS server
// with a file store: JetStream by default, NATS Streaming with
// --backend stan (or on an external server given --nats-url). It suits single-node OpenFaaS (faasd) and local use. Every
// flag falls back to the environment variable of the same name in
// lower_snake_case (--gateway-url: gateway_url). mailbox deadletters (or
// dl) is the client of the management API, in internal/cli.
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
	"syscall"
	"time"

	"github.com/openfaas/mailbox/internal/cli"
	"github.com/openfaas/mailbox/internal/config"
	"github.com/openfaas/mailbox/internal/jsserver"
	"github.com/openfaas/mailbox/internal/queue/stan"
	"github.com/openfaas/mailbox/internal/service"
	"github.com/openfaas/mailbox/internal/stanserver"
)

// standaloneDefaults differ from the in-cluster defaults: everything runs
// on this machine, an empty nats_url embeds the server, and the embedded
// server is JetStream, which measured about six times the ingest of NATS
// Streaming with its per-write fsync and a lower delivery lateness
// (docs/benchmarks.md). NATS Streaming stays a choice: it survives a power
// loss, where JetStream's default two-minute sync interval does not.
var standaloneDefaults = map[string]string{
	"backend":     "jetstream",
	"gateway_url": "http://127.0.0.1:8080",
	"nats_url":    "",
}

// outageTolerance is how long the embedded server keeps messages beyond
// the longest delay: how long deliveries may stop without losing any.
const outageTolerance = 14 * 24 * time.Hour

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	err := command(ctx, os.Args[1:], os.Environ(), os.Stdin, os.Stdout, os.Stderr)
	if code := exitCode(os.Args[1:], err); code != 0 {
		fmt.Fprintln(os.Stderr, "mailbox:", err)
		os.Exit(code)
	}
}

// command runs the command args name: deadletters (or dl) in
// internal/cli, serve and anything else in run.
func command(ctx context.Context, args, environ []string, stdin io.Reader, stdout, stderr io.Writer) error {
	if isDeadLetters(args) {
		return cli.DeadLetters(ctx, args[1:], environ, stdin, stdout, stderr)
	}
	return run(ctx, args, environ, stderr, nil)
}

func isDeadLetters(args []string) bool {
	return len(args) > 0 && (args[0] == "deadletters" || args[0] == "dl")
}

// exitCode is 0 for success or -h, 2 for a bad command line or any error
// of serve, 1 for a dead-letter command that failed.
func exitCode(args []string, err error) int {
	switch {
	case err == nil, errors.Is(err, flag.ErrHelp):
		return 0
	case !isDeadLetters(args):
		return 2
	}
	if _, ok := errors.AsType[*cli.UsageError](err); ok {
		return 2
	}
	return 1
}

const usage = `usage: mailbox serve [flags]
       mailbox deadletters list|show|replay|purge [flags] [ids]

mailbox serve serves the requeue API (POST /deadletter/<function>) and
delivers messages through the OpenFaaS gateway, on an embedded NATS server
(JetStream, or NATS Streaming with --backend stan) unless --nats-url is
given.

mailbox deadletters (or dl) lists, shows, replays and purges the dead
letters of a running mailbox through its management API: see
"mailbox deadletters -h".

Flags of serve (each falls back to the environment variable named after it):
`

// run is main without the process: tests call it with their own
// arguments, environment and signal context. ready, if not nil, gets the
// API's address once it listens.
func run(ctx context.Context, args, environ []string, stderr io.Writer, ready func(addr string)) error {
	if len(args) == 0 || args[0] != "serve" {
		fmt.Fprint(stderr, usage)
		return errors.New("unknown or missing command: want serve or deadletters")
	}
	fs := flag.NewFlagSet("mailbox serve", flag.ContinueOnError)
	fs.SetOutput(stderr)
	lookup := config.Flags(fs, config.Environ(environ))
	fs.Usage = func() {
		fmt.Fprint(stderr, usage)
		fs.PrintDefaults()
	}
	if err := fs.Parse(args[1:]); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected arguments: %v", fs.Args())
	}
	cfg, err := config.Load(lookup, standaloneDefaults)
	if err != nil {
		return err
	}
	return serve(ctx, cfg, cfg.Logger(stderr), ready)
}

// storeDir is where the embedded server of cfg's backend stores.
func storeDir(cfg config.Config) string {
	if cfg.Backend == "jetstream" {
		return filepath.Join(cfg.DataDir, "jetstream")
	}
	return filepath.Join(cfg.DataDir, "nats")
}

// embed starts the server the backend needs, storing in data_dir.
func embed(cfg config.Config) (url string, shutdown func(), err error) {
	switch cfg.Backend {
	case "jetstream":
		srv, err := jsserver.Start(jsserver.Options{Dir: storeDir(cfg)})
		if err != nil {
			return "", nil, err
		}
		return srv.URL(), srv.Shutdown, nil
	default:
		srv, err := stanserver.Start(stanserver.Options{
			Dir:       storeDir(cfg),
			ClusterID: cfg.NATSClusterID,
			Retention: cfg.MaxDelay + outageTolerance,
			// Dead letters are kept until they are dealt with, or a day
			// past dead_letter_max_age when it is set.
			DeadLetterChannel:   stan.DeadLetterChannel(cfg.ChannelPrefix),
			DeadLetterRetention: cfg.DeadLetterMaxAge,
			// A status is asked for until status_retention after the
			// message's last step, at most max_delay after it was recorded.
			StatusChannel: stan.StatusChannel(cfg.ChannelPrefix),
			StatusMaxAge:  cfg.MaxDelay + cfg.StatusRetention,
		})
		if err != nil {
			return "", nil, err
		}
		return srv.URL(), srv.Shutdown, nil
	}
}

func serve(ctx context.Context, cfg config.Config, logger *slog.Logger, ready func(string)) error {
	service.SetDefaultLogger(logger)
	if cfg.NATSURL == "" {
		url, shutdown, err := embed(cfg)
		if err != nil {
			return fmt.Errorf("data_dir: %w", err)
		}
		defer shutdown()
		cfg.NATSURL = url
		// The requeue API keeps data_dir_reserve_bytes free there.
		cfg.StoreDir = storeDir(cfg)
		logger.Info("embedded NATS server started", "backend", cfg.Backend, "url", url, "data_dir", cfg.DataDir)
	}

	c, err := service.OpenConnector(cfg, logger)
	if err != nil {
		return err
	}
	defer c.Queue.Close()
	h, err := service.API(cfg, c.Queue, c.Registry, c.DeadLetters, logger)
	if err != nil {
		return err
	}

	return service.Run(ctx, cfg, h, c, func(addr string) {
		logger.Info("mailbox serving", "listen", addr, "gateway_url", cfg.GatewayURL, "backend", cfg.Backend)
		if ready != nil {
			ready(addr)
		}
	})
}
