package delivery

import (
	"errors"
	"net/http"
	"reflect"
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

// fresh returns an envelope due for its first delivery by the connector.
func fresh(retries, maxRetries int) *envelope.Envelope {
	return &envelope.Envelope{
		ID:         "id-1",
		Function:   "fn.openfaas-fn",
		Header:     http.Header{"X-Call-Id": {"abc"}},
		Body:       []byte("payload"),
		Retries:    retries,
		MaxRetries: maxRetries,
		Delay:      30 * time.Second,
		AcceptedAt: accepted,
		DueAt:      due,
	}
}

func TestDecide(t *testing.T) {
	t.Parallel()
	errTimeout := errors.New("context deadline exceeded")

	// failed is e after a failed attempt at now, before the retry or
	// dead-letter fields are set.
	failed := func(e *envelope.Envelope, status int, lastErr, resp string) envelope.Envelope {
		out := *e
		out.FirstAttemptAt = now
		out.LastAttemptAt = now
		out.LastStatus = status
		out.LastError = lastErr
		out.LastResponse = resp
		return out
	}
	retry := func(e *envelope.Envelope, status int, lastErr, resp string) *envelope.Envelope {
		out := failed(e, status, lastErr, resp)
		out.Retries = e.Retries + 1
		out.DueAt = now.Add(e.Delay)
		return &out
	}
	dead := func(e *envelope.Envelope, status int, lastErr, resp string) *envelope.Envelope {
		out := failed(e, status, lastErr, resp)
		out.Reason = envelope.ReasonMaxRetries
		out.DeadAt = now
		return &out
	}

	tests := []struct {
		name   string
		e      *envelope.Envelope
		r      Result
		action Action
		next   func(*envelope.Envelope) *envelope.Envelope
	}{
		{name: "200 acks", e: fresh(0, 3), r: Result{Status: 200, Body: []byte("ok")}, action: Ack},
		{name: "202 acks", e: fresh(0, 3), r: Result{Status: 202}, action: Ack},
		{name: "299 acks", e: fresh(0, 3), r: Result{Status: 299}, action: Ack},
		{name: "2xx on the last allowed attempt acks", e: fresh(3, 3), r: Result{Status: 200}, action: Ack},
		{name: "2xx past the limit still acks", e: fresh(9, 3), r: Result{Status: 204}, action: Ack},
		{
			name: "500 retries", e: fresh(0, 3), r: Result{Status: 500, Body: []byte("boom")}, action: Retry,
			next: func(e *envelope.Envelope) *envelope.Envelope { return retry(e, 500, "", "boom") },
		},
		{
			name: "199 is not success", e: fresh(0, 3), r: Result{Status: 199}, action: Retry,
			next: func(e *envelope.Envelope) *envelope.Envelope { return retry(e, 199, "", "") },
		},
		{
			name: "300 is not success", e: fresh(0, 3), r: Result{Status: 300}, action: Retry,
			next: func(e *envelope.Envelope) *envelope.Envelope { return retry(e, 300, "", "") },
		},
		{
			name: "429 retries", e: fresh(1, 3), r: Result{Status: 429}, action: Retry,
			next: func(e *envelope.Envelope) *envelope.Envelope { return retry(e, 429, "", "") },
		},
		{
			name: "network error retries", e: fresh(0, 3), r: Result{Err: errTimeout}, action: Retry,
			next: func(e *envelope.Envelope) *envelope.Envelope {
				return retry(e, 0, "context deadline exceeded", "")
			},
		},
		{
			name: "error with a 2xx status is a failure", e: fresh(0, 3), r: Result{Status: 200, Err: errTimeout}, action: Retry,
			next: func(e *envelope.Envelope) *envelope.Envelope {
				return retry(e, 200, "context deadline exceeded", "")
			},
		},
		{
			name: "failure below the limit retries", e: fresh(2, 3), r: Result{Status: 503}, action: Retry,
			next: func(e *envelope.Envelope) *envelope.Envelope { return retry(e, 503, "", "") },
		},
		{
			name: "failure at the limit dead-letters", e: fresh(3, 3), r: Result{Status: 500, Body: []byte("boom")}, action: DeadLetter,
			next: func(e *envelope.Envelope) *envelope.Envelope { return dead(e, 500, "", "boom") },
		},
		{
			name: "network error at the limit dead-letters", e: fresh(3, 3), r: Result{Err: errTimeout}, action: DeadLetter,
			next: func(e *envelope.Envelope) *envelope.Envelope {
				return dead(e, 0, "context deadline exceeded", "")
			},
		},
		{
			name: "MaxRetries 0 dead-letters on the first failure", e: fresh(0, 0), r: Result{Status: 500}, action: DeadLetter,
			next: func(e *envelope.Envelope) *envelope.Envelope { return dead(e, 500, "", "") },
		},
		{
			name: "MaxRetries 0 acks a success", e: fresh(0, 0), r: Result{Status: 200}, action: Ack,
		},
		{
			name: "failure past the limit dead-letters", e: fresh(7, 3), r: Result{Status: 500}, action: DeadLetter,
			next: func(e *envelope.Envelope) *envelope.Envelope { return dead(e, 500, "", "") },
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			before := clone(tt.e)
			d := Decide(tt.e, tt.r, now)
			if d.Action != tt.action {
				t.Fatalf("Action = %v, want %v", d.Action, tt.action)
			}
			var want *envelope.Envelope
			if tt.next != nil {
				want = tt.next(tt.e)
			}
			if !reflect.DeepEqual(d.Next, want) {
				t.Errorf("Next =\n%+v\nwant\n%+v", d.Next, want)
			}
			if !reflect.DeepEqual(tt.e, before) {
				t.Errorf("input modified:\n%+v\nwas\n%+v", tt.e, before)
			}
		})
	}
}

