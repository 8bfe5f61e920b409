// Package function is the mailbox's OpenFaaS function: the requeue API.
// The template's main calls New once at start-up and serves the handler
// behind of-watchdog; the gateway strips /function/mailbox, so a request
// to /function/mailbox/deadletter/<fn> arrives as /deadletter/<fn>.
package function

import (
	"io"
	"net/http"

	"github.com/openfaas/mailbox/internal/config"
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
	h, err = service.API(cfg, q, reg, logger)
	if err != nil {
		_ = q.Close()
		return nil, nil, err
	}
	return h, q.Close, nil
}
