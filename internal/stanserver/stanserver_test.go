package stanserver_test

import (
	"os"
	"path/filepath"
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

// A record cut short at the end of a store file, as a SIGKILL or a full
// disk leaves it, does not keep the server from starting, again and again:
// nats-streaming-server alone refuses to start ("unexpected EOF"), and its
// remedy refuses to run twice in a row. Every message stored before is
// still there.
func TestStartsAfterTornRecord(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	start := func() *stanserver.Server {
		t.Helper()
		s, err := stanserver.Start(stanserver.Options{Dir: dir})
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	s := start()
	sc, err := stango.Connect(s.ClusterID(), "t-"+nuid.Next(), stango.NatsURL(s.URL()))
	if err != nil {
		t.Fatal(err)
	}
	if err := sc.Publish("mb.ready", []byte("kept")); err != nil {
		t.Fatal(err)
	}
	sub, err := sc.Subscribe("mb.ready", func(*stango.Msg) {}, stango.DurableName("d"))
	if err != nil {
		t.Fatal(err)
	}
	_ = sub.Close()
	sc.Close()
	s.Shutdown()

	for round := range 3 {
		// A record header announcing 7 bytes, followed by 2.
		f, err := os.OpenFile(filepath.Join(dir, "mb.ready", "subs.dat"), os.O_APPEND|os.O_WRONLY, 0)
		if err != nil {
			t.Fatal(err)
		}
		_, err = f.Write([]byte{7, 0, 0, 4, 0x85, 6, 6, 0x4c, 8, 0xde})
		f.Close()
		if err != nil {
			t.Fatal(err)
		}
		s = start()
		sc, err := stango.Connect(s.ClusterID(), "t-"+nuid.Next(), stango.NatsURL(s.URL()))
		if err != nil {
			t.Fatal(err)
		}
		got := make(chan string, 1)
		sub, err := sc.Subscribe("mb.ready", func(m *stango.Msg) { got <- string(m.Data) }, stango.DeliverAllAvailable())
		if err != nil {
			t.Fatal(err)
		}
		select {
		case m := <-got:
			if m != "kept" {
				t.Fatalf("round %d: read %q", round, m)
			}
		case <-time.After(10 * time.Second):
			t.Fatalf("round %d: the message stored before is gone", round)
		}
		_ = sub.Close()
		sc.Close()
		s.Shutdown()
	}
}
