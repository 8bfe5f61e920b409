package delivery

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net/http"
	"reflect"
	"strconv"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/openfaas/mailbox/internal/envelope"
)

var (
	accepted = time.Date(2025, 1, 2, 3, 4, 0, 0, time.UTC)
	due      = accepted.Add(10 * time.Second)
	now      = accepted.Add(time.Minute)
)

const (
	dlFunction  = "dead-letters.openfaas-fn"
	callbackURL = "http://receiver.example/outcome"
)

var errTimeout = errors.New("context deadline exceeded")

// fresh returns a message due for its delivery by the connector, after
// retries attempts.
func fresh(retries int) *envelope.Envelope {
	return &envelope.Envelope{
		ID:         "id-1",
		Function:   "fn.openfaas-fn",
		Header:     http.Header{"X-Call-Id": {"abc"}, "Content-Type": {"application/json"}},
		Body:       []byte("payload"),
		Retries:    retries,
		AcceptedAt: accepted,
		DueAt:      due,
	}
}

// policy is the settled policy of the tests: 3 retries 30 s apart, no
// expiry, no dead-letter function, no callback, a minute's grace.
func policy() Policy {
	return Policy{
		MaxRetries:          3,
		Delay:               30 * time.Second,
		Backoff:             envelope.BackoffFixed,
		MaxDelay:            10 * time.Minute,
		RetryCodes:          DefaultRetryCodes,
		NoSuchFunctionGrace: time.Minute,
	}
}

// attempted is e after an attempt at now with result r, before the retry
// or dead-letter fields are set.
func attempted(e *envelope.Envelope, r Result) envelope.Envelope {
	out := *e
	if out.FirstAttemptAt.IsZero() {
		out.FirstAttemptAt = now
	}
	out.LastAttemptAt = now
	out.LastStatus = r.Status
	out.LastError = ""
	if r.Err != nil {
		out.LastError = r.Err.Error()
	}
	out.LastResponse = string(r.Body)
	if !r.NoSuchFunction {
		out.MissingSince = time.Time{}
	}
	return out
}

func retryAfter(delay time.Duration) func(*envelope.Envelope, Result) *envelope.Envelope {
	return func(e *envelope.Envelope, r Result) *envelope.Envelope {
		out := attempted(e, r)
		out.Retries = e.Retries + 1
		out.DueAt = now.Add(delay)
		out.SlotAt = time.Time{}
		return &out
	}
}

func deadAs(reason string) func(*envelope.Envelope, Result) *envelope.Envelope {
	return func(e *envelope.Envelope, r Result) *envelope.Envelope {
		out := attempted(e, r)
		out.Reason = reason
		out.DeadAt = now
		return &out
	}
}

// graceRetry is e put back while the gateway does not know its function:
// no attempt recorded.
func graceRetry(missingSince time.Time, delay time.Duration) func(*envelope.Envelope, Result) *envelope.Envelope {
	return func(e *envelope.Envelope, _ Result) *envelope.Envelope {
		out := *e
		out.MissingSince = missingSince
		out.DueAt = now.Add(delay)
		out.Holds = e.Holds + 1
		return &out
	}
}

