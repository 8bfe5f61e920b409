package stan

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/openfaas/mailbox/internal/poll"
	"github.com/openfaas/mailbox/internal/queue"
	"github.com/openfaas/mailbox/internal/stanserver"
)

// A connection the loop has just closed (lost after the server stopped
// answering pings) is still the current one for a moment; asking it
// whether it is connected panicked, as stan.go's NatsConn returns nil
// once closed, and ended the process (found by a stalled-broker probe:
// the dead-letter store's sweep called LastDeadLetterSeq then). It
// answers not connected, and the calls that check it ErrUnavailable.
func TestClosedGenerationIsNotConnected(t *testing.T) {
	t.Parallel()
	srv, err := stanserver.Start(stanserver.Options{Dir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(srv.Shutdown)
	q, err := Open(Options{Options: queue.Options{URL: srv.URL()}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = q.Close() })
	poll.Until(t, 10*time.Second, "connected", q.Connected)
	g := q.current()
	// Closed behind the loop's back, as the loop does on a lost
	// connection just after another goroutine read q.cur.
	_ = g.sc.Close()
	if q.Connected() {
		t.Fatal("Connected on a closed connection")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := q.LastDeadLetterSeq(ctx); !errors.Is(err, queue.ErrUnavailable) {
		t.Fatalf("LastDeadLetterSeq on a closed connection: %v, want ErrUnavailable", err)
	}
	if err := q.FollowDeadLetters(ctx, 0, func(queue.Record) {}); !errors.Is(err, queue.ErrUnavailable) {
		t.Fatalf("FollowDeadLetters on a closed connection: %v, want ErrUnavailable", err)
	}
}
