// Command provider serves the OpenFaaS provider API for the e2e bed,
// running each deployed function as a local process (package provider).
// It is a process of its own, as faasd-provider is, because
// faas-provider's bootstrap can serve only once per process.
//
//	provider -port 8081 -image ghcr.io/x/fn:latest=/path/to/binary [-image ...] -state-dir DIR
//
// Functions' output goes to stdout, each line prefixed with the
// function's name; the gateway serves it at /system/logs.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/openfaas/mailbox/test/e2e/provider"
)

// images collects -image name=path flags.
type images map[string]string

func (m images) String() string { return fmt.Sprint(map[string]string(m)) }
func (m images) Set(v string) error {
	name, path, ok := strings.Cut(v, "=")
	if !ok || name == "" || path == "" {
		return errors.New("want image=path")
	}
	m[name] = path
	return nil
}

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	if err := run(ctx, os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "provider:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("provider", flag.ContinueOnError)
	port := fs.Int("port", 8081, "TCP port of the provider API (all interfaces)")
	stateDir := fs.String("state-dir", "", "functions' working and secrets directories (default: a temporary one)")
	imgs := images{}
	fs.Var(imgs, "image", "image=path: run path for deployments of image (repeat)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	logger := slog.New(slog.NewTextHandler(os.Stderr, nil))
	p, err := provider.New(provider.Options{
		Port:     *port,
		Images:   imgs,
		StateDir: *stateDir,
		Logs:     os.Stdout,
		Logger:   logger,
	})
	if err != nil {
		return err
	}
	serveErr := p.Serve(ctx)
	closeCtx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	return errors.Join(serveErr, p.Close(closeCtx))
}