func TestDecideKeepsFirstAttempt(t *testing.T) {
	t.Parallel()
	first := now.Add(-time.Hour)
	e := fresh(1, 3)
	e.FirstAttemptAt = first
	e.LastAttemptAt = first
	e.LastError = "old error"
	e.LastResponse = "old response"

	d := Decide(e, Result{Status: 502}, now)
	if d.Action != Retry {
		t.Fatalf("Action = %v, want Retry", d.Action)
	}
	if !d.Next.FirstAttemptAt.Equal(first) {
		t.Errorf("FirstAttemptAt = %v, want %v", d.Next.FirstAttemptAt, first)
	}
	if !d.Next.LastAttemptAt.Equal(now) {
		t.Errorf("LastAttemptAt = %v, want %v", d.Next.LastAttemptAt, now)
	}
	// The previous attempt's error and response describe another call.
	if d.Next.LastError != "" || d.Next.LastResponse != "" {
		t.Errorf("LastError, LastResponse = %q, %q, want both cleared", d.Next.LastError, d.Next.LastResponse)
	}
	if e.LastError != "old error" {
		t.Errorf("input modified: LastError = %q", e.LastError)
	}
}

// TestDecideAttempts walks the documented example: X-Retries 0 and
// X-Max-Retries 3 deliver four times, then dead-letter.
func TestDecideAttempts(t *testing.T) {
	t.Parallel()
	e := fresh(0, 3)
	var delivered []int
	at := now
	for range 10 {
		delivered = append(delivered, e.Retries)
		d := Decide(e, Result{Status: 500}, at)
		if d.Action == DeadLetter {
			if d.Next.Reason != envelope.ReasonMaxRetries {
				t.Errorf("Reason = %q", d.Next.Reason)
			}
			if !d.Next.FirstAttemptAt.Equal(now) || !d.Next.LastAttemptAt.Equal(at) {
				t.Errorf("attempts %v..%v, want %v..%v", d.Next.FirstAttemptAt, d.Next.LastAttemptAt, now, at)
			}
			break
		}
		if d.Action != Retry {
			t.Fatalf("Action = %v", d.Action)
		}
		e = d.Next
		at = e.DueAt
	}
	if want := []int{0, 1, 2, 3}; !reflect.DeepEqual(delivered, want) {
		t.Errorf("delivered with X-Retries %v, want %v", delivered, want)
	}
}

func TestDecideSharesHeaderAndBody(t *testing.T) {
	t.Parallel()
	e := fresh(0, 3)
	d := Decide(e, Result{Status: 500}, now)
	// Sharing is documented; copying a 1 MiB body on every retry is waste.
	if &d.Next.Body[0] != &e.Body[0] {
		t.Error("Body was copied")
	}
	if reflect.ValueOf(d.Next.Header).UnsafePointer() != reflect.ValueOf(e.Header).UnsafePointer() {
		t.Error("Header was copied")
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
			d := Decide(fresh(0, 3), Result{Status: 500, Body: []byte(tt.body)}, now)
			got := d.Next.LastResponse
			if got != tt.want {
				t.Errorf("LastResponse has %d bytes %q..., want %d bytes", len(got), head(got), len(tt.want))
			}
			if len(got) > ResponseLimit {
				t.Errorf("LastResponse has %d bytes, over ResponseLimit", len(got))
			}
			if !utf8.ValidString(got) {
				t.Errorf("LastResponse is not valid UTF-8")
			}
		})
	}
}

func TestDecideTruncatesBinary(t *testing.T) {
	t.Parallel()
	// Continuation bytes only: no rune boundary to find, so the cut may move
	// back by at most a rune's length.
	body := []byte(strings.Repeat("\x80", 2*ResponseLimit))
	d := Decide(fresh(0, 3), Result{Status: 500, Body: body}, now)
	if n := len(d.Next.LastResponse); n < ResponseLimit-(utf8.UTFMax-1) || n > ResponseLimit {
		t.Errorf("LastResponse has %d bytes", n)
	}
}

func TestAdmit(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		retries int
		max     int
		action  Action
	}{
		{name: "fresh", retries: 0, max: 3, action: Retry},
		{name: "below the limit", retries: 2, max: 3, action: Retry},
		{name: "at the limit", retries: 3, max: 3, action: Retry},
		{name: "above the limit", retries: 4, max: 3, action: DeadLetter},
		{name: "MaxRetries 0, fresh", retries: 0, max: 0, action: Retry},
		{name: "MaxRetries 0, one made", retries: 1, max: 0, action: DeadLetter},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			e := fresh(tt.retries, tt.max)
			e.DueAt = time.Time{}
			before := clone(e)

			d := Admit(e, now)
			if d.Action != tt.action {
				t.Fatalf("Action = %v, want %v", d.Action, tt.action)
			}
			want := clone(e)
			switch tt.action {
			case Retry:
				want.DueAt = now.Add(e.Delay)
			case DeadLetter:
				want.Reason = envelope.ReasonMaxRetries
				want.DeadAt = now
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

func TestActionString(t *testing.T) {
	t.Parallel()
	for a, want := range map[Action]string{Ack: "ack", Retry: "retry", DeadLetter: "dead-letter", Action(9): "Action(9)"} {
		if got := a.String(); got != want {
			t.Errorf("%d.String() = %q, want %q", int(a), got, want)
		}
	}
}

// clone deep-copies e, so a test can tell whether the original changed.
func clone(e *envelope.Envelope) *envelope.Envelope {
	out := *e
	out.Header = e.Header.Clone()
	out.Body = append([]byte(nil), e.Body...)
	return &out
}

func head(s string) string {
	if len(s) > 16 {
		return s[:16]
	}
	return s
}
