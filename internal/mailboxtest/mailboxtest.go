// Package mailboxtest runs a whole mailbox inside a test, for the tests of
// functions and clients that use it: the requeue API and the connector on
// an embedded JetStream server, delivering through a stand-in for the
// OpenFaaS gateway (internal/gatewaytest) on which the test's functions
// and the mailbox itself, as the function "mailbox", are deployed, as in
// OpenFaaS.
package mailboxtest

import (
	"context"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/openfaas/mailbox/internal/config"
	"github.com/openfaas/mailbox/internal/deadletter"
	"github.com/openfaas/mailbox/internal/envelope"
	"github.com/openfaas/mailbox/internal/gatewaytest"
	"github.com/openfaas/mailbox/internal/jsserver/jsservertest"
	"github.com/openfaas/mailbox/internal/poll"
	"github.com/openfaas/mailbox/internal/service"
)

// Options configures Start.
type Options struct {
	// Functions are deployed on the gateway, without annotations: it
	// lists them to the connector and serves each at /function/<name>,
	// with that prefix removed as the OpenFaaS gateway does. A name that
	// is not here answers 404, and a message for it is held back, then
	// dead-lettered, as for an undeployed function.
	Functions map[string]http.Handler
	// Env holds settings (the README's configuration table) for both the
	// API and the connector, over the test defaults: backend jetstream,
	// upstream_timeout 5s.
	Env map[string]string
	// Token, if set, is the mailbox's API token (auth_token_secret): the
	// requeue API and the management API then need it.
	Token string
}

// Mailbox is one mailbox owned by a test; everything stops when the test
// ends.
type Mailbox struct {
	// URL is the requeue API, without /deadletter: what the requeue
	// package calls mailboxURL when talking to the mailbox directly.
	URL string
	// GatewayURL is the stand-in gateway; GatewayURL + "/function/mailbox"
	// reaches the API as functions reach it in OpenFaaS.
	GatewayURL string
	// Gateway is the stand-in gateway, to deploy or remove functions
	// while the test runs.
	Gateway *gatewaytest.Gateway

	nats *jsservertest.Server
	cfg  config.Config
}

// Start runs an embedded JetStream server, the requeue API and a
// connector, and returns once the API is healthy.
func Start(t testing.TB, o Options) *Mailbox {
	t.Helper()
	m := &Mailbox{nats: jsservertest.Start(t)}

	gw, err := gatewaytest.Start(gatewaytest.Options{})
	if err != nil {
		t.Fatalf("mailboxtest: %v", err)
	}
	t.Cleanup(gw.Stop)
	for name, h := range o.Functions {
		gw.Deploy(name, h, nil)
	}
	m.Gateway, m.GatewayURL = gw, gw.URL()

	env := map[string]string{
		"backend":          "jetstream",
		"nats_url":         m.nats.URL(),
		"gateway_url":      gw.URL(),
		"upstream_timeout": "5s",
	}
	if o.Token != "" {
		secrets := t.TempDir()
		if err := os.WriteFile(filepath.Join(secrets, "mailbox-token"), []byte(o.Token), 0o600); err != nil {
			t.Fatalf("mailboxtest: %v", err)
		}
		env["secret_mount_path"], env["auth_token_secret"] = secrets, "mailbox-token"
	}
	for k, v := range o.Env {
		env[k] = v
	}
	cfg, err := config.Load(func(k string) (string, bool) { v, ok := env[k]; return v, ok }, nil)
	if err != nil {
		t.Fatalf("mailboxtest: %v", err)
	}
	m.cfg = cfg
	quiet := slog.New(slog.DiscardHandler)

	apiReg := prometheus.NewRegistry()
	q, err := service.OpenQueue(cfg, apiReg, quiet)
	if err != nil {
		t.Fatalf("mailboxtest: %v", err)
	}
	t.Cleanup(func() { _ = q.Close() })
	var store *deadletter.Store
	if service.Management(cfg) {
		if store, err = service.DeadLetters(cfg, q, apiReg, quiet); err != nil {
			t.Fatalf("mailboxtest: %v", err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		stopped := make(chan error, 1)
		go func() { stopped <- store.Run(ctx) }()
		t.Cleanup(func() { cancel(); <-stopped })
	}
	h, err := service.API(cfg, q, apiReg, store, quiet)
	if err != nil {
		t.Fatalf("mailboxtest: %v", err)
	}
	gw.Deploy("mailbox", h, nil)
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	m.URL = srv.URL

	connReg := prometheus.NewRegistry()
	cq, err := service.OpenQueue(cfg, connReg, quiet)
	if err != nil {
		t.Fatalf("mailboxtest: %v", err)
	}
	d, err := service.Dispatcher(cfg, cq, connReg, quiet)
	if err != nil {
		_ = cq.Close()
		t.Fatalf("mailboxtest: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- d.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("mailboxtest: connector: %v", err)
		}
		_ = cq.Close()
	})

	poll.Until(t, 15*time.Second, "mailbox API healthy", func() bool {
		res, err := http.Get(m.URL + "/healthz")
		if err != nil {
			return false
		}
		res.Body.Close()
		return res.StatusCode == http.StatusOK
	})
	return m
}

// DeadLetters returns every dead letter stored so far.
func (m *Mailbox) DeadLetters(t testing.TB) []*envelope.Envelope {
	t.Helper()
	return jsservertest.DeadLetters(t, m.nats.URL(), m.cfg.JetStreamStream+"-deadletter")
}
