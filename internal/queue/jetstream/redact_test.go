package jetstream_test

import (
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/openfaas/mailbox/internal/jsserver/jsservertest"
	"github.com/openfaas/mailbox/internal/logtest"
	"github.com/openfaas/mailbox/internal/poll"
	"github.com/openfaas/mailbox/internal/queue"
	"github.com/openfaas/mailbox/internal/queue/jetstream"
)

// nats_url may carry a user and password: the reconnect log shows where
// the mailbox connected, never them.
func TestLogsRedactTheURL(t *testing.T) {
	t.Parallel()
	srv := jsservertest.Start(t)
	logs := &logtest.Buffer{}
	q, err := jetstream.Open(jetstream.Options{Options: queue.Options{
		URL:    strings.Replace(srv.URL(), "nats://", "nats://alice:s3cret@", 1),
		Logger: slog.New(slog.NewTextHandler(logs, nil)),
	}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = q.Close() })
	poll.Until(t, 10*time.Second, "connected", q.Connected)
	srv.Restart(t)
	poll.Until(t, 20*time.Second, "reconnected", func() bool { return strings.Contains(logs.String(), "reconnected to NATS") })
	if got := logs.String(); strings.Contains(got, "s3cret") || strings.Contains(got, "alice") || !strings.Contains(got, "[redacted]@") {
		t.Errorf("the logs show the URL's credentials, or no URL:\n%s", got)
	}
}
