package api

import (
	"errors"
	"fmt"
	"net/http"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/openfaas/mailbox/internal/envelope"
	"github.com/openfaas/mailbox/internal/queue"
)

// policyString shows a policy with its pointers followed, for messages.
func policyString(p envelope.Policy) string {
	show := func(v any) string {
		switch v := v.(type) {
		case *int:
			if v != nil {
				return fmt.Sprint(*v)
			}
		case *time.Duration:
			if v != nil {
				return v.String()
			}
		}
		return "unset"
	}
	return fmt.Sprintf("{MaxRetries:%s Delay:%s Backoff:%q MaxDelay:%s TTL:%s DeadLetterFunction:%q CallbackURL:%q}",
		show(p.MaxRetries), show(p.Delay), p.Backoff, show(p.MaxDelay), show(p.TTL), p.DeadLetterFunction, p.CallbackURL)
}

// metricsText returns what /metrics serves.
func (b *bundle) metricsText(t *testing.T) string {
	t.Helper()
	w := b.do(http.MethodGet, "/metrics", nil, nil)
	if w.Code != http.StatusOK {
		t.Fatalf("/metrics status = %d", w.Code)
	}
	return w.Body.String()
}

func wantMetric(t *testing.T, text, line string) {
	t.Helper()
	if !strings.Contains(text, line+"\n") {
		t.Errorf("metrics lack %q:\n%s", line, text)
	}
}

// TestRequeuePolicyHeaders: each policy header's value is stored in the
// envelope's Policy, which holds nothing the headers did not set.
func TestRequeuePolicyHeaders(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name   string
		header http.Header
		want   envelope.Policy
	}{
		{"backoff fixed", http.Header{envelope.HeaderBackoff: {"fixed"}}, envelope.Policy{Backoff: envelope.BackoffFixed}},
		{"backoff exponential", http.Header{envelope.HeaderBackoff: {"exponential"}}, envelope.Policy{Backoff: envelope.BackoffExponential}},
		{"max delay seconds", http.Header{envelope.HeaderMaxDelay: {"30"}}, envelope.Policy{MaxDelay: ptr(30 * time.Second)}},
		{"max delay duration", http.Header{envelope.HeaderMaxDelay: {"10m"}}, envelope.Policy{MaxDelay: ptr(10 * time.Minute)}},
		{"max delay at max_delay", http.Header{envelope.HeaderMaxDelay: {"1h"}}, envelope.Policy{MaxDelay: ptr(time.Hour)}},
		{"ttl seconds", http.Header{envelope.HeaderTTL: {"90"}}, envelope.Policy{TTL: ptr(90 * time.Second)}},
		{"ttl above max_delay", http.Header{envelope.HeaderTTL: {"720h"}}, envelope.Policy{TTL: ptr(720 * time.Hour)}},
		{"dead-letter function", http.Header{envelope.HeaderDeadLetterFunction: {"dlq"}}, envelope.Policy{DeadLetterFunction: "dlq"}},
		{"dead-letter function with namespace", http.Header{envelope.HeaderDeadLetterFunction: {"dlq.openfaas-fn"}}, envelope.Policy{DeadLetterFunction: "dlq.openfaas-fn"}},
		{"callback http", http.Header{envelope.HeaderCallbackURL: {"http://cb.example.com/hook"}}, envelope.Policy{CallbackURL: "http://cb.example.com/hook"}},
		{"callback https", http.Header{envelope.HeaderCallbackURL: {"https://cb.example.com:8443/x?y=1"}}, envelope.Policy{CallbackURL: "https://cb.example.com:8443/x?y=1"}},
		{
			"all",
			http.Header{
				envelope.HeaderMaxRetries: {"4"}, envelope.HeaderDelay: {"20"}, envelope.HeaderBackoff: {"fixed"},
				envelope.HeaderMaxDelay: {"30m"}, envelope.HeaderTTL: {"2h"},
				envelope.HeaderDeadLetterFunction: {"dlq"}, envelope.HeaderCallbackURL: {"https://cb/"},
			},
			envelope.Policy{
				MaxRetries: ptr(4), Delay: ptr(20 * time.Second), Backoff: envelope.BackoffFixed,
				MaxDelay: ptr(30 * time.Minute), TTL: ptr(2 * time.Hour), DeadLetterFunction: "dlq", CallbackURL: "https://cb/",
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			b := setup(t, nil)
			w := b.do(http.MethodPost, "/deadletter/fn", []byte("x"), tt.header)
			if w.Code != http.StatusAccepted {
				t.Fatalf("status = %d, want 202 (body %q)", w.Code, w.Body)
			}
			s, d := b.queue.stored()
			if len(s) != 1 || len(d) != 0 {
				t.Fatalf("stored %d scheduled and %d dead letters, want 1 and 0 (a scheduled message has no route or callback yet)", len(s), len(d))
			}
			e := s[0]
			if !reflect.DeepEqual(e.Policy, tt.want) {
				t.Fatalf("stored policy %s, want %s", policyString(e.Policy), policyString(tt.want))
			}
			if e.Kind != envelope.KindMessage {
				t.Errorf("stored kind %q, want a message", e.Kind)
			}
			// The stored policy survives the wire format.
			data, err := envelope.Encode(e)
			if err != nil {
				t.Fatal(err)
			}
			back, err := envelope.Decode(data)
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(back.Policy, tt.want) {
				t.Fatalf("decoded policy %s, want %s", policyString(back.Policy), policyString(tt.want))
			}
		})
	}
}