func TestDecide(t *testing.T) {
	t.Parallel()
	type row struct {
		name   string
		e      func(*envelope.Envelope) // changes fresh(0)
		p      func(*Policy)            // changes policy()
		r      Result
		jitter float64
		action Action
		next   func(*envelope.Envelope, Result) *envelope.Envelope
	}
	retries := func(n int) func(*envelope.Envelope) {
		return func(e *envelope.Envelope) { e.Retries = n }
	}
	maxRetries := func(n int) func(*Policy) { return func(p *Policy) { p.MaxRetries = n } }
	ttl := func(d time.Duration) func(*Policy) { return func(p *Policy) { p.TTL = d } }
	missing := func(since time.Time) func(*envelope.Envelope) {
		return func(e *envelope.Envelope) { e.MissingSince = since }
	}
	retry30 := retryAfter(30 * time.Second)

	tests := []row{
		// 2xx
		{name: "200 acks", r: Result{Status: 200, Body: []byte("ok")}, action: Ack},
		{name: "201 acks", r: Result{Status: 201}, action: Ack},
		{name: "202 acks", r: Result{Status: 202}, action: Ack},
		{name: "204 acks", r: Result{Status: 204}, action: Ack},
		{name: "299 acks", r: Result{Status: 299}, action: Ack},
		{name: "2xx on the last allowed attempt acks", e: retries(3), r: Result{Status: 200}, action: Ack},
		{name: "2xx past the limit still acks", e: retries(9), r: Result{Status: 204}, action: Ack},
		{name: "2xx with MaxRetries 0 acks", p: maxRetries(0), r: Result{Status: 200}, action: Ack},
		{name: "2xx after expiry still acks", p: ttl(time.Second), r: Result{Status: 200}, action: Ack},
		{name: "2xx while missing acks", e: missing(now.Add(-time.Hour)), r: Result{Status: 200}, action: Ack},

		// failures worth another attempt
		{name: "network error retries", r: Result{Err: errTimeout}, action: Retry, next: retry30},
		{name: "error with a 2xx status is a failure", r: Result{Status: 200, Err: errTimeout}, action: Retry, next: retry30},
		{name: "error with a 400 status retries", r: Result{Status: 400, Err: errTimeout}, action: Retry, next: retry30},
		{name: "failure below the limit retries", e: retries(2), r: Result{Status: 503}, action: Retry, next: retry30},
		{name: "500 keeps the response", r: Result{Status: 500, Body: []byte("boom"), CallID: "call-1"}, action: Retry, next: retry30},
		{
			name: "retry-after sets the wait", r: Result{Status: 429, RetryAfter: 7 * time.Second}, action: Retry,
			next: retryAfter(7 * time.Second),
		},
		{
			name: "retry-after capped by MaxDelay", r: Result{Status: 503, RetryAfter: time.Hour}, action: Retry,
			next: retryAfter(10 * time.Minute),
		},
		{
			name: "exponential backoff from Retries+1", e: retries(2),
			p: func(p *Policy) {
				p.Backoff, p.Delay, p.MaxDelay = envelope.BackoffExponential, time.Second, time.Minute
			},
			r: Result{Status: 502}, jitter: 0.5, action: Retry, next: retryAfter(2 * time.Second),
		},
		{
			name: "exponential backoff, jitter 0", p: func(p *Policy) { p.Backoff = envelope.BackoffExponential },
			r: Result{Status: 502}, jitter: 0, action: Retry, next: retryAfter(0),
		},
		{
			name: "custom retry codes", p: func(p *Policy) { p.RetryCodes = []int{418} },
			r: Result{Status: 418}, action: Retry, next: retry30,
		},
		{
			name: "custom retry codes: 500 is a rejection", p: func(p *Policy) { p.RetryCodes = []int{418} },
			r: Result{Status: 500}, action: DeadLetter, next: deadAs(envelope.ReasonRejected),
		},
		{
			name: "no retry codes: network error still retries", p: func(p *Policy) { p.RetryCodes = nil },
			r: Result{Err: errTimeout}, action: Retry, next: retry30,
		},

		// max retries
		{name: "failure at the limit dead-letters", e: retries(3), r: Result{Status: 500, Body: []byte("boom")}, action: DeadLetter, next: deadAs(envelope.ReasonMaxRetries)},
		{name: "network error at the limit dead-letters", e: retries(3), r: Result{Err: errTimeout}, action: DeadLetter, next: deadAs(envelope.ReasonMaxRetries)},
		{name: "failure past the limit dead-letters", e: retries(7), r: Result{Status: 500}, action: DeadLetter, next: deadAs(envelope.ReasonMaxRetries)},
		{name: "MaxRetries 0 dead-letters on the first failure", p: maxRetries(0), r: Result{Status: 500}, action: DeadLetter, next: deadAs(envelope.ReasonMaxRetries)},
		{name: "retry-after does not extend the limit", e: retries(3), r: Result{Status: 429, RetryAfter: time.Second}, action: DeadLetter, next: deadAs(envelope.ReasonMaxRetries)},

		// rejected
		{name: "rejected below the limit", e: retries(1), r: Result{Status: 400, Body: []byte("bad input")}, action: DeadLetter, next: deadAs(envelope.ReasonRejected)},
		{name: "rejected at the limit is rejected, not max-retries", e: retries(3), r: Result{Status: 422}, action: DeadLetter, next: deadAs(envelope.ReasonRejected)},
		{name: "rejected after expiry is rejected", p: ttl(time.Second), r: Result{Status: 403}, action: DeadLetter, next: deadAs(envelope.ReasonRejected)},
		{name: "status 0 without error is rejected", r: Result{}, action: DeadLetter, next: deadAs(envelope.ReasonRejected)},

		// expiry: AcceptedAt+TTL against the retry's due time, now+30s = accepted+90s
		{name: "retry due at expiry: expired", p: ttl(90 * time.Second), r: Result{Status: 500}, action: DeadLetter, next: deadAs(envelope.ReasonExpired)},
		{name: "retry due after expiry: expired", p: ttl(80 * time.Second), r: Result{Status: 500}, action: DeadLetter, next: deadAs(envelope.ReasonExpired)},
		{name: "already expired: expired", p: ttl(30 * time.Second), r: Result{Err: errTimeout}, action: DeadLetter, next: deadAs(envelope.ReasonExpired)},
		{name: "retry due just before expiry: retried", p: ttl(90*time.Second + time.Nanosecond), r: Result{Status: 500}, action: Retry, next: retry30},
		{name: "TTL 0: no expiry", p: ttl(0), e: func(e *envelope.Envelope) { e.AcceptedAt = now.Add(-1000 * time.Hour) }, r: Result{Status: 500}, action: Retry, next: retry30},
		{
			name: "retry-after past expiry: expired", p: func(p *Policy) { p.TTL, p.MaxDelay = time.Hour, time.Hour }, r: Result{Status: 429, RetryAfter: 59 * time.Minute}, action: DeadLetter,
			next: deadAs(envelope.ReasonExpired),
		},
		{
			name: "retry-after before expiry: retried", p: func(p *Policy) { p.TTL, p.MaxDelay = time.Hour, time.Hour }, r: Result{Status: 429, RetryAfter: 58 * time.Minute}, action: Retry,
			next: retryAfter(58 * time.Minute),
		},
		{name: "max-retries before expired", e: retries(3), p: ttl(time.Second), r: Result{Status: 500}, action: DeadLetter, next: deadAs(envelope.ReasonMaxRetries)},

		// no such function
		{
			name: "no such function: grace starts", r: Result{NoSuchFunction: true, Status: 404}, action: Retry,
			next: graceRetry(now, 5*time.Second),
		},
		{
			name: "no such function: grace starts, short delay", p: func(p *Policy) { p.Delay = 2 * time.Second },
			r: Result{NoSuchFunction: true}, action: Retry, next: graceRetry(now, 2*time.Second),
		},
		{
			name: "no such function: Retries unchanged past the limit", e: retries(3),
			r: Result{NoSuchFunction: true}, action: Retry, next: graceRetry(now, 5*time.Second),
		},
		{
			name: "no such function: MissingSince kept", e: missing(now.Add(-30 * time.Second)),
			r: Result{NoSuchFunction: true}, action: Retry, next: graceRetry(now.Add(-30*time.Second), 5*time.Second),
		},
		{
			name: "no such function: just within grace", e: missing(now.Add(-time.Minute + time.Nanosecond)),
			r: Result{NoSuchFunction: true}, action: Retry, next: graceRetry(now.Add(-time.Minute+time.Nanosecond), 5*time.Second),
		},
		{
			name: "no such function: grace keeps earlier attempts",
			e: func(e *envelope.Envelope) {
				e.Retries, e.FirstAttemptAt, e.LastAttemptAt = 2, accepted, accepted
				e.LastStatus, e.LastError, e.LastResponse = 502, "", "bad gateway"
			},
			r: Result{NoSuchFunction: true, Status: 404, Body: []byte("not found")}, action: Retry,
			next: graceRetry(now, 5*time.Second),
		},
		{
			name: "no such function: grace over", e: missing(now.Add(-time.Minute)),
			r: Result{NoSuchFunction: true, Status: 404, Body: []byte("not found")}, action: DeadLetter,
			next: deadAs(envelope.ReasonNoSuchFunction),
		},
		{
			name: "no such function: long over", e: missing(now.Add(-time.Hour)),
			r: Result{NoSuchFunction: true}, action: DeadLetter, next: deadAs(envelope.ReasonNoSuchFunction),
		},
		{
			name: "no such function: no grace", p: func(p *Policy) { p.NoSuchFunctionGrace = 0 },
			r: Result{NoSuchFunction: true}, action: DeadLetter,
			next: func(e *envelope.Envelope, r Result) *envelope.Envelope {
				out := deadAs(envelope.ReasonNoSuchFunction)(e, r)
				out.MissingSince = now
				return out
			},
		},

		// MissingSince and SlotAt
		{name: "a normal answer clears MissingSince", e: missing(now.Add(-30 * time.Second)), r: Result{Status: 500}, action: Retry, next: retry30},
		{name: "a rejection clears MissingSince", e: missing(now.Add(-30 * time.Second)), r: Result{Status: 400}, action: DeadLetter, next: deadAs(envelope.ReasonRejected)},
		{name: "a network error clears MissingSince", e: missing(now.Add(-30 * time.Second)), r: Result{Err: errTimeout}, action: Retry, next: retry30},
		{name: "retry clears SlotAt", e: func(e *envelope.Envelope) { e.SlotAt = due }, r: Result{Status: 500}, action: Retry, next: retry30},

		// attempt history
		{
			name: "FirstAttemptAt kept, last attempt replaced",
			e: func(e *envelope.Envelope) {
				e.Retries, e.FirstAttemptAt, e.LastAttemptAt = 1, accepted, accepted
				e.LastStatus, e.LastError, e.LastResponse = 0, "old error", "old response"
			},
			r: Result{Status: 502}, action: Retry, next: retry30,
		},
		{
			name: "dead letter keeps FirstAttemptAt, Retries and DueAt",
			e: func(e *envelope.Envelope) {
				e.Retries, e.FirstAttemptAt, e.LastAttemptAt, e.LastError = 3, accepted, accepted, "old error"
			},
			r: Result{Status: 500, Body: []byte("boom")}, action: DeadLetter, next: deadAs(envelope.ReasonMaxRetries),
		},
	}
	// Every status worth another attempt by default, and a selection of
	// those that are not.
	for _, s := range []int{408, 429, 500, 502, 503, 504} {
		tests = append(tests, row{name: fmt.Sprintf("%d retries", s), r: Result{Status: s, Body: []byte("try later")}, action: Retry, next: retry30})
	}
	for _, s := range []int{100, 199, 300, 301, 302, 304, 307, 400, 401, 403, 404, 405, 409, 410, 413, 422, 501, 505, 511, 599} {
		tests = append(tests, row{name: fmt.Sprintf("%d is rejected", s), r: Result{Status: s, Body: []byte("no")}, action: DeadLetter, next: deadAs(envelope.ReasonRejected)})
	}

	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			e := fresh(0)
			if tt.e != nil {
				tt.e(e)
			}
			p := policy()
			if tt.p != nil {
				tt.p(&p)
			}
			before := clone(e)

			d := Decide(e, p, tt.r, now, tt.jitter)
			if d.Action != tt.action {
				t.Fatalf("Action = %v, want %v (Next %+v)", d.Action, tt.action, d.Next)
			}
			var want *envelope.Envelope
			if tt.next != nil {
				want = tt.next(before, tt.r)
			}
			if !reflect.DeepEqual(d.Next, want) {
				t.Errorf("Next =\n%+v\nwant\n%+v", d.Next, want)
			}
			// No dead-letter function, no callback URL.
			if d.Route != nil || d.Callback != nil {
				t.Errorf("Route, Callback = %+v, %+v, want nil", d.Route, d.Callback)
			}
			if !reflect.DeepEqual(e, before) {
				t.Errorf("input modified:\n%+v\nwas\n%+v", e, before)
			}
		})
	}
}

