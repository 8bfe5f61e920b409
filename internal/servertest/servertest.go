// Package servertest keeps an embedded server for a test on one address
// and one data directory across restarts, as after a crash. The backends'
// test packages (stanservertest, jsservertest) supply how to start theirs.
package servertest

import (
	"net/url"
	"strconv"
	"sync"
	"testing"
)

// StartFunc starts a server storing in dir and listening on port (-1 for
// any free port); it returns the client URL and how to shut it down.
type StartFunc func(dir string, port int) (clientURL string, shutdown func(), err error)

// Server is an embedded server owned by one test.
type Server struct {
	start StartFunc

	mu       sync.Mutex
	dir      string
	port     int
	shutdown func() // nil while stopped
}

// Start runs a server that stops when the test ends.
func Start(t testing.TB, start StartFunc) *Server {
	t.Helper()
	return StartIn(t, t.TempDir(), start)
}

// StartIn is Start storing in dir, which the test provides (a small
// file system, to be filled).
func StartIn(t testing.TB, dir string, start StartFunc) *Server {
	t.Helper()
	s := &Server{start: start, dir: dir, port: -1}
	s.run(t)
	t.Cleanup(s.Stop)
	return s
}

func (s *Server) run(t testing.TB) {
	t.Helper()
	s.mu.Lock()
	defer s.mu.Unlock()
	clientURL, shutdown, err := s.start(s.dir, s.port)
	if err != nil {
		t.Fatal(err)
	}
	u, err := url.Parse(clientURL)
	if err != nil {
		shutdown()
		t.Fatal(err)
	}
	s.port, _ = strconv.Atoi(u.Port())
	s.shutdown = shutdown
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
	s.run(t)
}

// Stop stops the server; it may be called more than once.
func (s *Server) Stop() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.shutdown != nil {
		s.shutdown()
		s.shutdown = nil
	}
}