// TestRequeueBadPolicyHeaders: a bad or repeated policy header is a 400
// that names it, and nothing is stored.
func TestRequeueBadPolicyHeaders(t *testing.T) {
	t.Parallel()
	tests := []struct {
		field  string
		values []string
	}{
		{envelope.HeaderBackoff, []string{"linear"}},
		{envelope.HeaderBackoff, []string{""}},
		{envelope.HeaderBackoff, []string{"fixed", "exponential"}},
		{envelope.HeaderBackoff, []string{"fixed", "fixed"}},

		{envelope.HeaderMaxDelay, []string{"2h"}},
		{envelope.HeaderMaxDelay, []string{"3601"}},
		{envelope.HeaderMaxDelay, []string{"-1"}},
		{envelope.HeaderMaxDelay, []string{"later"}},
		{envelope.HeaderMaxDelay, []string{"1m", "2m"}},

		{envelope.HeaderTTL, []string{"0"}},
		{envelope.HeaderTTL, []string{"0s"}},
		{envelope.HeaderTTL, []string{"-5"}},
		{envelope.HeaderTTL, []string{"-1h"}},
		{envelope.HeaderTTL, []string{"forever"}},
		{envelope.HeaderTTL, []string{""}},
		{envelope.HeaderTTL, []string{"1h", "1h"}},

		{envelope.HeaderDeadLetterFunction, []string{"DLQ"}},
		{envelope.HeaderDeadLetterFunction, []string{"dl_q"}},
		{envelope.HeaderDeadLetterFunction, []string{"a.b.c"}},
		{envelope.HeaderDeadLetterFunction, []string{"a/b"}},
		{envelope.HeaderDeadLetterFunction, []string{"dlq-"}},
		{envelope.HeaderDeadLetterFunction, []string{strings.Repeat("a", 64)}},
		{envelope.HeaderDeadLetterFunction, []string{""}},
		{envelope.HeaderDeadLetterFunction, []string{"dlq", "dlq"}},

		{envelope.HeaderCallbackURL, []string{"/hook"}},
		{envelope.HeaderCallbackURL, []string{"cb.example.com/hook"}},
		{envelope.HeaderCallbackURL, []string{"ftp://cb.example.com/hook"}},
		{envelope.HeaderCallbackURL, []string{"mailto:ops@example.com"}},
		{envelope.HeaderCallbackURL, []string{"http://"}},
		{envelope.HeaderCallbackURL, []string{"http://%zz"}},
		{envelope.HeaderCallbackURL, []string{"not a url"}},
		{envelope.HeaderCallbackURL, []string{""}},
		{envelope.HeaderCallbackURL, []string{"http://a/", "http://b/"}},
	}
	for _, tt := range tests {
		t.Run(fmt.Sprintf("%s %q", tt.field, tt.values), func(t *testing.T) {
			t.Parallel()
			b := setup(t, nil)
			// The other headers are valid and would be stored, even as a
			// dead letter with a route and a callback.
			header := http.Header{
				envelope.HeaderRetries: {"4"}, envelope.HeaderMaxRetries: {"3"},
				envelope.HeaderDeadLetterFunction: {"dlq"}, envelope.HeaderCallbackURL: {"http://cb/"},
			}
			header[http.CanonicalHeaderKey(tt.field)] = tt.values
			w := b.do(http.MethodPost, "/deadletter/fn", []byte("x"), header)
			m := wantError(t, w, http.StatusBadRequest, tt.field)
			if msg := m["error"].(string); !strings.HasPrefix(msg, tt.field+": ") {
				t.Errorf("error %q does not start with %s", msg, tt.field)
			}
			if got := w.Header().Get(envelope.HeaderMessageID); got != "" {
				t.Errorf("%s = %q on a refused requeue, want none", envelope.HeaderMessageID, got)
			}
			wantNothingStored(t, b.queue)
		})
	}
}

