// Package stanservertest runs an embedded NATS Streaming server for tests,
// on a file store in the test's temporary directory, and can restart it on
// the same address and data as after a crash.
package stanservertest

import (
	"sync"
	"testing"
	"time"

	"github.com/openfaas/mailbox/internal/servertest"

	"github.com/nats-io/nuid"
	stango "github.com/nats-io/stan.go"

	"github.com/openfaas/mailbox/internal/envelope"
	"github.com/openfaas/mailbox/internal/queue"
	"github.com/openfaas/mailbox/internal/queue/stan"
	"github.com/openfaas/mailbox/internal/stanserver"
)

// Server is an embedded server owned by one test; it keeps its address and
// data across restarts.
type Server struct{ *servertest.Server }

// Start runs a server that stops when the test ends.
func Start(t testing.TB) *Server {
	t.Helper()
	return StartWith(t, stanserver.Options{})
}

// StartIn is Start storing in dir, which the test provides (a small
// file system, to be filled).
func StartIn(t testing.TB, dir string) *Server {
	t.Helper()
	return startIn(t, dir, stanserver.Options{})
}

// StartWith runs a server with o (its Dir and Port are the test's) that
// stops when the test ends.
func StartWith(t testing.TB, o stanserver.Options) *Server {
	t.Helper()
	return startIn(t, t.TempDir(), o)
}

func startIn(t testing.TB, dir string, o stanserver.Options) *Server {
	t.Helper()
	return &Server{servertest.StartIn(t, dir, func(dir string, port int) (string, func(), error) {
		o.Dir, o.Port = dir, port
		srv, err := stanserver.Start(o)
		if err != nil {
			return "", nil, err
		}
		return srv.URL(), srv.Shutdown, nil
	})}
}

// DeadLetters reads the dead letters of the dead-letter channel of the
// NATS Streaming server at natsURL (cluster faas-cluster), removed or not,
// skipping removals and markers, from the start until it has been quiet for a moment.
func DeadLetters(t testing.TB, natsURL, prefix string) []*envelope.Envelope {
	t.Helper()
	sc, err := stango.Connect("faas-cluster", "reader-"+nuid.Next(), stango.NatsURL(natsURL))
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
		if r, err := queue.DecodeRecord(m.Sequence, time.Unix(0, m.Timestamp), m.Data); err == nil && r.Data == nil {
			return
		}
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