// TestDecideAttempts walks the documented example: X-Retries 0 and
// X-Max-Retries 3 deliver four times, then dead-letter.
func TestDecideAttempts(t *testing.T) {
	t.Parallel()
	for _, tt := range []struct {
		name string
		r    Result
	}{
		{name: "500", r: Result{Status: 500}},
		{name: "network error", r: Result{Err: errTimeout}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			e := fresh(0)
			p := policy()
			var delivered []int
			at := now
			for range 10 {
				delivered = append(delivered, e.Retries)
				d := Decide(e, p, tt.r, at, 0.5)
				if d.Action == DeadLetter {
					if d.Next.Reason != envelope.ReasonMaxRetries {
						t.Errorf("Reason = %q", d.Next.Reason)
					}
					if d.Next.Retries != 3 {
						t.Errorf("dead letter Retries = %d, want 3 (the final attempt's)", d.Next.Retries)
					}
					if !d.Next.DueAt.Equal(e.DueAt) {
						t.Errorf("dead letter DueAt = %v, want the final attempt's %v", d.Next.DueAt, e.DueAt)
					}
					if !d.Next.FirstAttemptAt.Equal(now) || !d.Next.LastAttemptAt.Equal(at) {
						t.Errorf("attempts %v..%v, want %v..%v", d.Next.FirstAttemptAt, d.Next.LastAttemptAt, now, at)
					}
					break
				}
				if d.Action != Retry {
					t.Fatalf("Action = %v", d.Action)
				}
				if want := at.Add(p.Delay); !d.Next.DueAt.Equal(want) {
					t.Errorf("DueAt = %v, want %v", d.Next.DueAt, want)
				}
				e = d.Next
				at = e.DueAt
			}
			if want := []int{0, 1, 2, 3}; !reflect.DeepEqual(delivered, want) {
				t.Errorf("delivered with X-Retries %v, want %v", delivered, want)
			}
		})
	}
}

// TestDecideMissingThenFound: a function the gateway does not know for a
// while, then found: the grace retries cost no attempt.
func TestDecideMissingThenFound(t *testing.T) {
	t.Parallel()
	e := fresh(1)
	p := policy()
	at := now
	for i := range 5 {
		d := Decide(e, p, Result{NoSuchFunction: true}, at, 0)
		if d.Action != Retry {
			t.Fatalf("grace retry %d: Action = %v", i, d.Action)
		}
		if !d.Next.MissingSince.Equal(now) {
			t.Fatalf("grace retry %d: MissingSince = %v, want %v", i, d.Next.MissingSince, now)
		}
		if d.Next.Retries != 1 {
			t.Fatalf("grace retry %d: Retries = %d, want 1", i, d.Next.Retries)
		}
		e = d.Next
		at = e.DueAt
	}
	d := Decide(e, p, Result{Status: 500}, at, 0)
	if d.Action != Retry || d.Next.Retries != 2 || !d.Next.MissingSince.IsZero() {
		t.Fatalf("after the function is found: %v, Retries %d, MissingSince %v", d.Action, d.Next.Retries, d.Next.MissingSince)
	}
	// Missing again: a new grace period.
	later := d.Next.DueAt
	d = Decide(d.Next, p, Result{NoSuchFunction: true}, later, 0)
	if d.Action != Retry || !d.Next.MissingSince.Equal(later) {
		t.Fatalf("missing again: %v, MissingSince %v, want %v", d.Action, d.Next.MissingSince, later)
	}
	// Still missing once the grace is over.
	at = later.Add(p.NoSuchFunctionGrace)
	d = Decide(d.Next, p, Result{NoSuchFunction: true}, at, 0)
	if d.Action != DeadLetter || d.Next.Reason != envelope.ReasonNoSuchFunction || d.Next.Retries != 2 {
		t.Fatalf("grace over: %v, reason %q, Retries %d", d.Action, d.Next.Reason, d.Next.Retries)
	}
}

func TestDecideSharesHeaderAndBody(t *testing.T) {
	t.Parallel()
	for _, tt := range []struct {
		name string
		r    Result
		p    func(*Policy)
	}{
		{name: "retry", r: Result{Status: 500}},
		{name: "dead letter", r: Result{Status: 400}},
		{name: "routed dead letter", r: Result{Status: 400}, p: func(p *Policy) { p.DeadLetterFunction = dlFunction }},
		{name: "grace retry", r: Result{NoSuchFunction: true}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			e := fresh(0)
			p := policy()
			if tt.p != nil {
				tt.p(&p)
			}
			d := Decide(e, p, tt.r, now, 0)
			// Sharing is documented; copying a 1 MiB body on every retry is waste.
			if &d.Next.Body[0] != &e.Body[0] {
				t.Error("Body was copied")
			}
			if reflect.ValueOf(d.Next.Header).UnsafePointer() != reflect.ValueOf(e.Header).UnsafePointer() {
				t.Error("Header was copied")
			}
		})
	}
}