// TestRequeuePolicyHeadersNotKept: the new control headers are stored as
// policy fields, not among the request headers replayed to the function.
func TestRequeuePolicyHeadersNotKept(t *testing.T) {
	t.Parallel()
	b := setup(t, nil)
	w := b.do(http.MethodPost, "/deadletter/fn", []byte("x"), http.Header{
		"Content-Type":                    {"text/plain"},
		"X-Custom":                        {"kept"},
		envelope.HeaderBackoff:            {"exponential"},
		envelope.HeaderMaxDelay:           {"10m"},
		envelope.HeaderTTL:                {"1h"},
		envelope.HeaderDeadLetterFunction: {"dlq"},
		envelope.HeaderCallbackURL:        {"http://cb/"},
	})
	if w.Code != http.StatusAccepted {
		t.Fatalf("status = %d, want 202 (body %q)", w.Code, w.Body)
	}
	s, _ := b.queue.stored()
	if len(s) != 1 {
		t.Fatalf("stored %d messages, want 1", len(s))
	}
	want := http.Header{"Content-Type": {"text/plain"}, "X-Custom": {"kept"}}
	if !reflect.DeepEqual(s[0].Header, want) {
		t.Fatalf("stored header %v, want %v", s[0].Header, want)
	}
}

// TestRequeueExponentialFirstDue: with exponential backoff the first
// delivery is due within the first window, [now, now+Delay) for a first
// retry, with full jitter; X-Retries already made widen it as Admit
// documents (Delay × 2^(retries-1)), capped by X-Max-Delay.
func TestRequeueExponentialFirstDue(t *testing.T) {
	t.Parallel()
	const runs = 100
	tests := []struct {
		name     string
		header   http.Header
		window   time.Duration
		wantWide time.Duration // some draw is at or above this
	}{
		{name: "no retries yet", header: http.Header{envelope.HeaderDelay: {"10"}}, window: 10 * time.Second},
		{name: "first retry", header: http.Header{envelope.HeaderRetries: {"1"}, envelope.HeaderDelay: {"10"}}, window: 10 * time.Second},
		{name: "default delay", header: http.Header{}, window: time.Minute},
		{
			name:     "third retry",
			header:   http.Header{envelope.HeaderRetries: {"3"}, envelope.HeaderDelay: {"10"}},
			window:   40 * time.Second,
			wantWide: 10 * time.Second,
		},
		{
			name:   "capped by X-Max-Delay",
			header: http.Header{envelope.HeaderRetries: {"3"}, envelope.HeaderDelay: {"10"}, envelope.HeaderMaxDelay: {"15"}},
			window: 15 * time.Second,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			b := setup(t, nil)
			tt.header[envelope.HeaderBackoff] = []string{"exponential"}
			seen := map[time.Time]bool{}
			wide := false
			for range runs {
				w := b.do(http.MethodPost, "/deadletter/fn", []byte("x"), tt.header)
				if w.Code != http.StatusAccepted {
					t.Fatalf("status = %d, want 202 (body %q)", w.Code, w.Body)
				}
				due, err := time.Parse(time.RFC3339Nano, decodeJSON(t, w)["due_at"].(string))
				if err != nil {
					t.Fatal(err)
				}
				if due.Before(testNow) || !due.Before(testNow.Add(tt.window)) {
					t.Fatalf("due_at %v outside [%v, %v)", due, testNow, testNow.Add(tt.window))
				}
				seen[due] = true
				if tt.wantWide > 0 && !due.Before(testNow.Add(tt.wantWide)) {
					wide = true
				}
			}
			s, _ := b.queue.stored()
			if len(s) != runs {
				t.Fatalf("stored %d messages, want %d", len(s), runs)
			}
			for _, e := range s {
				if !seen[e.DueAt] {
					t.Fatalf("stored DueAt %v is none of the answers' due_at", e.DueAt)
				}
				if e.Backoff != envelope.BackoffExponential {
					t.Fatalf("stored backoff %q, want exponential", e.Backoff)
				}
			}
			// Full jitter spreads the messages (100 equal draws from
			// [0, 1) do not happen).
			if len(seen) < 2 {
				t.Errorf("all %d messages are due at the same time: no jitter", runs)
			}
			if tt.wantWide > 0 && !wide {
				t.Errorf("no message due at or after %v: the window did not widen with X-Retries", tt.wantWide)
			}
		})
	}
}

// TestRequeueFixedBackoffIgnoresJitter: fixed backoff is due after exactly
// the delay, whatever X-Retries says.
func TestRequeueFixedBackoffIgnoresJitter(t *testing.T) {
	t.Parallel()
	b := setup(t, func(o *Options) { o.Defaults.Backoff = envelope.BackoffExponential })
	for _, retries := range []string{"0", "1", "5"} {
		w := b.do(http.MethodPost, "/deadletter/fn", nil, http.Header{
			envelope.HeaderRetries: {retries}, envelope.HeaderDelay: {"10"}, envelope.HeaderBackoff: {"fixed"},
		})
		if w.Code != http.StatusAccepted {
			t.Fatalf("status = %d, want 202 (body %q)", w.Code, w.Body)
		}
		if got, want := decodeJSON(t, w)["due_at"], testNow.Add(10*time.Second).UTC().Format(time.RFC3339Nano); got != want {
			t.Errorf("X-Retries %s: due_at %v, want %v", retries, got, want)
		}
	}
}

