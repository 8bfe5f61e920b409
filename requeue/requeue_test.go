package requeue_test

// These tests requeue through a real mailbox (the requeue API and the
// connector on an embedded JetStream server) over HTTP.

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/openfaas/mailbox/internal/config"
	"github.com/openfaas/mailbox/internal/mailboxtest"
	"github.com/openfaas/mailbox/internal/poll"
	"github.com/openfaas/mailbox/internal/service"
	"github.com/openfaas/mailbox/requeue"
)

// delivery is one call the mailbox made to the test's function.
type delivery struct {
	header http.Header
	body   string
}

// recorder is a function that records what the mailbox delivers to it.
func recorder() (http.Handler, <-chan delivery) {
	got := make(chan delivery, 16)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		got <- delivery{header: r.Header.Clone(), body: string(b)}
	}), got
}

// incoming is the request a function is handling, with headers as pairs.
func incoming(headers ...string) *http.Request {
	r := httptest.NewRequest(http.MethodPost, "/", nil)
	for i := 0; i+1 < len(headers); i += 2 {
		r.Header.Add(headers[i], headers[i+1])
	}
	return r
}

var messageID = regexp.MustCompile(`^[0-9a-f]{32}$`)

func TestFirstRequeueIsScheduledAndDelivered(t *testing.T) {
	t.Parallel()
	fn, got := recorder()
	m := mailboxtest.Start(t, mailboxtest.Options{Functions: map[string]http.Handler{"fn": fn}})

	r := incoming("Content-Type", "application/json", "X-Not-Kept", "x")
	before := time.Now()
	res, err := requeue.Request(t.Context(), nil, m.URL, "fn", r, []byte(`{"n":1}`),
		requeue.WithDefaultMaxRetries(3), requeue.WithDefaultDelay(200*time.Millisecond))
	if err != nil {
		t.Fatalf("Request = %v", err)
	}
	if res.Status != requeue.StatusScheduled || !messageID.MatchString(res.ID) || res.Function != "fn" ||
		res.Retries != 1 || res.MaxRetries != 3 || res.Reason != "" {
		t.Fatalf("Result = %+v, want scheduled for fn with a new id, retries 1 of 3", res)
	}
	if due := res.DueAt.Sub(before); due < 200*time.Millisecond || due > 5*time.Second {
		t.Fatalf("DueAt is %s after the request, want about 200ms", due)
	}

	select {
	case d := <-got:
		want := map[string]string{
			"X-Retries": "1", "X-Max-Retries": "3", "X-Delay-Duration": "200ms",
			"X-Mailbox-Message-Id": res.ID, "Content-Type": "application/json", "X-Not-Kept": "",
		}
		for k, v := range want {
			if d.header.Get(k) != v {
				t.Errorf("delivered %s = %q, want %q", k, d.header.Get(k), v)
			}
		}
		if d.body != `{"n":1}` {
			t.Errorf("delivered body %q", d.body)
		}
	case <-time.After(15 * time.Second):
		t.Fatal("the mailbox did not deliver the message")
	}
}

func TestRequeueOfADeliveryKeepsItsIDAndCountsTheAttempt(t *testing.T) {
	t.Parallel()
	m := mailboxtest.Start(t, mailboxtest.Options{})
	r := incoming("X-Retries", "1", "X-Max-Retries", "3", "X-Delay-Duration", "90",
		"X-Mailbox-Message-Id", "order-42", "Content-Type", "text/plain")
	res, err := requeue.Request(t.Context(), http.DefaultClient, m.URL+"/", "fn.openfaas-fn", r, []byte("work"),
		requeue.WithDefaultDelay(time.Second), requeue.TrustIncoming())
	if err != nil {
		t.Fatalf("Request = %v", err)
	}
	if res.ID != "order-42" || res.Retries != 2 || res.MaxRetries != 3 || res.Function != "fn.openfaas-fn" {
		t.Fatalf("Result = %+v, want order-42, retries 2 of 3, fn.openfaas-fn", res)
	}
	if until := time.Until(res.DueAt); until < 80*time.Second || until > 91*time.Second {
		t.Fatalf("due in %s, want the carried-over 90s", until)
	}
}

func TestRetriesSpentIsErrMaxRetries(t *testing.T) {
	t.Parallel()
	m := mailboxtest.Start(t, mailboxtest.Options{})
	r := incoming("X-Retries", "3", "X-Max-Retries", "3", "X-Mailbox-Message-Id", "spent")
	res, err := requeue.Request(t.Context(), nil, m.URL, "fn", r, []byte("last try"), requeue.TrustIncoming())
	if !errors.Is(err, requeue.ErrMaxRetries) {
		t.Fatalf("Request = %+v, %v; want ErrMaxRetries", res, err)
	}
	if res.Status != requeue.StatusDeadLettered || res.Reason != requeue.ReasonMaxRetries ||
		res.ID != "spent" || res.Retries != 4 || res.MaxRetries != 3 || !res.DueAt.IsZero() {
		t.Fatalf("Result = %+v, want dead-lettered spent, retries 4 of 3, no due time", res)
	}
	for _, want := range []string{"spent", "4", "3"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not mention %q", err, want)
		}
	}
	poll.Until(t, 10*time.Second, "the dead letter is stored", func() bool {
		for _, e := range m.DeadLetters(t) {
			if e.ID == "spent" && string(e.Body) == "last try" && e.Reason == "max-retries" {
				return true
			}
		}
		return false
	})
}

