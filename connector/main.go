// Command connector delivers the mailbox's waiting messages: it consumes
// them from NATS when due, invokes each function through the OpenFaaS
// gateway, and stores retries and dead letters. Configuration comes from
// the environment (see the README); it serves /healthz and /metrics on
// listen.
package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"

	"github.com/openfaas/mailbox/internal/config"
	"github.com/openfaas/mailbox/internal/service"
)

// connectorDefaults: in a container, probes and Prometheus reach the
// connector from outside, so it listens on every interface. It serves
// only /healthz and /metrics.
var connectorDefaults = map[string]string{"listen": ":8081"}

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	if err := run(ctx, os.Environ(), os.Stderr, nil); err != nil {
		fmt.Fprintln(os.Stderr, "connector:", err)
		os.Exit(1)
	}
}

// run is main without the process: tests call it with their own
// environment and context. ready, if not nil, gets the listen address.
func run(ctx context.Context, environ []string, logs io.Writer, ready func(addr string)) error {
	cfg, err := config.Load(config.Environ(environ), connectorDefaults)
	if err != nil {
		return err
	}
	logger := cfg.Logger(logs)
	service.SetDefaultLogger(logger)

	c, err := service.OpenConnector(cfg, logger)
	if err != nil {
		return err
	}
	defer c.Queue.Close()

	ops, err := service.Ops(cfg, c.Queue, c.Registry)
	if err != nil {
		return err
	}
	return service.Run(ctx, cfg, ops, c, func(addr string) {
		logger.Info("connector started", "listen", addr, "gateway_url", cfg.GatewayURL, "backend", cfg.Backend)
		if ready != nil {
			ready(addr)
		}
	})
}