// TestRequeueDefaultBackoffExponential: the operator's default backoff
// applies when the header is absent, and is not stored in the message.
func TestRequeueDefaultBackoffExponential(t *testing.T) {
	t.Parallel()
	b := setup(t, func(o *Options) { o.Defaults.Backoff = envelope.BackoffExponential })
	seen := map[string]bool{}
	for range 50 {
		w := b.do(http.MethodPost, "/deadletter/fn", nil, http.Header{envelope.HeaderDelay: {"10"}})
		if w.Code != http.StatusAccepted {
			t.Fatalf("status = %d, want 202 (body %q)", w.Code, w.Body)
		}
		seen[decodeJSON(t, w)["due_at"].(string)] = true
	}
	if len(seen) < 2 {
		t.Errorf("default_backoff exponential: every message due at the same time")
	}
	s, _ := b.queue.stored()
	for _, e := range s {
		if e.Backoff != "" {
			t.Fatalf("stored backoff %q, want unset (the default is not baked in)", e.Backoff)
		}
		if e.DueAt.Before(testNow) || !e.DueAt.Before(testNow.Add(10*time.Second)) {
			t.Fatalf("DueAt %v outside [now, now+10s)", e.DueAt)
		}
	}
}

func TestRequeueTTL(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name        string
		defaultTTL  time.Duration
		header      http.Header
		wantExpired bool
		wantTTL     *time.Duration // stored
	}{
		{name: "shorter than the delay", header: http.Header{envelope.HeaderTTL: {"30"}}, wantExpired: true, wantTTL: ptr(30 * time.Second)},
		// Due exactly at expiry is too late.
		{name: "equal to the delay", header: http.Header{envelope.HeaderTTL: {"1m"}}, wantExpired: true, wantTTL: ptr(time.Minute)},
		{name: "longer than the delay", header: http.Header{envelope.HeaderTTL: {"61"}}, wantTTL: ptr(61 * time.Second)},
		{name: "shorter than a header delay", header: http.Header{envelope.HeaderTTL: {"5s"}, envelope.HeaderDelay: {"10s"}}, wantExpired: true, wantTTL: ptr(5 * time.Second)},
		{name: "zero delay", header: http.Header{envelope.HeaderTTL: {"1ms"}, envelope.HeaderDelay: {"0"}}, wantTTL: ptr(time.Millisecond)},
		{name: "default ttl", defaultTTL: 30 * time.Second, header: http.Header{}, wantExpired: true},
		{name: "header beats default ttl", defaultTTL: 30 * time.Second, header: http.Header{envelope.HeaderTTL: {"2m"}}, wantTTL: ptr(2 * time.Minute)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			b := setup(t, func(o *Options) { o.Defaults.TTL = tt.defaultTTL })
			tt.header[envelope.HeaderMessageID] = []string{"m-1"}
			w := b.do(http.MethodPost, "/deadletter/fn", []byte("late"), tt.header)
			s, d := b.queue.stored()
			if !tt.wantExpired {
				if w.Code != http.StatusAccepted {
					t.Fatalf("status = %d, want 202 (body %q)", w.Code, w.Body)
				}
				if len(s) != 1 || len(d) != 0 {
					t.Fatalf("stored %d scheduled and %d dead letters, want 1 and 0", len(s), len(d))
				}
				if !reflect.DeepEqual(s[0].TTL, tt.wantTTL) {
					t.Fatalf("stored policy %s, want TTL %v", policyString(s[0].Policy), *tt.wantTTL)
				}
				return
			}
			if w.Code != http.StatusOK {
				t.Fatalf("status = %d, want 200 (body %q)", w.Code, w.Body)
			}
			want := map[string]any{
				"status":      "dead-lettered",
				"reason":      envelope.ReasonExpired,
				"id":          "m-1",
				"function":    "fn",
				"retries":     float64(0),
				"max_retries": float64(10),
			}
			if m := decodeJSON(t, w); !reflect.DeepEqual(m, want) {
				t.Fatalf("body = %v, want %v", m, want)
			}
			if len(s) != 0 || len(d) != 1 {
				t.Fatalf("stored %d scheduled and %d dead letters, want 0 and 1", len(s), len(d))
			}
			e := d[0]
			if e.Reason != envelope.ReasonExpired || !e.DeadAt.Equal(testNow) || e.ID != "m-1" || string(e.Body) != "late" {
				t.Errorf("dead letter = %+v", e)
			}
			if !reflect.DeepEqual(e.TTL, tt.wantTTL) {
				t.Errorf("dead letter policy %s, want TTL %v", policyString(e.Policy), tt.wantTTL)
			}
			wantMetric(t, b.metricsText(t), `mailbox_dead_letters_total{function="fn",reason="expired"} 1`)
			wantMetric(t, b.metricsText(t), `mailbox_requeue_requests_total{code="200"} 1`)
		})
	}
}

