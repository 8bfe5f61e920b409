package jetstream_test

import (
	"context"
	"testing"

	"github.com/nats-io/nats.go"
	natsjs "github.com/nats-io/nats.go/jetstream"

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
	q, err := jetstream.Open(jetstream.Options{Options: o.Common(s.URL()), DuplicateWindow: o.DuplicateWindow})
	if err != nil {
		t.Fatal(err)
	}
	return q
}

func (s server) Deduplicates() bool { return true }

func (s server) DeletesDeadLetters() bool { return true }

func (s server) DeadLetters(t *testing.T) []*envelope.Envelope {
	return jsservertest.DeadLetters(t, s.URL(), "mailbox-deadletter")
}

func (s server) PublishRaw(t *testing.T, data []byte) {
	js := jsClient(t, s.URL())
	// The stream exists once a client of the suite has connected.
	if _, err := js.Publish(context.Background(), "mailbox.due", data); err != nil {
		t.Fatal(err)
	}
}

// jsClient is a JetStream client of the server at url, closed when the
// test ends.
func jsClient(t testing.TB, url string) natsjs.JetStream {
	t.Helper()
	nc, err := nats.Connect(url)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	js, err := natsjs.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	return js
}
