package jetstream_test

import (
	"log/slog"
	"testing"
	"time"

	"github.com/openfaas/mailbox/internal/envelope"
	"github.com/openfaas/mailbox/internal/jsserver/jsservertest"
	"github.com/openfaas/mailbox/internal/queue"
	"github.com/openfaas/mailbox/internal/queue/jetstream"
	"github.com/openfaas/mailbox/internal/queue/queuetest"
)

func TestConformance(t *testing.T) {
	queuetest.Exercise(t, func(t *testing.T) queuetest.Server {
		return server{jsservertest.Start(t)}
	})
}

// server adapts the embedded test server to the conformance suite.
type server struct{ *jsservertest.Server }

func (s server) Open(t *testing.T, o queuetest.Options) queue.Queue {
	q, err := jetstream.Open(jetstream.Options{
		URL:            s.URL(),
		MaxInflight:    o.MaxInflight,
		HandlerTimeout: o.HandlerTimeout,
		PublishTimeout: time.Second,
		Logger:         slog.New(slog.DiscardHandler),
	})
	if err != nil {
		t.Fatal(err)
	}
	return q
}

func (s server) Deduplicates() bool { return true }

func (s server) DeadLetters(t *testing.T) []*envelope.Envelope {
	return jsservertest.DeadLetters(t, s.URL(), "mailbox-deadletter")
}