// wantRoute checks the dead letter routed from dead to function fn.
func wantRoute(t *testing.T, route, dead *envelope.Envelope, fn string, wantHeader http.Header) {
	t.Helper()
	if route.ID != dead.ID+"-dl" || route.Function != fn || route.Kind != envelope.KindDeadLetter {
		t.Errorf("route id %q function %q kind %q, want %q, %q, %q", route.ID, route.Function, route.Kind, dead.ID+"-dl", fn, envelope.KindDeadLetter)
	}
	if string(route.Body) != string(dead.Body) {
		t.Errorf("route body %q, want the message's %q", route.Body, dead.Body)
	}
	if !route.AcceptedAt.Equal(testNow) || !route.DueAt.Equal(testNow) {
		t.Errorf("route AcceptedAt %v DueAt %v, want both %v (due now)", route.AcceptedAt, route.DueAt, testNow)
	}
	if route.Retries != 0 || !reflect.DeepEqual(route.Policy, envelope.Policy{}) || route.Reason != "" {
		t.Errorf("route retries %d policy %s reason %q, want a fresh message", route.Retries, policyString(route.Policy), route.Reason)
	}
	if !reflect.DeepEqual(route.Header, wantHeader) {
		t.Errorf("route header %v, want %v", route.Header, wantHeader)
	}
}

// TestRequeueDeadLetterRouted: a requeue past its retries with a
// dead-letter function (header or default) is stored as a dead letter and
// routed to that function.
func TestRequeueDeadLetterRouted(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name       string
		defaultDLF string
		header     http.Header
		wantFn     string
		wantReason string
		wantPolicy envelope.Policy
	}{
		{
			name:       "header",
			header:     http.Header{envelope.HeaderRetries: {"4"}, envelope.HeaderMaxRetries: {"3"}, envelope.HeaderDeadLetterFunction: {"dlq.fns"}},
			wantFn:     "dlq.fns",
			wantReason: envelope.ReasonMaxRetries,
			wantPolicy: envelope.Policy{MaxRetries: ptr(3), DeadLetterFunction: "dlq.fns"},
		},
		{
			name:       "default",
			defaultDLF: "dlq",
			header:     http.Header{envelope.HeaderRetries: {"4"}, envelope.HeaderMaxRetries: {"3"}},
			wantFn:     "dlq",
			wantReason: envelope.ReasonMaxRetries,
			wantPolicy: envelope.Policy{MaxRetries: ptr(3)},
		},
		{
			name:       "header beats default",
			defaultDLF: "dlq",
			header:     http.Header{envelope.HeaderRetries: {"11"}, envelope.HeaderDeadLetterFunction: {"other"}},
			wantFn:     "other",
			wantReason: envelope.ReasonMaxRetries,
			wantPolicy: envelope.Policy{DeadLetterFunction: "other"},
		},
		{
			name:       "expired",
			header:     http.Header{envelope.HeaderTTL: {"1s"}, envelope.HeaderDeadLetterFunction: {"dlq"}},
			wantFn:     "dlq",
			wantReason: envelope.ReasonExpired,
			wantPolicy: envelope.Policy{TTL: ptr(time.Second), DeadLetterFunction: "dlq"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			b := setup(t, func(o *Options) { o.Defaults.DeadLetterFunction = tt.defaultDLF })
			tt.header[envelope.HeaderMessageID] = []string{"m-1"}
			tt.header["Content-Type"] = []string{"text/plain"}
			w := b.do(http.MethodPost, "/deadletter/fn", []byte("spent"), tt.header)
			if w.Code != http.StatusOK {
				t.Fatalf("status = %d, want 200 (body %q)", w.Code, w.Body)
			}
			if m := decodeJSON(t, w); m["status"] != "dead-lettered" || m["reason"] != tt.wantReason || m["id"] != "m-1" {
				t.Fatalf("body = %v, want dead-lettered %s m-1", m, tt.wantReason)
			}
			s, d := b.queue.stored()
			if len(d) != 1 || len(s) != 1 {
				t.Fatalf("stored %d scheduled and %d dead letters, want the route and the dead letter", len(s), len(d))
			}
			dead := d[0]
			if dead.ID != "m-1" || dead.Function != "fn" || dead.Kind != envelope.KindMessage || dead.Reason != tt.wantReason {
				t.Errorf("dead letter id %q function %q kind %q reason %q", dead.ID, dead.Function, dead.Kind, dead.Reason)
			}
			if !reflect.DeepEqual(dead.Policy, tt.wantPolicy) {
				t.Errorf("dead letter policy %s, want %s", policyString(dead.Policy), policyString(tt.wantPolicy))
			}
			retries := "0"
			if v := tt.header[envelope.HeaderRetries]; len(v) == 1 {
				retries = v[0]
			}
			wantRoute(t, s[0], dead, tt.wantFn, http.Header{
				"Content-Type":                   {"text/plain"},
				envelope.HeaderDeadLetterReason:  {tt.wantReason},
				envelope.HeaderDeadLetterFrom:    {"fn"},
				envelope.HeaderDeadLetterTime:    {testNow.UTC().Format(time.RFC3339Nano)},
				envelope.HeaderDeadLetterRetries: {retries},
			})
			wantMetric(t, b.metricsText(t), fmt.Sprintf(`mailbox_dead_letters_total{function="fn",reason=%q} 1`, tt.wantReason))
		})
	}
}

