package stan_test

import (
	"bytes"
	"context"
	"log/slog"
	"testing"
	"time"

	"github.com/nats-io/nuid"
	stango "github.com/nats-io/stan.go"
	"github.com/openfaas/mailbox/internal/envelope"
	"github.com/openfaas/mailbox/internal/poll"
	"github.com/openfaas/mailbox/internal/queue"
	"github.com/openfaas/mailbox/internal/queue/queuetest"
	"github.com/openfaas/mailbox/internal/queue/stan"
	"github.com/openfaas/mailbox/internal/stanserver/stanservertest"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

func TestConformance(t *testing.T) {
	queuetest.Exercise(t, func(t *testing.T) queuetest.Server {
		return server{stanservertest.Start(t)}
	})
}

// server adapts the embedded test server to the conformance suite.
type server struct{ *stanservertest.Server }

func (s server) Open(t *testing.T, o queuetest.Options) queue.Queue {
	q, err := stan.Open(stan.Options{
		URL:            s.URL(),
		MaxInflight:    o.MaxInflight,
		HandlerTimeout: o.HandlerTimeout,
		TierWindow:     o.Window,
		PublishTimeout: time.Second,
	})
	if err != nil {
		t.Fatal(err)
	}
	return q
}

func (s server) Deduplicates() bool { return false }

func (s server) DeadLetters(t *testing.T) []*envelope.Envelope {
	return s.Server.DeadLetters(t, "mailbox")
}

func TestMalformedMessageBecomesDeadLetter(t *testing.T) {
	t.Parallel()
	s := stanservertest.Start(t)
	reg := prometheus.NewRegistry()
	q, err := stan.Open(stan.Options{URL: s.URL(), Registerer: reg, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	defer q.Close()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() { _ = q.Consume(ctx, func(context.Context, *envelope.Envelope) error { return nil }) }()

	sc, err := stango.Connect("faas-cluster", "raw-"+nuid.Next(), stango.NatsURL(s.URL()))
	if err != nil {
		t.Fatal(err)
	}
	defer sc.Close()
	garbage := []byte("not an envelope")
	if err := sc.Publish("mailbox.ready", garbage); err != nil {
		t.Fatal(err)
	}
	var dead []*envelope.Envelope
	poll.Until(t, 15*time.Second, "malformed message buried", func() bool {
		dead = s.DeadLetters(t, "mailbox")
		return len(dead) == 1
	})
	if d := dead[0]; d.Reason != envelope.ReasonMalformed || !bytes.Equal(d.Body, garbage) || d.LastError == "" {
		t.Fatalf("dead letter %+v", d)
	}
	if got := testutil.ToFloat64(mustDeadLetters(t, reg).WithLabelValues(envelope.ReasonMalformed)); got != 1 {
		t.Fatalf("mailbox_dead_letters_total{reason=malformed} = %v, want 1", got)
	}
}

func mustDeadLetters(t *testing.T, reg prometheus.Registerer) *prometheus.CounterVec {
	t.Helper()
	c, err := queue.DeadLetterCounter(reg)
	if err != nil {
		t.Fatal(err)
	}
	return c
}