func TestDecideTruncatesResponse(t *testing.T) {
	t.Parallel()
	a := func(n int) string { return strings.Repeat("a", n) }
	tests := []struct {
		name string
		body string
		want string
	}{
		{name: "empty", body: "", want: ""},
		{name: "short", body: "error: bad input", want: "error: bad input"},
		{name: "exactly the limit", body: a(ResponseLimit), want: a(ResponseLimit)},
		{name: "one over", body: a(ResponseLimit + 1), want: a(ResponseLimit)},
		{name: "long", body: a(64 << 10), want: a(ResponseLimit)},
		// "é" is 2 bytes, "€" 3, "😀" 4: each straddles the limit.
		{name: "2-byte rune across the limit", body: a(ResponseLimit-1) + "é" + "tail", want: a(ResponseLimit - 1)},
		{name: "3-byte rune across the limit, 1 in", body: a(ResponseLimit-1) + "€tail", want: a(ResponseLimit - 1)},
		{name: "3-byte rune across the limit, 2 in", body: a(ResponseLimit-2) + "€tail", want: a(ResponseLimit - 2)},
		{name: "4-byte rune across the limit, 3 in", body: a(ResponseLimit-3) + "😀tail", want: a(ResponseLimit - 3)},
		{name: "rune ending at the limit", body: a(ResponseLimit-2) + "é" + "tail", want: a(ResponseLimit-2) + "é"},
		{name: "rune starting at the limit", body: a(ResponseLimit) + "😀", want: a(ResponseLimit)},
		{name: "multi-byte throughout", body: strings.Repeat("€", 1000), want: strings.Repeat("€", ResponseLimit/3)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			for _, r := range []Result{
				{Status: 500, Body: []byte(tt.body)},
				{Status: 400, Body: []byte(tt.body)},
			} {
				d := Decide(fresh(0), policy(), r, now, 0)
				got := d.Next.LastResponse
				if got != tt.want {
					t.Errorf("%d: LastResponse has %d bytes %q..., want %d bytes", r.Status, len(got), head(got), len(tt.want))
				}
				if len(got) > ResponseLimit {
					t.Errorf("%d: LastResponse has %d bytes, over ResponseLimit", r.Status, len(got))
				}
				if !utf8.ValidString(got) {
					t.Errorf("%d: LastResponse is not valid UTF-8", r.Status)
				}
			}
		})
	}
}

func TestDecideTruncatesBinary(t *testing.T) {
	t.Parallel()
	// Continuation bytes only: no rune boundary to find, so the cut may move
	// back by at most a rune's length.
	body := []byte(strings.Repeat("\x80", 2*ResponseLimit))
	d := Decide(fresh(0), policy(), Result{Status: 500, Body: body}, now, 0)
	if n := len(d.Next.LastResponse); n < ResponseLimit-(utf8.UTFMax-1) || n > ResponseLimit {
		t.Errorf("LastResponse has %d bytes", n)
	}
}

// deadLetterHeader is the header of e's dead letter routed at now.
func deadLetterHeader(e *envelope.Envelope, reason string) http.Header {
	h := e.Header.Clone()
	if h == nil {
		h = http.Header{}
	}
	h.Set(envelope.HeaderDeadLetterReason, reason)
	h.Set(envelope.HeaderDeadLetterFrom, e.Function)
	h.Set(envelope.HeaderDeadLetterTime, now.UTC().Format(time.RFC3339Nano))
	h.Set(envelope.HeaderDeadLetterRetries, strconv.Itoa(e.Retries))
	return h
}

func wantRoute(e *envelope.Envelope, reason string) *envelope.Envelope {
	return &envelope.Envelope{
		ID:         e.ID + "-dl",
		Kind:       envelope.KindDeadLetter,
		Function:   dlFunction,
		Header:     deadLetterHeader(e, reason),
		Body:       e.Body,
		AcceptedAt: now,
		DueAt:      now,
	}
}

func TestRoute(t *testing.T) {
	t.Parallel()
	withDL := func() Policy {
		p := policy()
		p.DeadLetterFunction = dlFunction
		return p
	}
	tests := []struct {
		name   string
		e      func(*envelope.Envelope)
		p      func(*Policy)
		decide func(*envelope.Envelope, Policy) Decision
		reason string // "": no Route
	}{
		{
			name:   "max-retries",
			e:      func(e *envelope.Envelope) { e.Retries = 3 },
			decide: func(e *envelope.Envelope, p Policy) Decision { return Decide(e, p, Result{Status: 500}, now, 0) },
			reason: envelope.ReasonMaxRetries,
		},
		{
			name:   "rejected",
			e:      func(e *envelope.Envelope) { e.Retries = 1 },
			decide: func(e *envelope.Envelope, p Policy) Decision { return Decide(e, p, Result{Status: 400}, now, 0) },
			reason: envelope.ReasonRejected,
		},
		{
			name:   "expired on retry",
			p:      func(p *Policy) { p.TTL = time.Minute },
			decide: func(e *envelope.Envelope, p Policy) Decision { return Decide(e, p, Result{Err: errTimeout}, now, 0) },
			reason: envelope.ReasonExpired,
		},
		{
			name: "no such function",
			e:    func(e *envelope.Envelope) { e.MissingSince = now.Add(-time.Hour) },
			decide: func(e *envelope.Envelope, p Policy) Decision {
				return Decide(e, p, Result{NoSuchFunction: true}, now, 0)
			},
			reason: envelope.ReasonNoSuchFunction,
		},
		{
			name: "expired before a call",
			e:    func(e *envelope.Envelope) { e.Retries = 2 },
			p:    func(p *Policy) { p.TTL = time.Minute },
			decide: func(e *envelope.Envelope, p Policy) Decision {
				d, ok := Expired(e, p, now)
				if !ok {
					t.Errorf("Expired: not ok")
				}
				return d
			},
			reason: envelope.ReasonExpired,
		},
		{
			name:   "admit: max-retries",
			e:      func(e *envelope.Envelope) { e.Retries = 4 },
			decide: func(e *envelope.Envelope, p Policy) Decision { return Admit(e, p, now, 0) },
			reason: envelope.ReasonMaxRetries,
		},
		{
			name:   "admit: expired",
			e:      func(e *envelope.Envelope) { e.Retries = 1 },
			p:      func(p *Policy) { p.TTL = time.Minute },
			decide: func(e *envelope.Envelope, p Policy) Decision { return Admit(e, p, now, 0) },
			reason: envelope.ReasonExpired,
		},
		{
			name:   "nil header",
			e:      func(e *envelope.Envelope) { e.Retries, e.Header = 3, nil },
			decide: func(e *envelope.Envelope, p Policy) Decision { return Decide(e, p, Result{Status: 500}, now, 0) },
			reason: envelope.ReasonMaxRetries,
		},
		{
			name: "stale dead-letter headers replaced",
			e: func(e *envelope.Envelope) {
				e.Retries = 3
				e.Header.Set(envelope.HeaderDeadLetterReason, "spoofed")
				e.Header.Add(envelope.HeaderDeadLetterRetries, "99")
			},
			decide: func(e *envelope.Envelope, p Policy) Decision { return Decide(e, p, Result{Status: 500}, now, 0) },
			reason: envelope.ReasonMaxRetries,
		},
		{
			name:   "a dead letter's dead letter is not routed",
			e:      func(e *envelope.Envelope) { e.Kind, e.Retries = envelope.KindDeadLetter, 3 },
			decide: func(e *envelope.Envelope, p Policy) Decision { return Decide(e, p, Result{Status: 500}, now, 0) },
		},
		{
			name:   "a dead letter's expiry is not routed",
			e:      func(e *envelope.Envelope) { e.Kind = envelope.KindDeadLetter },
			p:      func(p *Policy) { p.TTL = time.Second },
			decide: func(e *envelope.Envelope, p Policy) Decision { d, _ := Expired(e, p, now); return d },
		},
		{
			name:   "a callback's dead letter is not routed",
			e:      func(e *envelope.Envelope) { e.Kind, e.Retries = envelope.KindCallback, 3 },
			decide: func(e *envelope.Envelope, p Policy) Decision { return Decide(e, p, Result{Status: 500}, now, 0) },
		},
		{
			name:   "no dead-letter function",
			e:      func(e *envelope.Envelope) { e.Retries = 3 },
			p:      func(p *Policy) { p.DeadLetterFunction = "" },
			decide: func(e *envelope.Envelope, p Policy) Decision { return Decide(e, p, Result{Status: 500}, now, 0) },
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			e := fresh(0)
			if tt.e != nil {
				tt.e(e)
			}
			p := withDL()
			if tt.p != nil {
				tt.p(&p)
			}
			before := clone(e)

			d := tt.decide(e, p)
			if d.Action != DeadLetter {
				t.Fatalf("Action = %v, want DeadLetter", d.Action)
			}
			if !reflect.DeepEqual(e, before) {
				t.Errorf("input modified:\n%+v\nwas\n%+v", e, before)
			}
			if tt.reason == "" {
				if d.Route != nil {
					t.Errorf("Route = %+v, want nil", d.Route)
				}
				return
			}
			if d.Next.Reason != tt.reason {
				t.Errorf("Next.Reason = %q, want %q", d.Next.Reason, tt.reason)
			}
			if want := wantRoute(before, tt.reason); !reflect.DeepEqual(d.Route, want) {
				t.Errorf("Route =\n%+v\nwant\n%+v", d.Route, want)
			}
			// The stored dead letter keeps the message's own headers.
			if !reflect.DeepEqual(d.Next.Header, before.Header) {
				t.Errorf("Next.Header = %v, want %v", d.Next.Header, before.Header)
			}
			if before.Header != nil && reflect.ValueOf(d.Route.Header).UnsafePointer() == reflect.ValueOf(e.Header).UnsafePointer() {
				t.Errorf("Route.Header is the input's")
			}
			if len(e.Body) > 0 && &d.Route.Body[0] != &e.Body[0] {
				t.Errorf("Route.Body was copied")
			}
		})
	}
}

