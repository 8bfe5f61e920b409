package delivery

import (
	"net/http"
	"testing"
	"time"

	"github.com/openfaas/mailbox/internal/envelope"
)

func TestExponentialWithoutDelayIsImmediate(t *testing.T) {
	p := policy()
	p.Backoff, p.Delay = envelope.BackoffExponential, 0
	if got := NextDelay(p, 3, 0, 0.5); got != 0 {
		t.Fatalf("NextDelay = %s, want 0: the window Delay×2^n is 0", got)
	}
}

func TestNoSuchFunctionRetryIsBounded(t *testing.T) {
	for delay, want := range map[time.Duration]time.Duration{
		0:                time.Second,
		2 * time.Second:  2 * time.Second,
		30 * time.Second: 5 * time.Second,
	} {
		p := policy()
		p.Delay = delay
		e := fresh(1)
		e.SlotAt = accepted
		d := Decide(e, p, Result{NoSuchFunction: true}, now, 0)
		if d.Action != Retry || d.Next.DueAt != now.Add(want) || !d.Next.SlotAt.IsZero() {
			t.Errorf("Delay %s: %v due %v slot %v, want a retry due after %s with no slot", delay, d.Action, d.Next.DueAt, d.Next.SlotAt, want)
		}
	}
}

// Dead letters made without a call report the calls made before, and the
// last call's status.
func TestCallbackAttemptsWithoutCall(t *testing.T) {
	p := policy()
	p.CallbackURL, p.TTL = callbackURL, 30*time.Second
	e := fresh(2)
	e.LastStatus, e.LastResponse = http.StatusServiceUnavailable, "busy"
	d, ok := Expired(e, p, now)
	if !ok || d.Callback == nil {
		t.Fatalf("Expired = %+v, %v; want a dead letter with a callback", d, ok)
	}
	if h := d.Callback.Header; h.Get(envelope.HeaderAttempts) != "2" || h.Get(envelope.HeaderFunctionStatus) != "503" || string(d.Callback.Body) != "busy" {
		t.Errorf("callback headers %v body %q, want 2 attempts, status 503, body busy", h, d.Callback.Body)
	}

	p.TTL = 0
	a := Admit(fresh(5), p, now, 0)
	if a.Callback == nil || a.Callback.Header.Get(envelope.HeaderAttempts) != "5" || a.Callback.Header.Get(envelope.HeaderFunctionStatus) != "" {
		t.Errorf("Admit callback %+v, want 5 attempts and no status", a.Callback)
	}
}
