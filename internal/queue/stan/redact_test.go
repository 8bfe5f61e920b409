package stan_test

import (
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/openfaas/mailbox/internal/logtest"
	"github.com/openfaas/mailbox/internal/poll"
	"github.com/openfaas/mailbox/internal/queue"
	"github.com/openfaas/mailbox/internal/queue/stan"
	"github.com/openfaas/mailbox/internal/stanserver/stanservertest"
)

// nats_url may carry a user and password: the logs show where the mailbox
// connects, never them.
func TestLogsRedactTheURL(t *testing.T) {
	t.Parallel()
	srv := stanservertest.Start(t)
	for _, c := range []struct {
		url, line string
	}{
		{strings.Replace(srv.URL(), "nats://", "nats://alice:s3cret@", 1), "connected to NATS Streaming"},
		{"nats://alice:s3cret@127.0.0.1:1", "cannot connect to NATS Streaming"},
	} {
		logs := &logtest.Buffer{}
		q, err := stan.Open(stan.Options{Options: queue.Options{URL: c.url, Logger: slog.New(slog.NewTextHandler(logs, nil))}})
		if err != nil {
			t.Fatal(err)
		}
		poll.Until(t, 10*time.Second, c.line, func() bool { return strings.Contains(logs.String(), c.line) })
		_ = q.Close()
		if got := logs.String(); strings.Contains(got, "s3cret") || strings.Contains(got, "alice") || !strings.Contains(got, "[redacted]@") {
			t.Errorf("the logs show the URL's credentials, or no URL:\n%s", got)
		}
	}
}