func TestRouteTimeIsUTC(t *testing.T) {
	t.Parallel()
	p := policy()
	p.DeadLetterFunction = dlFunction
	at := time.Date(2025, 1, 2, 5, 4, 0, 123456789, time.FixedZone("CET", 2*3600))
	d := Decide(fresh(3), p, Result{Status: 500}, at, 0)
	if d.Route == nil {
		t.Fatal("no Route")
	}
	if got, want := d.Route.Header.Get(envelope.HeaderDeadLetterTime), "2025-01-02T03:04:00.123456789Z"; got != want {
		t.Errorf("%s = %q, want %q", envelope.HeaderDeadLetterTime, got, want)
	}
}

// wantCallback is the callback of e (as it is when the outcome is decided)
// with the given extra headers.
func wantCallback(e *envelope.Envelope, outcome string, attempts int, body string, extra map[string]string) *envelope.Envelope {
	h := http.Header{}
	h.Set(envelope.HeaderOutcome, outcome)
	h.Set(envelope.HeaderFunctionName, e.Function)
	h.Set(envelope.HeaderMessageID, e.ID)
	h.Set(envelope.HeaderAttempts, strconv.Itoa(attempts))
	for k, v := range extra {
		h.Set(k, v)
	}
	var b []byte
	if body != "" {
		b = []byte(body)
	}
	return &envelope.Envelope{
		ID:         e.ID + "-cb",
		Kind:       envelope.KindCallback,
		Function:   e.Function,
		Policy:     envelope.Policy{CallbackURL: callbackURL},
		Header:     h,
		Body:       b,
		AcceptedAt: now,
		DueAt:      now,
	}
}

func TestCallback(t *testing.T) {
	t.Parallel()
	long := strings.Repeat("x", ResponseLimit+1)
	tests := []struct {
		name    string
		retries int
		kind    string
		url     string
		r       Result
		action  Action
		want    *envelope.Envelope // built from fresh(retries)
	}{
		{
			name: "delivered", retries: 2, url: callbackURL,
			r:      Result{Status: 200, Body: []byte("answer"), CallID: "call-1"},
			action: Ack,
			want: wantCallback(fresh(2), envelope.OutcomeDelivered, 3, "answer", map[string]string{
				envelope.HeaderFunctionStatus: "200", envelope.HeaderCallID: "call-1",
			}),
		},
		{
			name: "delivered, first attempt, no call id, no body", url: callbackURL,
			r:      Result{Status: 204},
			action: Ack,
			want:   wantCallback(fresh(0), envelope.OutcomeDelivered, 1, "", map[string]string{envelope.HeaderFunctionStatus: "204"}),
		},
		{
			name: "delivered, body beyond ResponseLimit kept whole", url: callbackURL,
			r:      Result{Status: 200, Body: []byte(long)},
			action: Ack,
			want:   wantCallback(fresh(0), envelope.OutcomeDelivered, 1, long, map[string]string{envelope.HeaderFunctionStatus: "200"}),
		},
		{
			name: "dead letter, max-retries", retries: 3, url: callbackURL,
			r:      Result{Status: 500, Body: []byte("boom"), CallID: "call-4"},
			action: DeadLetter,
			want: wantCallback(fresh(3), envelope.OutcomeDeadLettered, 4, "boom", map[string]string{
				envelope.HeaderFunctionStatus: "500", envelope.HeaderCallID: "call-4",
				envelope.HeaderDeadLetterReason: envelope.ReasonMaxRetries,
			}),
		},
		{
			name: "dead letter, rejected, last response cut", retries: 1, url: callbackURL,
			r:      Result{Status: 400, Body: []byte(long)},
			action: DeadLetter,
			want: wantCallback(fresh(1), envelope.OutcomeDeadLettered, 2, long[:ResponseLimit], map[string]string{
				envelope.HeaderFunctionStatus: "400", envelope.HeaderDeadLetterReason: envelope.ReasonRejected,
			}),
		},
		{
			name: "dead letter, network error: no status", retries: 3, url: callbackURL,
			r:      Result{Err: errTimeout},
			action: DeadLetter,
			want: wantCallback(fresh(3), envelope.OutcomeDeadLettered, 4, "", map[string]string{
				envelope.HeaderDeadLetterReason: envelope.ReasonMaxRetries,
			}),
		},
		{name: "retry: none", url: callbackURL, r: Result{Status: 500}, action: Retry},
		{name: "grace retry: none", url: callbackURL, r: Result{NoSuchFunction: true}, action: Retry},
		{name: "delivered, no URL: none", r: Result{Status: 200}, action: Ack},
		{name: "dead letter, no URL: none", retries: 3, r: Result{Status: 500}, action: DeadLetter},
		{name: "callback delivered: none", kind: envelope.KindCallback, url: callbackURL, r: Result{Status: 200}, action: Ack},
		{name: "callback dead letter: none", kind: envelope.KindCallback, retries: 3, url: callbackURL, r: Result{Status: 500}, action: DeadLetter},
		{name: "dead letter delivered: none", kind: envelope.KindDeadLetter, url: callbackURL, r: Result{Status: 200}, action: Ack},
		{name: "dead letter's dead letter: none", kind: envelope.KindDeadLetter, retries: 3, url: callbackURL, r: Result{Status: 500}, action: DeadLetter},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			e := fresh(tt.retries)
			e.Kind = tt.kind
			e.CallbackURL = tt.url // what the message asked for; p decides
			p := policy()
			p.CallbackURL = tt.url
			before := clone(e)

			d := Decide(e, p, tt.r, now, 0)
			if d.Action != tt.action {
				t.Fatalf("Action = %v, want %v", d.Action, tt.action)
			}
			if !sameEnvelope(d.Callback, tt.want) {
				t.Errorf("Callback =\n%+v\nwant\n%+v", d.Callback, tt.want)
			}
			if d.Route != nil {
				t.Errorf("Route = %+v, want nil", d.Route)
			}
			if !reflect.DeepEqual(e, before) {
				t.Errorf("input modified:\n%+v\nwas\n%+v", e, before)
			}
		})
	}
}

