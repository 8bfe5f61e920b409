package delivery

import (
	"net/http"
	"testing"
	"time"

	"github.com/openfaas/mailbox/internal/envelope"
)

// A requeue with X-Delay-Duration: 0 and X-Max-Retries: 10000 made 836
// calls in 5 s: no retry may come sooner than MinRetryDelay after the
// failed call, whatever the message's delay, backoff, Retry-After or
// kind. The first delivery (Admit) may still be immediate.
func TestRetryNeverSoonerThanMinimum(t *testing.T) {
	d := defaults()
	d.MinRetryDelay = time.Second
	d.MaxRetriesLimit = 10000
	zero := time.Duration(0)
	for _, tc := range []struct {
		name    string
		kind    string
		backoff string
		r       Result
	}{
		{"fixed 0", envelope.KindMessage, envelope.BackoffFixed, Result{Status: http.StatusInternalServerError}},
		{"exponential 0", envelope.KindMessage, envelope.BackoffExponential, Result{Status: http.StatusBadGateway}},
		{"network error", envelope.KindMessage, envelope.BackoffFixed, Result{Err: errTimeout}},
		{"tiny Retry-After", envelope.KindMessage, envelope.BackoffFixed, Result{Status: http.StatusTooManyRequests, RetryAfter: time.Millisecond}},
		{"routed dead letter", envelope.KindDeadLetter, envelope.BackoffFixed, Result{Status: http.StatusInternalServerError}},
		{"callback", envelope.KindCallback, "", Result{Status: http.StatusInternalServerError}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := fresh(0)
			e.Kind = tc.kind
			e.Policy = envelope.Policy{MaxRetries: new(10000), Delay: &zero, Backoff: tc.backoff}
			if tc.kind == envelope.KindCallback {
				e.Policy = envelope.Policy{CallbackURL: callbackURL}
			}
			p := Resolve(e, envelope.Policy{}, d)
			if p.MaxRetries < 1 {
				t.Fatalf("policy %+v allows no retry", p)
			}
			first := Admit(e, p, now, 0)
			if tc.kind != envelope.KindCallback && (first.Action != Retry || first.Next.DueAt.After(now.Add(p.Delay))) {
				t.Fatalf("Admit = %v due %v, want the first delivery after the message's own delay %s", first.Action, first.Next.DueAt, p.Delay)
			}
			for _, jitter := range []float64{0, 0.001} {
				dec := Decide(e, p, tc.r, now, jitter)
				if dec.Action != Retry {
					t.Fatalf("Decide = %v, want a retry", dec.Action)
				}
				if wait := dec.Next.DueAt.Sub(now); wait < d.MinRetryDelay {
					t.Errorf("jitter %v: retry due %s after the failed call, want at least %s", jitter, wait, d.MinRetryDelay)
				}
			}
		})
	}
}
