package stan_test

import (
	"net/url"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nuid"
	stango "github.com/nats-io/stan.go"

	"github.com/openfaas/mailbox/internal/envelope"
	"github.com/openfaas/mailbox/internal/queue"
	"github.com/openfaas/mailbox/internal/queue/queuetest"
	"github.com/openfaas/mailbox/internal/queue/stan"
	"github.com/openfaas/mailbox/internal/stanserver"
)

func TestConformance(t *testing.T) {
	queuetest.Exercise(t, func(t *testing.T) queuetest.Server { return startServer(t) })
}

// server is an embedded NATS Streaming server on a file store.
type server struct {
	mu   sync.Mutex
	dir  string
	port int
	srv  *stanserver.Server
}

func startServer(t *testing.T) *server {
	t.Helper()
	s := &server{dir: t.TempDir(), port: -1}
	s.start(t)
	t.Cleanup(func() { s.Stop(t) })
	return s
}

func (s *server) start(t *testing.T) {
	t.Helper()
	srv, err := stanserver.Start(stanserver.Options{Dir: s.dir, Port: s.port})
	if err != nil {
		t.Fatal(err)
	}
	u, err := url.Parse(srv.URL())
	if err != nil {
		t.Fatal(err)
	}
	s.port, _ = strconv.Atoi(u.Port())
	s.mu.Lock()
	s.srv = srv
	s.mu.Unlock()
}

func (s *server) url() string { return "nats://127.0.0.1:" + strconv.Itoa(s.port) }

func (s *server) Open(t *testing.T, o queuetest.Options) queue.Queue {
	q, err := stan.Open(stan.Options{
		URL:            s.url(),
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

func (s *server) Restart(t *testing.T) {
	s.Stop(t)
	s.start(t)
}

func (s *server) Stop(t *testing.T) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.srv != nil {
		s.srv.Shutdown()
		s.srv = nil
	}
}

// DeadLetters reads the dead-letter channel from the start until it has
// been quiet for a moment.
func (s *server) DeadLetters(t *testing.T) []*envelope.Envelope {
	t.Helper()
	sc, err := stango.Connect("faas-cluster", "reader-"+nuid.Next(), stango.NatsURL(s.url()))
	if err != nil {
		t.Fatal(err)
	}
	defer sc.Close()
	var (
		mu   sync.Mutex
		got  []*envelope.Envelope
		last = time.Now()
	)
	sub, err := sc.Subscribe("mailbox.deadletter", func(m *stango.Msg) {
		e, err := envelope.Decode(m.Data)
		if err != nil {
			t.Errorf("dead letter %d: %v", m.Sequence, err)
			return
		}
		mu.Lock()
		got, last = append(got, e), time.Now()
		mu.Unlock()
	}, stango.DeliverAllAvailable())
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Close()
	for {
		time.Sleep(50 * time.Millisecond)
		mu.Lock()
		quiet := time.Since(last) > 300*time.Millisecond
		mu.Unlock()
		if quiet {
			break
		}
	}
	mu.Lock()
	defer mu.Unlock()
	return got
}
