// Package stanservertest runs an embedded NATS Streaming server for tests,
// on a file store in the test's temporary directory, and can restart it on
// the same address and data as after a crash.
package stanservertest

import (
	"net/url"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nuid"
	stango "github.com/nats-io/stan.go"

	"github.com/openfaas/mailbox/internal/envelope"
	"github.com/openfaas/mailbox/internal/queue/stan"
	"github.com/openfaas/mailbox/internal/stanserver"
)

// Server is an embedded server owned by one test.
type Server struct {
	mu   sync.Mutex
	dir  string
	port int
	srv  *stanserver.Server
}

// Start runs a server that stops when the test ends.
func Start(t testing.TB) *Server {
	t.Helper()
	s := &Server{dir: t.TempDir(), port: -1}
	s.start(t)
	t.Cleanup(s.Stop)
	return s
}

func (s *Server) start(t testing.TB) {
	t.Helper()
	srv, err := stanserver.Start(stanserver.Options{Dir: s.dir, Port: s.port})
	if err != nil {
		t.Fatal(err)
	}
	u, err := url.Parse(srv.URL())
	if err != nil {
		t.Fatal(err)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.port, _ = strconv.Atoi(u.Port())
	s.srv = srv
}

// URL is the server's address; it stays the same across restarts.
func (s *Server) URL() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return "nats://127.0.0.1:" + strconv.Itoa(s.port)
}

// Restart stops the server and starts it again with its stored data.
func (s *Server) Restart(t testing.TB) {
	s.Stop()
	s.start(t)
}

// Stop stops the server; it may be called more than once.
func (s *Server) Stop() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.srv != nil {
		s.srv.Shutdown()
		s.srv = nil
	}
}

// DeadLetters reads the dead-letter channel from the start until it has been
// quiet for a moment.
func (s *Server) DeadLetters(t testing.TB, prefix string) []*envelope.Envelope {
	t.Helper()
	sc, err := stango.Connect("faas-cluster", "reader-"+nuid.Next(), stango.NatsURL(s.URL()))
	if err != nil {
		t.Fatal(err)
	}
	defer sc.Close()
	var (
		mu   sync.Mutex
		got  []*envelope.Envelope
		last = time.Now()
	)
	sub, err := sc.Subscribe(stan.DeadLetterChannel(prefix), func(m *stango.Msg) {
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
