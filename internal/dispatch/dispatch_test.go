package dispatch

import (
	"math"
	"net/http"
	"reflect"
	"testing"
	"time"

	"github.com/openfaas/mailbox/internal/delivery"
	"github.com/openfaas/mailbox/internal/envelope"
)

// TestCallbackWaitBounded: whatever a stored envelope's holds say (it may
// be forged), the wait is between a second and 45 seconds and never
// panics; a negative holds once shifted by a negative count.
func TestCallbackWaitBounded(t *testing.T) {
	t.Parallel()
	for _, holds := range []int{math.MinInt, -1, 0, 1, 5, 6, 64, math.MaxInt} {
		if w := callbackWait(holds); w < time.Second || w > 45*time.Second {
			t.Errorf("callbackWait(%d) = %s, want 1s to 45s", holds, w)
		}
	}
}

// TestHeaderDropsStoredMailboxHeaders: an envelope stored before the API
// dropped them, or put on NATS by hand, may hold headers the mailbox sets
// itself. A delivery carries the mailbox's values only (its signature
// covers them), and no hop-by-hop header; a routed dead letter keeps the
// X-Dead-Letter-* the mailbox gave it.
func TestHeaderDropsStoredMailboxHeaders(t *testing.T) {
	t.Parallel()
	stored := http.Header{
		"Content-Type":          {"text/plain"},
		"X-Mailbox-Outcome":     {"delivered"},
		"x-function-status":     {"200"},
		"X-Function-Name":       {"payments"},
		"X-Mailbox-Attempts":    {"1"},
		"X-Mailbox-Function":    {"payments"},
		"X-Mailbox-Timestamp":   {"1"},
		"X-Dead-Letter-Reason":  {"rejected"},
		"X-Dead-Letter-From":    {"payments"},
		"X-Retries":             {"99"},
		"Connection":            {"X-Hop"},
		"X-Hop":                 {"1"},
		"Transfer-Encoding":     {"chunked"},
		"X-Mailbox-Message-Id":  {"other"},
		"X-Dead-Letter-Retries": {"7"},
	}
	p := delivery.Policy{MaxRetries: 3, Delay: 2 * time.Second}
	e := &envelope.Envelope{ID: "m1", Function: "fn", Retries: 1, Header: stored}
	want := http.Header{"Content-Type": {"text/plain"}, "X-Retries": {"1"}, "X-Max-Retries": {"3"},
		"X-Delay-Duration": {"2"}, "X-Mailbox-Message-Id": {"m1"}}
	if got := Header(e, p); !reflect.DeepEqual(got, want) {
		t.Errorf("Header = %v\nwant %v", got, want)
	}
	e.Kind = envelope.KindDeadLetter
	want.Set("X-Dead-Letter-Reason", "rejected")
	want.Set("X-Dead-Letter-From", "payments")
	want.Set("X-Dead-Letter-Retries", "7")
	if got := Header(e, p); !reflect.DeepEqual(got, want) {
		t.Errorf("routed dead letter: Header = %v\nwant %v", got, want)
	}
	if len(stored) != 15 {
		t.Errorf("Header changed the stored header: %v", stored)
	}
}
