// Package function is the mailbox's OpenFaaS function: the requeue API.
// The template's main calls New once at start-up and serves the handler
// behind of-watchdog; the gateway strips /function/mailbox, so a request
// to /function/mailbox/deadletter/<fn> arrives as /deadletter/<fn>.
package function

import (
	"context"
	"io"
	"net/http"

	"github.com/openfaas/mailbox/internal/config"
	"github.com/openfaas/mailbox/internal/deadletter"
	"github.com/openfaas/mailbox/internal/service"
)

// New builds the requeue API from the function's environment (see the
// README's configuration table). It does not wait for NATS: until the
// queue connects, requeues answer 503 and /healthz fails. close releases
// the NATS connection.
func New(environ []string, logs io.Writer) (h http.Handler, close func() error, err error) {
	cfg, err := config.Load(config.Environ(environ), nil)
	if err != nil {
		return nil, nil, err
	}
	logger := cfg.Logger(logs)
	reg, err := service.Registry()
	if err != nil {
		return nil, nil, err
	}
	q, err := service.OpenQueue(cfg, reg, logger)
	if err != nil {
		return nil, nil, err
	}
	// The management API and the web page serve the dead letters from a
	// store this process runs; without a token they are off.
	var store *deadletter.Store
	if service.Management(cfg) {
		if store, err = service.DeadLetters(cfg, q, reg, logger); err != nil {
			_ = q.Close()
			return nil, nil, err
		}
	}
	h, err = service.API(cfg, q, reg, store, logger)
	if err != nil {
		_ = q.Close()
		return nil, nil, err
	}
	if store == nil {
		return h, q.Close, nil
	}
	ctx, cancel := context.WithCancel(context.Background())
	stopped := make(chan error, 1)
	go func() { stopped <- store.Run(ctx) }()
	return h, func() error {
		cancel()
		<-stopped
		return q.Close()
	}, nil
}
