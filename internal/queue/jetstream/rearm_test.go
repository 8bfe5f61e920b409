package jetstream_test

import (
	"bytes"
	"context"
	"errors"
	"sync/atomic"
	"testing"
	"time"

	natsjs "github.com/nats-io/nats.go/jetstream"

	"github.com/openfaas/mailbox/internal/diskspace/diskspacetest"
	"github.com/openfaas/mailbox/internal/envelope"
	"github.com/openfaas/mailbox/internal/jsserver/jsservertest"
	"github.com/openfaas/mailbox/internal/poll"
	"github.com/openfaas/mailbox/internal/queue"
)

// A schedule that falls due while the server's store is at its limit
// (max_file_store, here 75% of a 16 MiB file system, filled by another
// writer's stream): the server fires it, cannot store the message it
// fires, and never fires it again until it restarts (it keeps it marked
// in flight). Before, the message waited until then; test/chaos
// TestChaos/DiskJetStream left 101 of them undelivered. Now the process
// that saw a write refused for want of storage fires it again once space
// is back.
func TestScheduleFiredWhileStoreFullIsFiredAgain(t *testing.T) {
	t.Parallel()
	srv := jsservertest.StartIn(t, diskspacetest.Mount(t, 16<<20))
	q := openQueue(t, srv.URL())
	ctx := context.Background()
	stuck := recoveryMessage("stuck")
	stuck.DueAt = time.Now().Add(2 * time.Second)
	if err := q.Schedule(ctx, stuck); err != nil {
		t.Fatal(err)
	}

	js := jsClient(t, srv.URL())
	if _, err := js.CreateStream(ctx, natsjs.StreamConfig{Name: "filler", Subjects: []string{"filler"}}); err != nil {
		t.Fatal(err)
	}
	block := bytes.Repeat([]byte("x"), 256<<10)
	for i := 0; ; i++ {
		_, err := js.Publish(ctx, "filler", block)
		if apiErr, ok := errors.AsType[*natsjs.APIError](err); ok && apiErr.ErrorCode == 10023 {
			break
		}
		if err != nil || i > 64 {
			t.Fatalf("filler %d: %v, want the store full within 16 MiB", i, err)
		}
	}
	// The schedule fires meanwhile, and is not stored; a requeue is
	// refused.
	poll.Until(t, 10*time.Second, "the schedule's time past", func() bool { return time.Now().After(stuck.DueAt.Add(time.Second)) })
	late := recoveryMessage("refused")
	late.DueAt = time.Now().Add(time.Hour)
	if err := q.Schedule(ctx, late); !errors.Is(err, queue.ErrStorageFull) {
		t.Fatalf("a requeue with the store full: %v, want ErrStorageFull", err)
	}

	if err := js.DeleteStream(ctx, "filler"); err != nil {
		t.Fatal(err)
	}
	var got atomic.Bool
	consumeUntilCleanup(t, q, func(_ context.Context, e *envelope.Envelope) error {
		if e.ID == stuck.ID {
			got.Store(true)
		}
		return nil
	})
	poll.Until(t, 30*time.Second, "the message whose schedule fired while the store was full delivered", got.Load)
}