// TestCallbackAndRoute: a message with both a callback URL and a
// dead-letter function gets both on its dead letter.
func TestCallbackAndRoute(t *testing.T) {
	t.Parallel()
	p := policy()
	p.DeadLetterFunction, p.CallbackURL = dlFunction, callbackURL
	e := fresh(3)
	d := Decide(e, p, Result{Status: 503, Body: []byte("down")}, now, 0)
	if d.Action != DeadLetter || d.Route == nil || d.Callback == nil {
		t.Fatalf("Action %v, Route %v, Callback %v", d.Action, d.Route, d.Callback)
	}
	if d.Route.ID == d.Callback.ID || d.Route.ID == e.ID || d.Callback.ID == e.ID {
		t.Errorf("ids not distinct: %q, %q, %q", e.ID, d.Route.ID, d.Callback.ID)
	}
	if d.Route.CallbackURL != "" {
		t.Errorf("Route carries callback URL %q", d.Route.CallbackURL)
	}

	// A replayed message's route and callback belong to its new life.
	e.Replays = 2
	d = Decide(e, p, Result{Status: 503}, now, 0)
	if d.Route.Replays != 2 || d.Callback.Replays != 2 {
		t.Errorf("replayed twice: route has Replays %d, callback %d; want 2", d.Route.Replays, d.Callback.Replays)
	}
}

// TestCallbackRetries: a callback resolves to the callback policy and
// retries with exponential backoff, then becomes a dead letter that is
// neither routed nor called back.
func TestCallbackRetries(t *testing.T) {
	t.Parallel()
	msg := fresh(0)
	msg.Policy = envelope.Policy{CallbackURL: callbackURL, DeadLetterFunction: dlFunction, MaxRetries: ptr(0)}
	dflt := defaults()
	dflt.DeadLetterFunction = dlFunction
	p := Resolve(msg, envelope.Policy{}, dflt)
	d := Decide(msg, p, Result{Status: 200, Body: []byte("ok")}, now, 0)
	cb := d.Callback
	if cb == nil {
		t.Fatal("no callback")
	}

	cp := Resolve(cb, envelope.Policy{MaxRetries: ptr(0)}, dflt)
	at := now
	for i := range dflt.CallbackMaxRetries {
		d := Decide(cb, cp, Result{Status: 502}, at, 0.5)
		if d.Action != Retry {
			t.Fatalf("attempt %d: Action = %v", i, d.Action)
		}
		want := time.Duration(0.5 * float64(dflt.CallbackDelay<<i))
		if got := d.Next.DueAt.Sub(at); got != want {
			t.Errorf("attempt %d: wait %v, want %v", i, got, want)
		}
		cb, at = d.Next, d.Next.DueAt
	}
	d = Decide(cb, cp, Result{Status: 502}, at, 0.5)
	if d.Action != DeadLetter || d.Next.Reason != envelope.ReasonMaxRetries {
		t.Fatalf("Action %v, reason %q, want a max-retries dead letter", d.Action, d.Next.Reason)
	}
	if d.Route != nil || d.Callback != nil {
		t.Errorf("callback's dead letter: Route %+v, Callback %+v, want none", d.Route, d.Callback)
	}
}

func TestExpired(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		ttl  time.Duration
		at   time.Time
		ok   bool
	}{
		{name: "no TTL", ttl: 0, at: accepted.Add(1000 * time.Hour)},
		{name: "well before", ttl: time.Hour, at: accepted},
		{name: "just before", ttl: time.Hour, at: accepted.Add(time.Hour - time.Nanosecond)},
		{name: "at expiry", ttl: time.Hour, at: accepted.Add(time.Hour), ok: true},
		{name: "after", ttl: time.Hour, at: accepted.Add(2 * time.Hour), ok: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			e := fresh(2)
			e.FirstAttemptAt, e.LastAttemptAt, e.LastStatus, e.LastResponse = accepted, accepted, 503, "busy"
			p := policy()
			p.TTL = tt.ttl
			before := clone(e)

			d, ok := Expired(e, p, tt.at)
			if ok != tt.ok {
				t.Fatalf("ok = %v, want %v", ok, tt.ok)
			}
			if !reflect.DeepEqual(e, before) {
				t.Errorf("input modified:\n%+v\nwas\n%+v", e, before)
			}
			if !ok {
				if !reflect.DeepEqual(d, Decision{}) {
					t.Errorf("Decision = %+v, want zero", d)
				}
				return
			}
			// No attempt: the history is the previous attempt's.
			want := clone(e)
			want.Body = e.Body
			want.Header = e.Header
			want.Reason = envelope.ReasonExpired
			want.DeadAt = tt.at
			if d.Action != DeadLetter || !reflect.DeepEqual(d.Next, want) {
				t.Errorf("Decision = %v\n%+v\nwant DeadLetter\n%+v", d.Action, d.Next, want)
			}
			if d.Route != nil || d.Callback != nil {
				t.Errorf("Route, Callback = %+v, %+v, want nil", d.Route, d.Callback)
			}
		})
	}
}