// TestRequeueNoRouteWithoutDeadLetterFunction: without a dead-letter
// function a dead letter is only stored.
func TestRequeueNoRouteWithoutDeadLetterFunction(t *testing.T) {
	t.Parallel()
	b := setup(t, nil)
	w := b.do(http.MethodPost, "/deadletter/fn", nil, http.Header{envelope.HeaderRetries: {"11"}})
	if w.Code != http.StatusOK {
		t.Fatalf("status = %d, want 200 (body %q)", w.Code, w.Body)
	}
	if s, d := b.queue.stored(); len(s) != 0 || len(d) != 1 {
		t.Fatalf("stored %d scheduled and %d dead letters, want 0 and 1", len(s), len(d))
	}
}

// TestRequeueCallback: a message dead-lettered at admission with a callback
// URL schedules its callback; a scheduled message does not yet.
func TestRequeueCallback(t *testing.T) {
	t.Parallel()

	t.Run("dead-lettered", func(t *testing.T) {
		t.Parallel()
		b := setup(t, nil)
		w := b.do(http.MethodPost, "/deadletter/fn", []byte("work"), http.Header{
			envelope.HeaderRetries: {"4"}, envelope.HeaderMaxRetries: {"3"}, envelope.HeaderMessageID: {"m-1"},
			envelope.HeaderCallbackURL: {"https://cb.example.com/done"},
		})
		if w.Code != http.StatusOK {
			t.Fatalf("status = %d, want 200 (body %q)", w.Code, w.Body)
		}
		s, d := b.queue.stored()
		if len(s) != 1 || len(d) != 1 {
			t.Fatalf("stored %d scheduled and %d dead letters, want the callback and the dead letter", len(s), len(d))
		}
		if d[0].ID != "m-1" || d[0].CallbackURL != "https://cb.example.com/done" {
			t.Errorf("dead letter id %q policy %s", d[0].ID, policyString(d[0].Policy))
		}
		cb := s[0]
		if cb.ID != "m-1-cb" || cb.Kind != envelope.KindCallback || cb.Function != "fn" {
			t.Errorf("callback id %q kind %q function %q, want m-1-cb, %q, fn", cb.ID, cb.Kind, cb.Function, envelope.KindCallback)
		}
		if !reflect.DeepEqual(cb.Policy, envelope.Policy{CallbackURL: "https://cb.example.com/done"}) {
			t.Errorf("callback policy %s, want only the URL", policyString(cb.Policy))
		}
		if !cb.DueAt.Equal(testNow) || !cb.AcceptedAt.Equal(testNow) {
			t.Errorf("callback AcceptedAt %v DueAt %v, want both %v (due now)", cb.AcceptedAt, cb.DueAt, testNow)
		}
		for name, want := range map[string]string{
			envelope.HeaderOutcome:          envelope.OutcomeDeadLettered,
			envelope.HeaderFunctionName:     "fn",
			envelope.HeaderMessageID:        "m-1",
			envelope.HeaderDeadLetterReason: envelope.ReasonMaxRetries,
			// X-Retries counts the attempts already made; the
			// mailbox made none more.
			envelope.HeaderAttempts: "4",
		} {
			if got := cb.Header.Get(name); got != want {
				t.Errorf("callback %s = %q, want %q", name, got, want)
			}
		}
		if got := cb.Header.Get(envelope.HeaderFunctionStatus); got != "" {
			t.Errorf("callback %s = %q, want none: no call was made", envelope.HeaderFunctionStatus, got)
		}
		if len(cb.Body) != 0 {
			t.Errorf("callback body %q, want empty: no call was made", cb.Body)
		}
	})

	t.Run("route and callback", func(t *testing.T) {
		t.Parallel()
		b := setup(t, nil)
		w := b.do(http.MethodPost, "/deadletter/fn", nil, http.Header{
			envelope.HeaderTTL: {"1s"}, envelope.HeaderMessageID: {"m-1"},
			envelope.HeaderDeadLetterFunction: {"dlq"}, envelope.HeaderCallbackURL: {"http://cb/"},
		})
		if w.Code != http.StatusOK {
			t.Fatalf("status = %d, want 200 (body %q)", w.Code, w.Body)
		}
		s, d := b.queue.stored()
		if len(s) != 2 || len(d) != 1 {
			t.Fatalf("stored %d scheduled and %d dead letters, want 2 and 1", len(s), len(d))
		}
		if s[0].ID != "m-1-dl" || s[1].ID != "m-1-cb" {
			t.Errorf("scheduled %q and %q, want m-1-dl and m-1-cb", s[0].ID, s[1].ID)
		}
		if got := s[1].Header.Get(envelope.HeaderDeadLetterReason); got != envelope.ReasonExpired {
			t.Errorf("callback %s = %q, want expired", envelope.HeaderDeadLetterReason, got)
		}
	})

	t.Run("scheduled", func(t *testing.T) {
		t.Parallel()
		b := setup(t, nil)
		w := b.do(http.MethodPost, "/deadletter/fn", nil, http.Header{envelope.HeaderCallbackURL: {"http://cb/"}})
		if w.Code != http.StatusAccepted {
			t.Fatalf("status = %d, want 202 (body %q)", w.Code, w.Body)
		}
		s, d := b.queue.stored()
		if len(s) != 1 || len(d) != 0 || s[0].Kind != envelope.KindMessage || s[0].CallbackURL != "http://cb/" {
			t.Fatalf("stored %d scheduled (%+v) and %d dead letters, want only the message", len(s), s, len(d))
		}
	})
}

