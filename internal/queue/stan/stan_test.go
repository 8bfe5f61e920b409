package stan_test

import (
	"testing"

	"github.com/nats-io/nuid"
	stango "github.com/nats-io/stan.go"
	"github.com/openfaas/mailbox/internal/envelope"
	"github.com/openfaas/mailbox/internal/queue"
	"github.com/openfaas/mailbox/internal/queue/queuetest"
	"github.com/openfaas/mailbox/internal/queue/stan"
	"github.com/openfaas/mailbox/internal/stanserver/stanservertest"
)

func TestConformance(t *testing.T) {
	queuetest.Exercise(t, func(t *testing.T) queuetest.Server {
		return server{stanservertest.Start(t)}
	})
}

// server adapts the embedded test server to the conformance suite.
type server struct{ *stanservertest.Server }

func (s server) Open(t *testing.T, o queuetest.Options) queue.Queue {
	q, err := stan.Open(stan.Options{Options: o.Common(s.URL()), TierWindow: o.Window})
	if err != nil {
		t.Fatal(err)
	}
	return q
}

func (s server) Deduplicates() bool { return false }

func (s server) DeletesDeadLetters() bool { return false }

func (s server) DeadLetters(t *testing.T) []*envelope.Envelope {
	return stanservertest.DeadLetters(t, s.URL(), "mailbox")
}

func (s server) PublishRaw(t *testing.T, data []byte) {
	sc, err := stango.Connect("faas-cluster", "raw-"+nuid.Next(), stango.NatsURL(s.URL()))
	if err != nil {
		t.Fatal(err)
	}
	defer sc.Close()
	if err := sc.Publish("mailbox.ready", data); err != nil {
		t.Fatal(err)
	}
}