func TestExpiredCallback(t *testing.T) {
	t.Parallel()
	e := fresh(2)
	e.LastStatus, e.LastResponse = 503, "busy"
	p := policy()
	p.TTL, p.CallbackURL = time.Minute, callbackURL
	d, ok := Expired(e, p, now)
	if !ok || d.Callback == nil {
		t.Fatalf("ok %v, Callback %v", ok, d.Callback)
	}
	h := d.Callback.Header
	for k, want := range map[string]string{
		envelope.HeaderOutcome:          envelope.OutcomeDeadLettered,
		envelope.HeaderDeadLetterReason: envelope.ReasonExpired,
		envelope.HeaderFunctionName:     e.Function,
		envelope.HeaderMessageID:        e.ID,
		envelope.HeaderCallID:           "",
	} {
		if got := h.Get(k); got != want {
			t.Errorf("%s = %q, want %q", k, got, want)
		}
	}
	if string(d.Callback.Body) != "busy" {
		t.Errorf("Body = %q, want the last response", d.Callback.Body)
	}
}

func TestDefer(t *testing.T) {
	t.Parallel()
	until := now.Add(3 * time.Second)
	for _, tt := range []struct {
		name string
		old  time.Time
		slot time.Time
	}{
		{name: "with a slot", slot: until},
		{name: "without a slot", slot: time.Time{}},
		{name: "clears an old slot", old: due, slot: time.Time{}},
		{name: "replaces an old slot", old: due, slot: until.Add(time.Second)},
	} {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			e := fresh(2)
			e.SlotAt = tt.old
			e.MissingSince = accepted
			e.FirstAttemptAt, e.LastAttemptAt, e.LastStatus = accepted, accepted, 429
			before := clone(e)

			d := Defer(e, until, tt.slot)
			want := *e
			want.DueAt = until
			want.SlotAt = tt.slot
			want.Holds = e.Holds + 1
			if d.Action != Retry || !reflect.DeepEqual(d.Next, &want) {
				t.Errorf("Decision = %v\n%+v\nwant Retry\n%+v", d.Action, d.Next, &want)
			}
			if d.Route != nil || d.Callback != nil {
				t.Errorf("Route, Callback = %+v, %+v, want nil", d.Route, d.Callback)
			}
			if !reflect.DeepEqual(e, before) {
				t.Errorf("input modified:\n%+v\nwas\n%+v", e, before)
			}
		})
	}
}

func TestAdmit(t *testing.T) {
	t.Parallel()
	expo := func(p *Policy) {
		p.Backoff, p.Delay, p.MaxDelay = envelope.BackoffExponential, time.Second, time.Minute
	}
	tests := []struct {
		name     string
		retries  int
		p        func(*Policy)
		accepted time.Time // zero: now, as the requeue API sets it
		jitter   float64
		reason   string        // "": Retry
		wait     time.Duration // with Retry
	}{
		{name: "fresh", retries: 0, wait: 30 * time.Second},
		{name: "below the limit", retries: 2, wait: 30 * time.Second},
		{name: "at the limit", retries: 3, wait: 30 * time.Second},
		{name: "above the limit", retries: 4, reason: envelope.ReasonMaxRetries},
		{name: "far above the limit", retries: 400, reason: envelope.ReasonMaxRetries},
		{name: "MaxRetries 0, fresh", retries: 0, p: func(p *Policy) { p.MaxRetries = 0 }, wait: 30 * time.Second},
		{name: "MaxRetries 0, one made", retries: 1, p: func(p *Policy) { p.MaxRetries = 0 }, reason: envelope.ReasonMaxRetries},

		{name: "exponential, Retries 0 waits as the first retry", retries: 0, p: expo, jitter: 0.5, wait: 500 * time.Millisecond},
		{name: "exponential, Retries 1", retries: 1, p: expo, jitter: 0.5, wait: 500 * time.Millisecond},
		{name: "exponential, Retries 2", retries: 2, p: expo, jitter: 0.5, wait: time.Second},
		{name: "exponential, Retries 3", retries: 3, p: expo, jitter: 0.999, wait: 3996 * time.Millisecond},
		{name: "exponential, jitter 0", retries: 3, p: expo, jitter: 0, wait: 0},

		{name: "due at expiry", retries: 1, p: func(p *Policy) { p.TTL = 30 * time.Second }, reason: envelope.ReasonExpired},
		{name: "due after expiry", retries: 1, p: func(p *Policy) { p.TTL = 29 * time.Second }, reason: envelope.ReasonExpired},
		{name: "due just before expiry", retries: 1, p: func(p *Policy) { p.TTL = 30*time.Second + time.Nanosecond }, wait: 30 * time.Second},
		{name: "accepted long ago, expired", retries: 1, accepted: accepted, p: func(p *Policy) { p.TTL = time.Minute }, reason: envelope.ReasonExpired},
		{name: "accepted long ago, no TTL", retries: 1, accepted: now.Add(-1000 * time.Hour), wait: 30 * time.Second},
		{name: "max-retries before expired", retries: 4, p: func(p *Policy) { p.TTL = time.Second }, reason: envelope.ReasonMaxRetries},
		{name: "exponential, jitter 0, Retries 1", retries: 1, p: expo, wait: 0},
	}
	for _, tt := range tests {
		for _, routed := range []bool{false, true} {
			t.Run(fmt.Sprintf("%s/routed=%v", tt.name, routed), func(t *testing.T) {
				t.Parallel()
				e := fresh(tt.retries)
				e.AcceptedAt = tt.accepted
				if e.AcceptedAt.IsZero() {
					e.AcceptedAt = now
				}
				e.DueAt = time.Time{}
				p := policy()
				if tt.p != nil {
					tt.p(&p)
				}
				if routed {
					p.DeadLetterFunction, p.CallbackURL = dlFunction, callbackURL
				}
				before := clone(e)

				d := Admit(e, p, now, tt.jitter)
				want := clone(e)
				want.Header, want.Body = e.Header, e.Body
				if tt.reason == "" {
					want.DueAt = now.Add(tt.wait)
					if d.Action != Retry {
						t.Fatalf("Action = %v, want Retry", d.Action)
					}
					if d.Route != nil || d.Callback != nil {
						t.Errorf("Route, Callback = %+v, %+v, want nil", d.Route, d.Callback)
					}
				} else {
					want.Reason = tt.reason
					want.DeadAt = now
					if d.Action != DeadLetter {
						t.Fatalf("Action = %v, want DeadLetter", d.Action)
					}
					if routed {
						if r := wantRoute(before, tt.reason); !reflect.DeepEqual(d.Route, r) {
							t.Errorf("Route =\n%+v\nwant\n%+v", d.Route, r)
						}
						if d.Callback == nil {
							t.Errorf("no Callback")
						} else if got := d.Callback.Header.Get(envelope.HeaderDeadLetterReason); got != tt.reason {
							t.Errorf("Callback %s = %q, want %q", envelope.HeaderDeadLetterReason, got, tt.reason)
						}
					} else if d.Route != nil || d.Callback != nil {
						t.Errorf("Route, Callback = %+v, %+v, want nil", d.Route, d.Callback)
					}
				}
				if !reflect.DeepEqual(d.Next, want) {
					t.Errorf("Next =\n%+v\nwant\n%+v", d.Next, want)
				}
				if !reflect.DeepEqual(e, before) {
					t.Errorf("input modified:\n%+v\nwas\n%+v", e, before)
				}
			})
		}
	}
}