// TestRequeueRoutedDeadLetter: a request carrying X-Dead-Letter-From is a
// dead letter a dead-letter function requeued. It is stored as kind
// dead-letter, and past its retries it is only stored: never routed again
// (no cycles), and no callback.
func TestRequeueRoutedDeadLetter(t *testing.T) {
	t.Parallel()
	routedHeader := func() http.Header {
		return http.Header{
			envelope.HeaderDeadLetterFrom:     {"fn"},
			envelope.HeaderDeadLetterReason:   {envelope.ReasonMaxRetries},
			envelope.HeaderDeadLetterFunction: {"dlq"},
			envelope.HeaderCallbackURL:        {"http://cb/"},
			envelope.HeaderMessageID:          {"m-1-dl"},
		}
	}

	t.Run("past its retries", func(t *testing.T) {
		t.Parallel()
		b := setup(t, func(o *Options) { o.Defaults.DeadLetterFunction = "dlq" })
		h := routedHeader()
		h[envelope.HeaderRetries] = []string{"4"}
		h[envelope.HeaderMaxRetries] = []string{"3"}
		w := b.do(http.MethodPost, "/deadletter/dlq", []byte("x"), h)
		if w.Code != http.StatusOK {
			t.Fatalf("status = %d, want 200 (body %q)", w.Code, w.Body)
		}
		s, d := b.queue.stored()
		if len(s) != 0 {
			t.Fatalf("scheduled %d messages (%+v), want none: a routed dead letter is not routed or called back", len(s), s)
		}
		if len(d) != 1 || d[0].ID != "m-1-dl" || d[0].Kind != envelope.KindDeadLetter || d[0].Reason != envelope.ReasonMaxRetries {
			t.Fatalf("dead letters %+v, want m-1-dl of kind dead-letter, reason max-retries", d)
		}
	})

	t.Run("expired", func(t *testing.T) {
		t.Parallel()
		b := setup(t, nil)
		h := routedHeader()
		h[envelope.HeaderTTL] = []string{"1s"}
		w := b.do(http.MethodPost, "/deadletter/dlq", []byte("x"), h)
		if w.Code != http.StatusOK {
			t.Fatalf("status = %d, want 200 (body %q)", w.Code, w.Body)
		}
		if s, d := b.queue.stored(); len(s) != 0 || len(d) != 1 || d[0].Kind != envelope.KindDeadLetter {
			t.Fatalf("stored %d scheduled and %d dead letters (%+v), want only a dead letter of kind dead-letter", len(s), len(d), d)
		}
	})

	t.Run("scheduled", func(t *testing.T) {
		t.Parallel()
		b := setup(t, nil)
		w := b.do(http.MethodPost, "/deadletter/dlq", []byte("x"), routedHeader())
		if w.Code != http.StatusAccepted {
			t.Fatalf("status = %d, want 202 (body %q)", w.Code, w.Body)
		}
		s, d := b.queue.stored()
		if len(s) != 1 || len(d) != 0 || s[0].Kind != envelope.KindDeadLetter {
			t.Fatalf("stored %+v and %d dead letters, want one message of kind dead-letter", s, len(d))
		}
		// The dead-letter function sees on each delivery where the
		// message came from.
		if got := s[0].Header.Get(envelope.HeaderDeadLetterFrom); got != "fn" {
			t.Errorf("stored %s = %q, want fn", envelope.HeaderDeadLetterFrom, got)
		}
	})
}

