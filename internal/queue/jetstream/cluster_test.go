package jetstream_test

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	natsjs "github.com/nats-io/nats.go/jetstream"

	"github.com/openfaas/mailbox/internal/envelope"
	"github.com/openfaas/mailbox/internal/jsserver/jsservertest"
	"github.com/openfaas/mailbox/internal/logtest"
	"github.com/openfaas/mailbox/internal/poll"
	"github.com/openfaas/mailbox/internal/queue"
	"github.com/openfaas/mailbox/internal/queue/jetstream"
)

// With streams at three replicas, stopping any one server of three loses
// no accepted message, and delivery goes on.
func TestClusterSurvivesLosingAnyOneServer(t *testing.T) {
	t.Parallel()
	c := jsservertest.StartCluster(t, 3)
	open := func() *jetstream.Queue {
		q, err := jetstream.Open(jetstream.Options{
			Options: queue.Options{
				URL:            c.URL(),
				HandlerTimeout: 2 * time.Second,
				PublishTimeout: 2 * time.Second,
				Logger:         slog.New(slog.DiscardHandler),
			},
			Replicas: 3,
		})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = q.Close() })
		poll.Until(t, 30*time.Second, "streams created on the cluster", q.Connected)
		return q
	}
	producer, consumer := open(), open()

	var (
		mu        sync.Mutex
		delivered = map[string]bool{}
	)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() {
		_ = consumer.Consume(ctx, func(_ context.Context, e *envelope.Envelope) error {
			mu.Lock()
			delivered[e.ID] = true
			mu.Unlock()
			return nil
		})
	}()

	var accepted []string
	// accept stores a message, retrying while the cluster elects leaders;
	// only a stored message counts as accepted.
	accept := func(id string, delay time.Duration) {
		e := &envelope.Envelope{ID: id, Function: "fn", Header: http.Header{}, Body: []byte(id), Policy: envelope.Policy{MaxRetries: new(1)}, DueAt: time.Now().Add(delay)}
		poll.Until(t, 30*time.Second, "message "+id+" accepted", func() bool {
			return producer.Schedule(context.Background(), e) == nil
		})
		accepted = append(accepted, id)
	}
	all := func() bool {
		mu.Lock()
		defer mu.Unlock()
		for _, id := range accepted {
			if !delivered[id] {
				return false
			}
		}
		return true
	}

	for down := range 3 {
		// Waiting messages stored before the server stops: some due
		// while it is down, some after it is back.
		for i := range 10 {
			accept(fmt.Sprintf("before-%d-%d", down, i), time.Duration(i%5)*time.Second)
		}
		c.Stop(down)
		for i := range 10 {
			accept(fmt.Sprintf("during-%d-%d", down, i), time.Duration(i%3)*time.Second)
		}
		poll.Until(t, 60*time.Second, fmt.Sprintf("every message delivered with server %d down", down), all)
		c.Start(down)
		// One server at a time, as an operator rolls a cluster: the next
		// stops only once the restarted one has caught up.
		poll.Until(t, 60*time.Second, fmt.Sprintf("server %d caught up", down), func() bool { return current(t, c.URL()) })
	}
	if len(accepted) != 60 {
		t.Fatalf("accepted %d messages, want 60", len(accepted))
	}
}

// current reports whether the stream and the consumer have a leader and
// every other replica is online and caught up.
func current(t *testing.T, url string) bool {
	nc, err := nats.Connect(url)
	if err != nil {
		return false
	}
	defer nc.Close()
	js, err := natsjs.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	st, err := js.Stream(ctx, "mailbox")
	if err != nil {
		return false
	}
	si, err := st.Info(ctx)
	if err != nil || !caughtUp(si.Cluster) {
		return false
	}
	c, err := st.Consumer(ctx, "connector")
	if err != nil {
		return false
	}
	ci, err := c.Info(ctx)
	return err == nil && caughtUp(ci.Cluster)
}

func caughtUp(c *natsjs.ClusterInfo) bool {
	if c == nil || c.Leader == "" || len(c.Replicas) != 2 {
		return false
	}
	for _, r := range c.Replicas {
		if !r.Current || r.Offline {
			return false
		}
	}
	return true
}

// A fresh three-server cluster is ready for the mailbox soon after its
// servers elect their meta leader: the streams are created, and the
// consumer is defined, without a request timing out first.
func TestFreshClusterReadySoon(t *testing.T) {
	t.Parallel()
	c := jsservertest.StartCluster(t, 3)
	started := time.Now()
	var logs logtest.Buffer
	q, err := jetstream.Open(jetstream.Options{
		Options: queue.Options{
			URL:    c.URL(),
			Logger: slog.New(slog.NewTextHandler(io.MultiWriter(t.Output(), &logs), nil)),
		},
		Replicas: 3,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = q.Close() })
	poll.Until(t, 60*time.Second, "streams created on the cluster", q.Connected)
	streams := time.Since(started)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = q.Consume(ctx, func(context.Context, *envelope.Envelope) error { return nil })
	}()
	t.Cleanup(func() {
		cancel()
		<-done
	})
	poll.Until(t, 60*time.Second, "consumer defined", func() bool { return consumerInfoOrNil(c.URL()) != nil })
	t.Logf("streams created %v after the servers started, consumer defined %v after", streams.Round(time.Millisecond), time.Since(started).Round(time.Millisecond))
	// Before the servers elected their meta leader the first stream
	// creation went unanswered and was retried only after its timeout.
	if l := logs.String(); strings.Contains(l, "cannot set up JetStream streams") || strings.Contains(l, "cannot consume") {
		t.Errorf("setting up on the fresh cluster failed first; logs:\n%s", l)
	}
}

// A cluster too small for the streams' replicas is not taken for one
// still forming for ever: once the grace is over, the warning names the
// setting to change.
func TestClusterTooSmallNamesTheSetting(t *testing.T) {
	t.Parallel()
	c := jsservertest.StartCluster(t, 2)
	logs := &logtest.Buffer{}
	q, err := jetstream.Open(jetstream.Options{
		Options: queue.Options{
			URL:    c.URL(),
			Logger: slog.New(slog.NewTextHandler(io.MultiWriter(t.Output(), logs), nil)),
		},
		Replicas: 3,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = q.Close() })
	poll.Until(t, 60*time.Second, "a warning naming jetstream_replicas", func() bool {
		return strings.Contains(logs.String(), "need 3 JetStream servers up in the cluster (setting jetstream_replicas)")
	})
	if q.Connected() {
		t.Error("ready on a cluster too small for its streams")
	}
}
