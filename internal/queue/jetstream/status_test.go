package jetstream_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	natsjs "github.com/nats-io/nats.go/jetstream"

	"github.com/openfaas/mailbox/internal/jsserver/jsservertest"
	"github.com/openfaas/mailbox/internal/poll"
	"github.com/openfaas/mailbox/internal/queue"
	"github.com/openfaas/mailbox/internal/queue/jetstream"
	"github.com/openfaas/mailbox/internal/status"
)

// One function's flood of statuses (requeues delivered at once) pushes
// out its own oldest statuses, never another function's: the status
// stream keeps at most StatusesPerFunction per function.
func TestStatusFloodPushesOutItsOwn(t *testing.T) {
	t.Parallel()
	srv := jsservertest.Start(t)
	q, err := jetstream.Open(jetstream.Options{Options: queue.Options{URL: srv.URL()}, StatusesPerFunction: 5})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = q.Close() })
	poll.Until(t, 10*time.Second, "connected", q.Connected)
	record := func(function string, n int) {
		for i := range n {
			now := time.Now().UTC()
			s := status.Status{ID: fmt.Sprintf("%s-%d", function, i), Function: function, State: status.Delivered,
				AcceptedAt: now, UpdatedAt: now, LastStatus: 200}
			if err := q.RecordStatus(context.Background(), s); err != nil {
				t.Fatalf("RecordStatus(%s): %v", s.ID, err)
			}
		}
	}
	record("billing", 3)
	record("junk.openfaas-fn", 40)

	for i := range 3 {
		if _, err := q.Status(context.Background(), fmt.Sprintf("billing-%d", i)); err != nil {
			t.Errorf("billing-%d pushed out by junk's flood: %v", i, err)
		}
	}
	for _, i := range []int{0, 34} {
		if _, err := q.Status(context.Background(), fmt.Sprintf("junk.openfaas-fn-%d", i)); !errors.Is(err, queue.ErrNoStatus) {
			t.Errorf("junk's old status %d is still kept (%v), want it pushed out", i, err)
		}
	}
	if _, err := q.Status(context.Background(), "junk.openfaas-fn-39"); err != nil {
		t.Errorf("junk's newest status is gone: %v", err)
	}
	if n := storedStatuses(t, srv.URL(), "junk"); n != 5 {
		t.Errorf("junk holds %d statuses, want 5", n)
	}
}

// storedStatuses counts the statuses the status stream holds for
// functions whose stored name starts with prefix.
func storedStatuses(t *testing.T, url, prefix string) int {
	t.Helper()
	js := jsClient(t, url)
	s, err := js.Stream(context.Background(), "mailbox-status")
	if err != nil {
		t.Fatal(err)
	}
	info, err := s.Info(context.Background(), natsjs.WithSubjectFilter("mailbox.status.>"))
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for subject := range info.State.Subjects {
		if strings.HasPrefix(subject, "mailbox.status."+prefix) {
			n++
		}
	}
	return n
}
