package main

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nuid"
	stango "github.com/nats-io/stan.go"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/openfaas/mailbox/internal/envelope"
	"github.com/openfaas/mailbox/internal/service"
)

// quiet discards the service's logs.
var quiet = slog.New(slog.DiscardHandler)

// requeueDelay is far enough ahead that nothing requeued while ingest is
// measured falls due during the run.
const requeueDelay = "3600"

// function is the sink function every message is for.
const function = "sink"

// storedSize is the size of the envelope the API stores for one requeue
// of the benchmark's body: the raw publishes write messages this big.
func storedSize(bodyBytes int) (int, error) {
	now := time.Now().UTC()
	data, err := envelope.Encode(&envelope.Envelope{
		ID:         strings.Repeat("f", 32), // 16 random bytes in hex, as the API makes
		Function:   function,
		Header:     http.Header{"Content-Type": {"application/octet-stream"}, "User-Agent": {"Go-http-client/1.1"}},
		Body:       make([]byte, bodyBytes),
		MaxRetries: 10,
		Delay:      time.Hour,
		AcceptedAt: now,
		DueAt:      now.Add(time.Hour),
	})
	return len(data), err
}

// rawPublish measures durable publishes straight to the server, each
// waiting for the server's acknowledgement, from o.Clients goroutines on
// one connection: the ceiling for requeues.
func rawPublish(ctx context.Context, b *broker, o options) (load, error) {
	size, err := storedSize(o.BodyBytes)
	if err != nil {
		return load{}, err
	}
	data := make([]byte, size)
	switch b.backend {
	case "stan":
		sc, err := stango.Connect("faas-cluster", "bench-"+nuid.Next(), stango.NatsURL(b.url))
		if err != nil {
			return load{}, err
		}
		defer sc.Close()
		return hammer(ctx, o.Clients, o.Warmup, o.Window, func(context.Context) error {
			return sc.Publish("scratch", data)
		})
	default:
		nc, err := nats.Connect(b.url)
		if err != nil {
			return load{}, err
		}
		defer nc.Close()
		js, err := jetstream.New(nc)
		if err != nil {
			return load{}, err
		}
		if _, err := js.CreateStream(ctx, jetstream.StreamConfig{
			Name:     "scratch",
			Subjects: []string{"scratch"},
			Storage:  jetstream.FileStorage,
		}); err != nil {
			return load{}, err
		}
		return hammer(ctx, o.Clients, o.Warmup, o.Window, func(ctx context.Context) error {
			_, err := js.Publish(ctx, "scratch", data)
			return err
		})
	}
}

// requeueRate measures requeues accepted (202) per second by the API
// served over HTTP on 127.0.0.1, from o.Clients keep-alive clients.
func requeueRate(ctx context.Context, b *broker, o options) (load, error) {
	cfg, err := b.config("http://127.0.0.1:1", o.Inflight)
	if err != nil {
		return load{}, err
	}
	reg := prometheus.NewRegistry()
	q, err := service.OpenQueue(cfg, reg, quiet)
	if err != nil {
		return load{}, err
	}
	defer q.Close()
	if err := waitFor(ctx, 15*time.Second, "queue connected", q.Connected); err != nil {
		return load{}, err
	}
	h, err := service.API(cfg, q, reg, quiet)
	if err != nil {
		return load{}, err
	}
	addr, stop, err := serve(h)
	if err != nil {
		return load{}, err
	}
	defer stop()
	header := http.Header{
		"Content-Type":     {"application/octet-stream"},
		"X-Delay-Duration": {requeueDelay},
	}
	client := newClient(o.Clients)
	defer client.CloseIdleConnections()
	return hammer(ctx, o.Clients, o.Warmup, o.Window,
		poster(client, "http://"+addr+"/deadletter/"+function, make([]byte, o.BodyBytes), header, http.StatusAccepted))
}

// httpCeiling measures what HTTP alone allows: the same clients and
// requests against a handler that reads the body and answers 202.
func httpCeiling(ctx context.Context, o options) (load, error) {
	addr, stop, err := serve(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		w.WriteHeader(http.StatusAccepted)
	}))
	if err != nil {
		return load{}, err
	}
	defer stop()
	header := http.Header{
		"Content-Type":     {"application/octet-stream"},
		"X-Delay-Duration": {requeueDelay},
	}
	client := newClient(o.Clients)
	defer client.CloseIdleConnections()
	return hammer(ctx, o.Clients, o.Warmup, o.Window,
		poster(client, "http://"+addr+"/deadletter/"+function, make([]byte, o.BodyBytes), header, http.StatusAccepted))
}

// serve serves h on a free port of 127.0.0.1 until stop.
func serve(h http.Handler) (addr string, stop func(), err error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", nil, err
	}
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 10 * time.Second}
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ln) }()
	return ln.Addr().String(), func() {
		_ = srv.Close()
		if err := <-done; err != nil && !errors.Is(err, http.ErrServerClosed) {
			slog.Warn("serve", "error", err)
		}
	}, nil
}