func TestRefusalCarriesTheMailboxsMessage(t *testing.T) {
	t.Parallel()
	m := mailboxtest.Start(t, mailboxtest.Options{})
	for _, tc := range []struct {
		name     string
		function string
		r        *http.Request
		body     []byte
		status   int
		field    string
		message  string
	}{
		{"limit exceeded", "fn", incoming("X-Max-Retries", "20000"), nil, 400, "X-Max-Retries", "above the limit"},
		{"bad carried delay", "fn", incoming("X-Delay-Duration", "soon"), nil, 400, "X-Delay-Duration", "soon"},
		{"bad message id", "fn", incoming("X-Mailbox-Message-Id", "a b"), nil, 400, "X-Mailbox-Message-Id", "must be"},
		{"bad function name", "-fn", incoming(), nil, 400, "path", "DNS-1123"},
		{"body too large", "fn", incoming(), make([]byte, 2<<20), 413, "", "larger than the limit"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			_, err := requeue.Request(t.Context(), nil, m.URL, tc.function, tc.r, tc.body, requeue.TrustIncoming())
			rerr, ok := errors.AsType[*requeue.Error](err)
			if !ok {
				t.Fatalf("Request = %v, want a *requeue.Error", err)
			}
			if rerr.StatusCode != tc.status || rerr.Field != tc.field || !strings.Contains(rerr.Message, tc.message) {
				t.Fatalf("Error = %+v, want %d, field %q, message containing %q", rerr, tc.status, tc.field, tc.message)
			}
			if !strings.Contains(err.Error(), rerr.Message) {
				t.Fatalf("Error() = %q does not carry the message", err)
			}
		})
	}
}

func TestUnavailableMailboxSaysWhenToRetry(t *testing.T) {
	t.Parallel()
	// A port that was free a moment ago: no NATS server listens there.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	natsURL := "nats://" + ln.Addr().String()
	ln.Close()
	env := map[string]string{"backend": "jetstream", "nats_url": natsURL}
	cfg, err := config.Load(func(k string) (string, bool) { v, ok := env[k]; return v, ok }, nil)
	if err != nil {
		t.Fatal(err)
	}
	quiet := slog.New(slog.DiscardHandler)
	reg := prometheus.NewRegistry()
	q, err := service.OpenQueue(cfg, reg, quiet)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = q.Close() })
	h, err := service.API(cfg, q, reg, nil, quiet)
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)

	_, err = requeue.Request(t.Context(), nil, srv.URL, "fn", incoming(), []byte("x"))
	rerr, ok := errors.AsType[*requeue.Error](err)
	if !ok || rerr.StatusCode != http.StatusServiceUnavailable || rerr.RetryAfter != 5*time.Second {
		t.Fatalf("Request = %v (%+v), want a 503 *requeue.Error with RetryAfter 5s", err, rerr)
	}
}

func TestThroughTheGateway(t *testing.T) {
	t.Parallel()
	m := mailboxtest.Start(t, mailboxtest.Options{})
	res, err := requeue.Request(t.Context(), nil, m.GatewayURL+"/function/mailbox", "fn", incoming(), nil)
	if err != nil || res.Status != requeue.StatusScheduled {
		t.Fatalf("Request through the gateway = %+v, %v; want scheduled", res, err)
	}
	// A gateway without the mailbox deployed answers in plain text.
	_, err = requeue.Request(t.Context(), nil, m.GatewayURL+"/function/not-deployed", "fn", incoming(), nil)
	rerr, ok := errors.AsType[*requeue.Error](err)
	if !ok || rerr.StatusCode != http.StatusNotFound || rerr.Message != "error finding function not-deployed" {
		t.Fatalf("Request to a missing mailbox = %v (%+v), want a 404 with the gateway's text", err, rerr)
	}
}

func TestUnexpectedAnswers(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name   string
		status int
		body   string
		want   string
	}{
		{"2xx that is not the mailbox's", http.StatusNoContent, "", "unexpected answer 204"},
		{"202 that is not JSON", http.StatusAccepted, "<html>", "not the mailbox's JSON"},
		{"202 that is not scheduled", http.StatusAccepted, `{"status":"queued"}`, `status "queued"`},
		{"200 that is not a dead letter", http.StatusOK, `{"status":"ok"}`, `status "ok"`},
		{"dead letter for another reason", http.StatusOK, `{"status":"dead-lettered","reason":"malformed","id":"x"}`, `reason "malformed"`},
		{"redirect", http.StatusFound, "", "unexpected answer 302"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				w.WriteHeader(tc.status)
				_, _ = io.WriteString(w, tc.body)
			}))
			t.Cleanup(srv.Close)
			noRedirects := &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
			_, err := requeue.Request(t.Context(), noRedirects, srv.URL, "fn", incoming(), nil)
			if err == nil || errors.Is(err, requeue.ErrMaxRetries) || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Request = %v, want an error containing %q", err, tc.want)
			}
		})
	}
}

