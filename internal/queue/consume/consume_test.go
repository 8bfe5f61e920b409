package consume

import (
	"bytes"
	"context"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/openfaas/mailbox/internal/envelope"
)

// message is a broker message that records what was done with it.
type message struct {
	data     []byte
	acked    bool
	released bool
}

func (m *message) Data() []byte { return m.data }
func (m *message) Ack() error   { m.acked = true; return nil }
func (m *message) Release()     { m.released = true }

// deliverer returns a Deliverer whose dead letters and logs the test sees.
func deliverer(t *testing.T) (*Deliverer, *[]*envelope.Envelope, *bytes.Buffer) {
	t.Helper()
	var (
		mu   sync.Mutex
		dead []*envelope.Envelope
		logs bytes.Buffer
	)
	pool := NewPool()
	t.Cleanup(func() { pool.Stop(0) })
	d := NewDeliverer(Deliverer{
		Pool: pool,
		DeadLetter: func(_ context.Context, e *envelope.Envelope) error {
			mu.Lock()
			defer mu.Unlock()
			c := *e
			dead = append(dead, &c)
			return nil
		},
		Log: slog.New(slog.NewTextHandler(&logs, nil)),
	}, 1)
	return d, &dead, &logs
}

// TestMalformedLogsTheDecodeError: the log line of a malformed message
// says why it could not be decoded, not error=<nil>.
func TestMalformedLogsTheDecodeError(t *testing.T) {
	t.Parallel()
	d, dead, logs := deliverer(t)
	m := &message{data: []byte("not an envelope")}
	if _, ok := d.Decode(m); ok {
		t.Fatal("garbage decoded")
	}
	if !m.acked || len(*dead) != 1 {
		t.Fatalf("acked %v, %d dead letters; want acknowledged once stored as one dead letter", m.acked, len(*dead))
	}
	line := logs.String()
	if !strings.Contains(line, "malformed message stored as a dead letter") || !strings.Contains(line, "bad format") || strings.Contains(line, "error=<nil>") {
		t.Fatalf("log %q does not carry the decode error", line)
	}
	if (*dead)[0].LastError == "" || !strings.Contains((*dead)[0].LastError, "bad format") {
		t.Fatalf("dead letter's last error %q, want the decode error", (*dead)[0].LastError)
	}
}

// TestMalformedKeepsItsIDOnRedelivery: the broker delivers the same bytes
// again when the acknowledgement was lost; the dead letter they make has
// the same id each time, so a backend that de-duplicates on it stores
// one, and every index shows one.
func TestMalformedKeepsItsIDOnRedelivery(t *testing.T) {
	t.Parallel()
	d, dead, _ := deliverer(t)
	garbage := []byte("\x01not an envelope")
	d.Decode(&message{data: garbage})
	d.Decode(&message{data: append([]byte(nil), garbage...)})
	d.Decode(&message{data: []byte("other garbage")})
	if len(*dead) != 3 {
		t.Fatalf("%d dead letters stored, want 3", len(*dead))
	}
	a, b, other := (*dead)[0].ID, (*dead)[1].ID, (*dead)[2].ID
	if a == "" || a != b {
		t.Fatalf("redelivered bytes got ids %q and %q, want one", a, b)
	}
	if other == a {
		t.Fatalf("different bytes got the same id %q", a)
	}
	for _, id := range []string{a, other} {
		if len(id) > 64 || strings.Trim(id, "abcdefghijklmnopqrstuvwxyz0123456789-") != "" {
			t.Errorf("id %q is not a message id (1 to 64 of a-z, 0-9, '-')", id)
		}
	}
}

// TestHandlerPanicBecomesDeadLetter: a panic while handling one message
// (a bug, or a forged envelope nothing foresaw) must not end the process
// and every delivery in it. The message is kept as a malformed dead
// letter under its stable id and acknowledged, so it does not come back.
func TestHandlerPanicBecomesDeadLetter(t *testing.T) {
	t.Parallel()
	d, dead, logs := deliverer(t)
	data, err := envelope.Encode(&envelope.Envelope{ID: "boom", Function: "fn"})
	if err != nil {
		t.Fatal(err)
	}
	m := &message{data: data}
	d.Deliver(m, time.Now().Add(time.Minute), func(context.Context, *envelope.Envelope) error { panic("kaboom") })
	if !m.acked || m.released || len(*dead) != 1 {
		t.Fatalf("acked %v, released %v, %d dead letters; want acknowledged once stored as one dead letter", m.acked, m.released, len(*dead))
	}
	got := (*dead)[0]
	if got.ID != MalformedID(data) || got.Reason != envelope.ReasonMalformed || !strings.Contains(got.LastError, "kaboom") || !bytes.Equal(got.Body, data) {
		t.Errorf("dead letter %+v: want id %s, reason malformed, the panic in its error and the bytes as body", got, MalformedID(data))
	}
	if !strings.Contains(logs.String(), "kaboom") {
		t.Errorf("log %q does not name the panic", logs.String())
	}
	// The delivery slot was given back.
	ok := false
	d.Deliver(&message{data: data}, time.Now().Add(time.Second), func(context.Context, *envelope.Envelope) error { ok = true; return nil })
	if !ok {
		t.Error("the next message was not handled: the panicking one kept its slot")
	}
}
