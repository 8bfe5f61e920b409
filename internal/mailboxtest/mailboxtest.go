// Package mailboxtest runs a whole mailbox inside a test, for the tests of
// functions and clients that use it: the requeue API and the connector on
// an embedded JetStream server, delivering through a stand-in for the
// OpenFaaS gateway that serves the test's functions at /function/<name>
// and the mailbox itself at /function/mailbox, as a real gateway would.
package mailboxtest

import (
	"context"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/openfaas/mailbox/internal/config"
	"github.com/openfaas/mailbox/internal/envelope"
	"github.com/openfaas/mailbox/internal/jsserver/jsservertest"
	"github.com/openfaas/mailbox/internal/poll"
	"github.com/openfaas/mailbox/internal/service"
)

// Options configures Start.
type Options struct {
	// Functions are served by the gateway at /function/<name>, with that
	// prefix removed as the OpenFaaS gateway does. A name that is not
	// here answers 404, as an undeployed function would.
	Functions map[string]http.Handler
	// Env holds settings (the README's configuration table) for both the
	// API and the connector, over the test defaults: backend jetstream,
	// upstream_timeout 5s.
	Env map[string]string
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

	nats *jsservertest.Server
	cfg  config.Config
}

// Start runs an embedded JetStream server, the requeue API and a
// connector, and returns once the API is healthy.
func Start(t testing.TB, o Options) *Mailbox {
	t.Helper()
	m := &Mailbox{nats: jsservertest.Start(t)}

	api := &handlerSlot{}
	gw := httptest.NewServer(gateway(api, o.Functions))
	t.Cleanup(gw.Close)
	m.GatewayURL = gw.URL

	env := map[string]string{
		"backend":          "jetstream",
		"nats_url":         m.nats.URL(),
		"gateway_url":      gw.URL,
		"upstream_timeout": "5s",
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
	h, err := service.API(cfg, q, apiReg, quiet)
	if err != nil {
		t.Fatalf("mailboxtest: %v", err)
	}
	api.set(h)
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

// gateway routes /function/<name>[/rest] to the named function with the
// prefix removed, and /function/mailbox to the requeue API.
func gateway(api http.Handler, functions map[string]http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		rest, ok := strings.CutPrefix(r.URL.EscapedPath(), "/function/")
		if !ok {
			http.NotFound(w, r)
			return
		}
		name, path, _ := strings.Cut(rest, "/")
		h := functions[name]
		if name == "mailbox" {
			h = api
		}
		if h == nil {
			http.Error(w, "error finding function "+name, http.StatusNotFound)
			return
		}
		u, err := url.Parse("/" + path)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		r2 := r.Clone(r.Context())
		r2.URL.Path, r2.URL.RawPath = u.Path, u.RawPath
		r2.RequestURI = r2.URL.RequestURI()
		h.ServeHTTP(w, r2)
	})
}

// handlerSlot is the API handler, set once it exists: the gateway must
// be listening before the config that names it is loaded.
type handlerSlot struct {
	mu sync.Mutex
	h  http.Handler
}

func (s *handlerSlot) set(h http.Handler) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.h = h
}

func (s *handlerSlot) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	s.mu.Lock()
	h := s.h
	s.mu.Unlock()
	if h == nil {
		http.Error(w, "mailbox not started", http.StatusServiceUnavailable)
		return
	}
	h.ServeHTTP(w, r)
}
