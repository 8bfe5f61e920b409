package main

import (
	"context"
	"errors"
	"fmt"
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
		Policy:     envelope.Policy{MaxRetries: new(10), Delay: new(time.Hour)},
		AcceptedAt: now,
		DueAt:      now.Add(time.Hour),
	})
	return len(data), err
}

// ingestRig holds what the ingest rates are measured against, set up
// once so the measurements can be interleaved in rounds.
type ingestRig struct {
	// raw publishes one envelope-sized message durably, straight to the
	// server, and waits for the server's acknowledgement: the ceiling.
	raw func(ctx context.Context) error
	// schedule is the backend's own write path, without HTTP: a diagnostic
	// telling how much of the gap between raw and requeue is the backend.
	schedule func(ctx context.Context) error
	// requeue POSTs to the API served over HTTP on 127.0.0.1 and wants 202.
	requeue func(ctx context.Context) error
	// ceiling POSTs the same request to a handler that reads the body and
	// answers 202: what HTTP alone allows.
	ceiling func(ctx context.Context) error
	closers []func()
}

func (r *ingestRig) close() {
	for i := len(r.closers) - 1; i >= 0; i-- {
		r.closers[i]()
	}
}

// newIngestRig connects to b as a raw client and as the API does, and
// serves the API and the trivial handler. Each operation may be called
// from o.Clients goroutines at once.
func newIngestRig(ctx context.Context, b *broker, o options) (rig *ingestRig, err error) {
	rig = &ingestRig{}
	defer func() {
		if err != nil {
			rig.close()
		}
	}()
	if rig.raw, err = rawPublisher(ctx, b, o, &rig.closers); err != nil {
		return nil, fmt.Errorf("raw publisher: %w", err)
	}

	cfg, err := b.config("http://127.0.0.1:1", o.Inflight)
	if err != nil {
		return nil, err
	}
	q, err := openQueue(ctx, cfg)
	if err != nil {
		return nil, err
	}
	rig.closers = append(rig.closers, func() { q.Close() })
	body := make([]byte, o.BodyBytes)
	stored := http.Header{"Content-Type": {"application/octet-stream"}, "User-Agent": {"Go-http-client/1.1"}}
	rig.schedule = func(ctx context.Context) error {
		now := time.Now().UTC()
		return q.Schedule(ctx, &envelope.Envelope{
			ID: nuid.Next(), Function: function, Header: stored, Body: body,
			Policy: envelope.Policy{MaxRetries: new(10), Delay: new(time.Hour)}, AcceptedAt: now, DueAt: now.Add(time.Hour),
		})
	}

	// The API has its own connection, as in mailbox-fn.
	reg := prometheus.NewRegistry()
	apiQueue, err := service.OpenQueue(cfg, reg, quiet)
	if err != nil {
		return nil, err
	}
	rig.closers = append(rig.closers, func() { apiQueue.Close() })
	if err := waitFor(ctx, 15*time.Second, "API queue connected", apiQueue.Connected); err != nil {
		return nil, err
	}
	h, err := service.API(cfg, apiQueue, reg, nil, quiet)
	if err != nil {
		return nil, err
	}
	apiAddr, stop, err := serve(h)
	if err != nil {
		return nil, err
	}
	rig.closers = append(rig.closers, stop)
	ceilingAddr, stop, err := serve(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		w.WriteHeader(http.StatusAccepted)
	}))
	if err != nil {
		return nil, err
	}
	rig.closers = append(rig.closers, stop)

	header := http.Header{
		"Content-Type":     {"application/octet-stream"},
		"X-Delay-Duration": {requeueDelay},
	}
	apiClient, ceilingClient := newClient(o.Clients), newClient(o.Clients)
	rig.closers = append(rig.closers, apiClient.CloseIdleConnections, ceilingClient.CloseIdleConnections)
	rig.requeue = poster(apiClient, "http://"+apiAddr+"/deadletter/"+function, body, header, http.StatusAccepted)
	rig.ceiling = poster(ceilingClient, "http://"+ceilingAddr+"/deadletter/"+function, body, header, http.StatusAccepted)
	return rig, nil
}

// rawPublisher returns a durable publish of an envelope-sized message to
// a scratch channel (stan) or file-storage stream (jetstream), on one
// connection shared by every caller.
func rawPublisher(ctx context.Context, b *broker, o options, closers *[]func()) (func(ctx context.Context) error, error) {
	size, err := storedSize(o.BodyBytes)
	if err != nil {
		return nil, err
	}
	data := make([]byte, size)
	switch b.backend {
	case "stan":
		sc, err := stango.Connect("faas-cluster", "bench-"+nuid.Next(), stango.NatsURL(b.url))
		if err != nil {
			return nil, err
		}
		*closers = append(*closers, func() { _ = sc.Close() })
		return func(context.Context) error { return sc.Publish("scratch", data) }, nil
	default:
		nc, err := nats.Connect(b.url)
		if err != nil {
			return nil, err
		}
		*closers = append(*closers, nc.Close)
		js, err := jetstream.New(nc)
		if err != nil {
			return nil, err
		}
		if _, err := js.CreateStream(ctx, jetstream.StreamConfig{
			Name:     "scratch",
			Subjects: []string{"scratch"},
			Storage:  jetstream.FileStorage,
		}); err != nil {
			return nil, err
		}
		return func(ctx context.Context) error {
			_, err := js.Publish(ctx, "scratch", data)
			return err
		}, nil
	}
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
