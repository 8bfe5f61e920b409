package stanserver_test

import (
	"testing"
	"time"

	"github.com/nats-io/nuid"
	stango "github.com/nats-io/stan.go"

	"github.com/openfaas/mailbox/internal/poll"
	"github.com/openfaas/mailbox/internal/stanserver"
)

// Messages expire after Retention, except dead letters: kept with no age
// limit, or a day past their own retention, however short Retention is.
func TestDeadLettersOutliveRetention(t *testing.T) {
	t.Parallel()
	for _, retention := range []time.Duration{0, time.Second} {
		t.Run(retention.String(), func(t *testing.T) {
			t.Parallel()
			deadLettersOutliveRetention(t, retention)
		})
	}
}

func deadLettersOutliveRetention(t *testing.T, deadLetterRetention time.Duration) {
	s, err := stanserver.Start(stanserver.Options{
		Dir: t.TempDir(), Retention: time.Second,
		DeadLetterChannel: "mb.deadletter", DeadLetterRetention: deadLetterRetention,
	})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Shutdown()
	sc, err := stango.Connect(s.ClusterID(), "t-"+nuid.Next(), stango.NatsURL(s.URL()))
	if err != nil {
		t.Fatal(err)
	}
	defer sc.Close()
	for _, ch := range []string{"mb.ready", "mb.deadletter"} {
		if err := sc.Publish(ch, []byte(ch)); err != nil {
			t.Fatal(err)
		}
	}
	stored := func(ch string) bool {
		got := make(chan struct{}, 1)
		sub, err := sc.Subscribe(ch, func(*stango.Msg) { got <- struct{}{} }, stango.DeliverAllAvailable())
		if err != nil {
			t.Fatal(err)
		}
		defer sub.Close()
		select {
		case <-got:
			return true
		case <-time.After(200 * time.Millisecond):
			return false
		}
	}
	poll.Until(t, 15*time.Second, "message past retention expires", func() bool { return !stored("mb.ready") })
	if !stored("mb.deadletter") {
		t.Fatal("dead letter expired with the retention of waiting messages")
	}
}