func TestActionString(t *testing.T) {
	t.Parallel()
	for a, want := range map[Action]string{Ack: "ack", Retry: "retry", DeadLetter: "dead-letter", Action(9): "Action(9)", Action(-1): "Action(-1)"} {
		if got := a.String(); got != want {
			t.Errorf("%d.String() = %q, want %q", int(a), got, want)
		}
	}
}

// sameEnvelope reports whether a and b are equal, an empty Body equal to
// a nil one.
func sameEnvelope(a, b *envelope.Envelope) bool {
	if a == nil || b == nil {
		return a == b
	}
	x, y := *a, *b
	if !bytes.Equal(x.Body, y.Body) {
		return false
	}
	x.Body, y.Body = nil, nil
	return reflect.DeepEqual(x, y)
}

// clone deep-copies e, so a test can tell whether the original changed.
func clone(e *envelope.Envelope) *envelope.Envelope {
	out := *e
	out.Header = e.Header.Clone()
	if e.Body != nil {
		out.Body = append([]byte(nil), e.Body...)
	}
	return &out
}

func head(s string) string {
	if len(s) > 16 {
		return s[:16]
	}
	return s
}

// recorder is a Storer that records what it is given and fails on the
// call numbered failAt (from 1; 0: never).
type recorder struct {
	calls  []string
	failAt int
}

var errStore = errors.New("broker down")

func (s *recorder) record(op string, e *envelope.Envelope) error {
	s.calls = append(s.calls, op+" "+e.ID)
	if len(s.calls) == s.failAt {
		return errStore
	}
	return nil
}

func (s *recorder) Schedule(_ context.Context, e *envelope.Envelope) error {
	return s.record("schedule", e)
}

func (s *recorder) DeadLetter(_ context.Context, e *envelope.Envelope) error {
	return s.record("dead-letter", e)
}

func TestStore(t *testing.T) {
	t.Parallel()
	full := policy()
	full.DeadLetterFunction, full.CallbackURL = dlFunction, callbackURL
	tests := []struct {
		name   string
		d      Decision
		failAt int
		want   []string
		err    error
	}{
		{name: "ack", d: Decide(fresh(0), policy(), Result{Status: 200}, now, 0)},
		{name: "ack with callback", d: Decide(fresh(0), full, Result{Status: 200}, now, 0), want: []string{"schedule id-1-cb"}},
		{name: "retry", d: Decide(fresh(0), full, Result{Status: 500}, now, 0), want: []string{"schedule id-1"}},
		{name: "defer", d: Defer(fresh(0), now, time.Time{}), want: []string{"schedule id-1"}},
		{name: "dead letter", d: Decide(fresh(3), policy(), Result{Status: 500}, now, 0), want: []string{"dead-letter id-1"}},
		{
			name: "routed and called back: new messages first",
			d:    Decide(fresh(3), full, Result{Status: 500}, now, 0),
			want: []string{"schedule id-1-dl", "schedule id-1-cb", "dead-letter id-1"},
		},
		{
			name: "route fails: nothing else stored", failAt: 1, err: errStore,
			d:    Decide(fresh(3), full, Result{Status: 500}, now, 0),
			want: []string{"schedule id-1-dl"},
		},
		{
			name: "callback fails: the message is not stored", failAt: 2, err: errStore,
			d:    Decide(fresh(3), full, Result{Status: 500}, now, 0),
			want: []string{"schedule id-1-dl", "schedule id-1-cb"},
		},
		{
			name: "dead letter fails", failAt: 3, err: errStore,
			d:    Decide(fresh(3), full, Result{Status: 500}, now, 0),
			want: []string{"schedule id-1-dl", "schedule id-1-cb", "dead-letter id-1"},
		},
		{
			name: "ack callback fails", failAt: 1, err: errStore,
			d:    Decide(fresh(0), full, Result{Status: 200}, now, 0),
			want: []string{"schedule id-1-cb"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			s := &recorder{failAt: tt.failAt}
			err := tt.d.Store(context.Background(), s)
			if !errors.Is(err, tt.err) || (err == nil) != (tt.err == nil) {
				t.Errorf("Store = %v, want %v", err, tt.err)
			}
			if !reflect.DeepEqual(s.calls, tt.want) {
				t.Errorf("calls = %q, want %q", s.calls, tt.want)
			}
		})
	}
}

func TestReplay(t *testing.T) {
	accepted := now.Add(-time.Hour)
	maxRetries := 3
	dead := &envelope.Envelope{
		ID: "m1", Function: "fn.team", Kind: envelope.KindMessage,
		Header:  http.Header{"X-Trace": {"t1"}},
		Body:    []byte("body"),
		Retries: 4, Policy: envelope.Policy{MaxRetries: &maxRetries},
		AcceptedAt: accepted, DueAt: accepted.Add(time.Minute),
		FirstAttemptAt: accepted, LastAttemptAt: accepted.Add(time.Minute),
		LastStatus: 503, LastError: "unavailable", LastResponse: "busy",
		MissingSince: accepted, SlotAt: accepted, Holds: 2,
		Reason: envelope.ReasonMaxRetries, DeadAt: accepted.Add(2 * time.Minute),
	}
	got := Replay(dead, 1, now)
	want := &envelope.Envelope{
		ID: "m1", Function: "fn.team", Kind: envelope.KindMessage,
		Header: http.Header{"X-Trace": {"t1"}}, Body: []byte("body"),
		Retries: 1, Policy: envelope.Policy{MaxRetries: &maxRetries},
		AcceptedAt: now, DueAt: now, Replays: 1,
		Deaths: []envelope.Death{{Reason: envelope.ReasonMaxRetries, DeadAt: accepted.Add(2 * time.Minute), Retries: 4, LastStatus: 503, LastError: "unavailable"}},
	}
	if !reflect.DeepEqual(want, got) {
		t.Fatalf("Replay:\n got %+v\nwant %+v", got, want)
	}
	got.Header.Set("X-Trace", "changed")
	if dead.Header.Get("X-Trace") != "t1" {
		t.Fatal("Replay shares the dead letter's headers")
	}

	// Replayed over and over, a message keeps its last MaxDeaths deaths.
	e := dead
	for i := range envelope.MaxDeaths + 3 {
		e = Replay(e, 0, now.Add(time.Duration(i)*time.Minute))
		e.Reason, e.DeadAt, e.Retries = envelope.ReasonRejected, now.Add(time.Duration(i)*time.Minute), i
	}
	if e.Replays != envelope.MaxDeaths+3 || len(e.Deaths) != envelope.MaxDeaths {
		t.Fatalf("after %d replays: Replays %d, %d deaths", envelope.MaxDeaths+3, e.Replays, len(e.Deaths))
	}
	if last := e.Deaths[len(e.Deaths)-1]; last.Retries != envelope.MaxDeaths+1 {
		t.Fatalf("last death kept has retries %d, want %d (the most recent)", last.Retries, envelope.MaxDeaths+1)
	}
}
