package stan

import (
	"context"
	"log/slog"
	"testing"
	"time"

	"github.com/openfaas/mailbox/internal/envelope"
	"github.com/openfaas/mailbox/internal/poll"
	"github.com/openfaas/mailbox/internal/queue"
	"github.com/openfaas/mailbox/internal/servertest"
	"github.com/openfaas/mailbox/internal/stanserver"
	"github.com/openfaas/mailbox/internal/status"
)

// Right after a NATS reconnect, before the status index has heard of it,
// its old subscription receives a status newer than the one the broken
// link lost. The next subscription still starts before the lost one: it
// starts after the last status received before the link went down, not
// after the last one received. Holding the generation's lock keeps the
// reconnect from being reported, so the old subscription keeps reading
// on the new link for as long as the test needs. Fault of a mark taken
// when the reconnect is reported: the next subscription starts after the
// newer status, and the lost one is never read (the old subscription,
// which the server would send it again after its ack wait, is closed).
func TestStatusIndexMarkIgnoresStatusesAfterReconnect(t *testing.T) {
	t.Parallel()
	srv, err := stanserver.Start(stanserver.Options{Dir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(srv.Shutdown)
	proxy := servertest.StartProxy(t, srv.URL())
	open := func(url, clientID string, publishTimeout time.Duration) *Queue {
		q, err := Open(Options{Options: queue.Options{URL: url, PublishTimeout: publishTimeout, Logger: slog.New(slog.NewTextHandler(t.Output(), nil))}, ClientID: clientID})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = q.Close() })
		poll.Until(t, 10*time.Second, "connected", q.Connected)
		return q
	}
	// A minute: a lost marker ack does not end the index's subscription.
	index := open(proxy.URL(), "api", time.Minute)
	producer := open(srv.URL(), "producer", 5*time.Second)
	envelopeOf := func(id string) *envelope.Envelope {
		return &envelope.Envelope{ID: id, Function: "fn", AcceptedAt: time.Now().UTC(), DueAt: time.Now().Add(time.Hour)}
	}
	probe, later := envelopeOf("probe"), envelopeOf("later")
	record := func(e *envelope.Envelope, st string) {
		t.Helper()
		if err := producer.RecordStatus(context.Background(), status.Of(e, st, time.Now())); err != nil {
			t.Fatal(err)
		}
	}
	state := func(id string) string {
		s, ok := index.index.Get(id, time.Now())
		if !ok {
			return "none"
		}
		return s.State
	}
	record(probe, status.Waiting)
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	if _, err := index.Status(ctx, probe.ID); err != nil {
		t.Fatal(err)
	}

	g := index.current()
	g.mu.Lock()
	locked := true
	unlock := func() {
		if locked {
			locked = false
			g.mu.Unlock()
		}
	}
	defer unlock()
	proxy.Drop()
	record(probe, status.InFlight)
	poll.Until(t, 15*time.Second, "the server sends the index the probe in flight, lost", func() bool {
		return proxy.Dropped([]byte(`"status":"` + status.InFlight + `"`))
	})
	reconnects := g.nc.Stats().Reconnects
	proxy.Break()
	poll.Until(t, 15*time.Second, "the index reconnects", func() bool {
		return g.nc.Stats().Reconnects > reconnects && g.nc.IsConnected()
	})
	// The server has the subscriptions again once it answers a ping.
	if err := g.nc.Flush(); err != nil {
		t.Fatal(err)
	}
	record(later, status.Waiting)
	poll.Until(t, 15*time.Second, "the old subscription receives a later status on the new link", func() bool { return state(later.ID) == status.Waiting })
	if got := state(probe.ID); got != status.Waiting {
		t.Fatalf("probe before the reconnect is reported: %s, want %s (the lost status)", got, status.Waiting)
	}
	unlock()
	poll.Until(t, 10*time.Second, "the index has the lost status", func() bool { return state(probe.ID) == status.InFlight })
}
