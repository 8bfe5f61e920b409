package jetstream_test

import (
	"context"
	"errors"
	"log/slog"
	"strconv"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	natsjs "github.com/nats-io/nats.go/jetstream"

	"github.com/openfaas/mailbox/internal/envelope"
	"github.com/openfaas/mailbox/internal/jsserver/jsservertest"
	"github.com/openfaas/mailbox/internal/poll"
	"github.com/openfaas/mailbox/internal/queue"
	"github.com/openfaas/mailbox/internal/queue/jetstream"
)

// A removal is stored with removed.<seq> as its de-duplication id, and the
// dead letter it removes is deleted; the stream keeps records 24h past
// the retention, and a removal as long (its TTL), so that it outlives the
// record it removes even when the delete failed. Without a retention,
// neither the removal nor the stream has an age limit.
func TestDeadLetterRemoval(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name      string
		retention time.Duration
		streamAge time.Duration
	}{
		{"retention", time.Hour, 25 * time.Hour},
		{"short retention", time.Second, 24*time.Hour + time.Second},
		{"no retention", 0, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			srv := jsservertest.Start(t)
			q, err := jetstream.Open(jetstream.Options{
				Options:          queue.Options{URL: srv.URL(), PublishTimeout: time.Second, Logger: slog.New(slog.NewTextHandler(t.Output(), nil))},
				DeadLetterMaxAge: tc.retention,
			})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { _ = q.Close() })
			poll.Until(t, 10*time.Second, "streams ready", q.Connected)
			ctx := context.Background()
			e := &envelope.Envelope{ID: "dead", Function: "fn", Reason: envelope.ReasonMaxRetries, AcceptedAt: time.Now(), DueAt: time.Now()}
			if err := q.DeadLetter(ctx, e); err != nil {
				t.Fatal(err)
			}
			seq, err := q.LastDeadLetterSeq(ctx)
			if err != nil || seq == 0 {
				t.Fatalf("LastDeadLetterSeq = %d, %v", seq, err)
			}
			removal := queue.Removal{Seq: seq, Cause: queue.RemovedExpired, By: "test"}
			if err := q.RemoveDeadLetter(ctx, removal); err != nil {
				t.Fatal(err)
			}

			st := deadLetterStream(t, srv.URL())
			info, err := st.Info(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if info.Config.MaxAge != tc.streamAge || !info.Config.AllowMsgTTL {
				t.Fatalf("stream MaxAge %v, AllowMsgTTL %v; want %v, true", info.Config.MaxAge, info.Config.AllowMsgTTL, tc.streamAge)
			}
			if _, err := st.GetMsg(ctx, seq); !errors.Is(err, natsjs.ErrMsgNotFound) {
				t.Fatalf("removed dead letter: %v, want it deleted", err)
			}
			m, err := st.GetLastMsgForSubject(ctx, "mailbox.deadletter")
			if err != nil {
				t.Fatal(err)
			}
			r, err := queue.DecodeRecord(m.Sequence, m.Time, m.Data)
			if err != nil || r.Removal == nil || *r.Removal != removal {
				t.Fatalf("last record %+v, %v; want the removal", r, err)
			}
			if id := m.Header.Get(natsjs.MsgIDHeader); id != "removed."+strconv.FormatUint(seq, 10) {
				t.Fatalf("removal's %s = %q", natsjs.MsgIDHeader, id)
			}
			ttl := m.Header.Get(natsjs.MsgTTLHeader)
			if tc.retention == 0 {
				if ttl != "" {
					t.Fatalf("removal's TTL %q without a retention", ttl)
				}
			} else if d, err := time.ParseDuration(ttl); err != nil || d != tc.streamAge {
				t.Fatalf("removal's TTL %q, want %v", ttl, tc.streamAge)
			}

			// Removed again by another process within the duplicate
			// window: stored once.
			if err := q.RemoveDeadLetter(ctx, queue.Removal{Seq: seq, Cause: queue.RemovedPurged, By: "other"}); err != nil {
				t.Fatal(err)
			}
			if last, err := q.LastDeadLetterSeq(ctx); err != nil || last != m.Sequence {
				t.Fatalf("LastDeadLetterSeq after a repeated removal = %d, %v; want %d", last, err, m.Sequence)
			}
		})
	}
}

func deadLetterStream(t *testing.T, url string) natsjs.Stream {
	t.Helper()
	nc, err := nats.Connect(url)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	js, err := natsjs.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	st, err := js.Stream(context.Background(), "mailbox-deadletter")
	if err != nil {
		t.Fatal(err)
	}
	return st
}

// A dead-letter stream made by an earlier version, without per-message
// TTLs, is updated to allow them.
func TestDeadLetterStreamUpgrade(t *testing.T) {
	t.Parallel()
	srv := jsservertest.Start(t)
	js := jsClient(t, srv.URL())
	ctx := context.Background()
	if _, err := js.CreateStream(ctx, natsjs.StreamConfig{
		Name: "mailbox-deadletter", Subjects: []string{"mailbox.deadletter"}, Storage: natsjs.FileStorage,
		Retention: natsjs.LimitsPolicy, MaxAge: time.Hour, Duplicates: 2 * time.Minute,
	}); err != nil {
		t.Fatal(err)
	}
	q, err := jetstream.Open(jetstream.Options{
		Options:          queue.Options{URL: srv.URL(), Logger: slog.New(slog.NewTextHandler(t.Output(), nil))},
		DeadLetterMaxAge: time.Hour,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = q.Close() })
	poll.Until(t, 10*time.Second, "streams ready", q.Connected)
	info, err := deadLetterStream(t, srv.URL()).Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if !info.Config.AllowMsgTTL || info.Config.MaxAge != 25*time.Hour {
		t.Fatalf("stream AllowMsgTTL %v, MaxAge %v; want true, 25h", info.Config.AllowMsgTTL, info.Config.MaxAge)
	}
}