// TestRequeueRouteOrCallbackFails: Store schedules the route and the
// callback before it stores the dead letter. If scheduling them fails, the
// caller gets the queue error and the dead letter itself is not stored, so
// a retried request decides again: a duplicate at worst, never a loss.
func TestRequeueRouteOrCallbackFails(t *testing.T) {
	t.Parallel()
	failID := func(id string, err error) func(*envelope.Envelope) error {
		return func(e *envelope.Envelope) error {
			if e.ID == id {
				return err
			}
			return nil
		}
	}
	tests := []struct {
		name           string
		header         http.Header
		fails          func(*envelope.Envelope) error
		deadErr        error
		want           int
		wantScheduled  []string // ids left scheduled
		wantRetryAfter string
	}{
		{
			name:           "route unavailable",
			header:         http.Header{envelope.HeaderDeadLetterFunction: {"dlq"}},
			fails:          failID("m-1-dl", fmt.Errorf("publish: %w", queue.ErrUnavailable)),
			want:           http.StatusServiceUnavailable,
			wantRetryAfter: "5",
		},
		{
			name:   "route too large",
			header: http.Header{envelope.HeaderDeadLetterFunction: {"dlq"}},
			fails:  failID("m-1-dl", queue.ErrTooLarge),
			want:   http.StatusRequestEntityTooLarge,
		},
		{
			name:           "callback unavailable",
			header:         http.Header{envelope.HeaderCallbackURL: {"http://cb/"}},
			fails:          failID("m-1-cb", errors.New("nats: timeout")),
			want:           http.StatusServiceUnavailable,
			wantRetryAfter: "5",
		},
		{
			name:           "callback fails after the route",
			header:         http.Header{envelope.HeaderDeadLetterFunction: {"dlq"}, envelope.HeaderCallbackURL: {"http://cb/"}},
			fails:          failID("m-1-cb", queue.ErrUnavailable),
			want:           http.StatusServiceUnavailable,
			wantScheduled:  []string{"m-1-dl"},
			wantRetryAfter: "5",
		},
		{
			name:           "dead letter fails after the route and callback",
			header:         http.Header{envelope.HeaderDeadLetterFunction: {"dlq"}, envelope.HeaderCallbackURL: {"http://cb/"}},
			deadErr:        queue.ErrUnavailable,
			want:           http.StatusServiceUnavailable,
			wantScheduled:  []string{"m-1-dl", "m-1-cb"},
			wantRetryAfter: "5",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			b := setup(t, nil)
			b.queue.scheduleFails, b.queue.deadErr = tt.fails, tt.deadErr
			tt.header[envelope.HeaderRetries] = []string{"4"}
			tt.header[envelope.HeaderMaxRetries] = []string{"3"}
			tt.header[envelope.HeaderMessageID] = []string{"m-1"}
			w := b.do(http.MethodPost, "/deadletter/fn", []byte("x"), tt.header)
			wantError(t, w, tt.want, "")
			if got := w.Header().Get("Retry-After"); got != tt.wantRetryAfter {
				t.Errorf("Retry-After = %q, want %q", got, tt.wantRetryAfter)
			}
			if got := w.Header().Get(envelope.HeaderMessageID); got != "" {
				t.Errorf("%s = %q on a failed requeue, want none", envelope.HeaderMessageID, got)
			}
			s, d := b.queue.stored()
			if len(d) != 0 {
				t.Fatalf("dead letter stored although its route or callback was not: %+v", d)
			}
			var ids []string
			for _, e := range s {
				ids = append(ids, e.ID)
			}
			if !reflect.DeepEqual(ids, tt.wantScheduled) {
				t.Fatalf("scheduled %q, want %q", ids, tt.wantScheduled)
			}
			text := b.metricsText(t)
			wantMetric(t, text, fmt.Sprintf(`mailbox_requeue_requests_total{code="%d"} 1`, tt.want))
			// Nothing was stored, so nothing is counted.
			if strings.Contains(text, "mailbox_dead_letters_total{") || strings.Contains(text, "mailbox_received_total{") {
				t.Fatalf("a refused requeue was counted:\n%s", text)
			}
		})
	}
}