func TestRequestChecksItsArguments(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name, url, function string
		r                   *http.Request
		want                string
	}{
		{"no request", "http://127.0.0.1:1", "fn", nil, "no request"},
		{"relative URL", "gateway/function/mailbox", "fn", incoming(), "not an http"},
		{"other scheme", "nats://127.0.0.1:4222", "fn", incoming(), "not an http"},
		{"query", "http://127.0.0.1:1/?a=b", "fn", incoming(), "query"},
		{"empty function", "http://127.0.0.1:1", "", incoming(), "name or name.namespace"},
		{"function with a slash", "http://127.0.0.1:1", "fn/../x", incoming(), "name or name.namespace"},
		{"bad incoming header", "http://127.0.0.1:1", "fn", incoming("X-Retries", "x"), "X-Retries"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			_, err := requeue.Request(context.Background(), nil, tc.url, tc.function, tc.r, nil, requeue.TrustIncoming())
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Request = %v, want an error containing %q", err, tc.want)
			}
		})
	}
}

func TestNoAnswer(t *testing.T) {
	t.Parallel()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	_, err = requeue.Request(t.Context(), nil, "http://"+addr, "fn", incoming(), nil)
	if err == nil || !strings.Contains(err.Error(), "POST http://"+addr+"/deadletter/fn") {
		t.Fatalf("Request = %v, want an error naming the POST", err)
	}
}

func TestRetryAfter(t *testing.T) {
	t.Parallel()
	now := time.Date(2026, 11, 23, 10, 0, 0, 0, time.UTC)
	for v, want := range map[string]time.Duration{
		"":                              0,
		"30":                            30 * time.Second,
		" 2 ":                           2 * time.Second,
		"0":                             0,
		"-3":                            0,
		"soon":                          0,
		"Mon, 23 Nov 2026 10:01:30 GMT": 90 * time.Second,
		"Mon, 23 Nov 2026 09:59:00 GMT": 0, // already past
	} {
		if got := requeue.RetryAfter(v, now); got != want {
			t.Errorf("RetryAfter(%q) = %s, want %s", v, got, want)
		}
	}
}

func TestTokenIsSentAndNeeded(t *testing.T) {
	t.Parallel()
	fn, got := recorder()
	m := mailboxtest.Start(t, mailboxtest.Options{Token: "s3cret", Functions: map[string]http.Handler{"fn": fn}})

	_, err := requeue.Request(t.Context(), nil, m.URL, "fn", incoming("Authorization", "Bearer the-callers-own"), []byte("x"), requeue.WithDelay(0))
	if rerr, ok := errors.AsType[*requeue.Error](err); !ok || rerr.StatusCode != http.StatusUnauthorized || rerr.Field != "Authorization" {
		t.Fatalf("Request without WithToken = %v, want a 401 naming Authorization", err)
	}
	res, err := requeue.Request(t.Context(), nil, m.URL, "fn", incoming(), []byte("x"), requeue.WithDelay(0), requeue.WithToken("s3cret\n"))
	if err != nil || res.Status != requeue.StatusScheduled {
		t.Fatalf("Request with WithToken = %+v, %v", res, err)
	}
	select {
	case d := <-got:
		if a := d.header.Get("Authorization"); a != "" {
			t.Fatalf("the function received the mailbox's token: Authorization %q", a)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("the message was not delivered")
	}
	if _, err := requeue.Header(nil, requeue.WithToken(" ")); err == nil {
		t.Fatal("WithToken with an empty token: no error")
	}
}

// TestSignedDeliveryUnderTheOtherName: a delivery signed for
// fn.openfaas-fn, requeued by the function as fn, is one function's: its
// id and limits are carried over, as the mailbox counts the two names as
// one.
func TestSignedDeliveryUnderTheOtherName(t *testing.T) {
	t.Parallel()
	m := mailboxtest.Start(t, mailboxtest.Options{Token: token})
	r := incoming("X-Retries", "1", "X-Max-Retries", "3", "X-Mailbox-Message-Id", "order-7",
		requeue.HeaderFunction, "fn.openfaas-fn")
	signAsTheMailbox(r.Header, []byte("work"), token)
	res, err := requeue.Request(t.Context(), http.DefaultClient, m.URL+"/", "fn", r, []byte("work"),
		requeue.WithToken(token), requeue.WithDelay(time.Hour))
	if err != nil {
		t.Fatalf("Request = %v", err)
	}
	if res.ID != "order-7" || res.Retries != 2 || res.MaxRetries != 3 {
		t.Fatalf("Result = %+v, want order-7, retries 2 of 3", res)
	}
}
