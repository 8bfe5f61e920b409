package function

import (
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/openfaas/mailbox/internal/mailboxtest"
	"github.com/openfaas/mailbox/internal/poll"
)

// api stands in for the rate-limited API: answer decides the status of
// call n (from 1) and may set headers.
type api struct {
	srv *httptest.Server

	mu     sync.Mutex
	bodies []string
}

func startAPI(t *testing.T, answer func(n int, w http.ResponseWriter) int) *api {
	t.Helper()
	a := &api{}
	a.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		a.mu.Lock()
		a.bodies = append(a.bodies, r.Header.Get("Content-Type")+" "+string(b))
		n := len(a.bodies)
		a.mu.Unlock()
		w.WriteHeader(answer(n, w))
		_, _ = io.WriteString(w, "api answer "+string(b))
	}))
	t.Cleanup(a.srv.Close)
	return a
}

func (a *api) calls() []string {
	a.mu.Lock()
	defer a.mu.Unlock()
	return append([]string(nil), a.bodies...)
}

// recorded is a function that records its own answers.
type recorded struct {
	h http.Handler

	mu      sync.Mutex
	answers []seen
}

type seen struct {
	retries string // X-Retries of the request
	code    int
	answer  answer
}

func (f *recorded) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	rec := httptest.NewRecorder()
	f.h.ServeHTTP(rec, r)
	var a answer
	_ = json.Unmarshal(rec.Body.Bytes(), &a)
	f.mu.Lock()
	f.answers = append(f.answers, seen{retries: r.Header.Get("X-Retries"), code: rec.Code, answer: a})
	f.mu.Unlock()
	for k, v := range rec.Header() {
		w.Header()[k] = v
	}
	w.WriteHeader(rec.Code)
	_, _ = w.Write(rec.Body.Bytes())
}

func (f *recorded) replies() []seen {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]seen(nil), f.answers...)
}

// deploy runs the function behind a mailbox's stand-in gateway, as
// "ratelimited", and returns it with the mailbox.
func deploy(t *testing.T, apiURL string, env ...string) (*recorded, *mailboxtest.Mailbox) {
	t.Helper()
	fn := &recorded{}
	// A mailbox with a token, as the example is meant to be deployed:
	// requeues signed, deliveries verified.
	const token = "ratelimited-test-token"
	tokenFile := filepath.Join(t.TempDir(), "mailbox-token")
	if err := os.WriteFile(tokenFile, []byte(token+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	m := mailboxtest.Start(t, mailboxtest.Options{Token: token, Functions: map[string]http.Handler{"ratelimited": fn}})
	environ := append([]string{
		"api_url=" + apiURL,
		"mailbox_url=" + m.GatewayURL + "/function/mailbox",
		"function_name=ratelimited",
		"mailbox_token_file=" + tokenFile,
	}, env...)
	h, closeFn, err := New(environ, io.Discard)
	if err != nil {
		t.Fatalf("New = %v", err)
	}
	t.Cleanup(func() { _ = closeFn() })
	fn.h = h
	t.Cleanup(func() {
		if t.Failed() {
			for _, dl := range m.DeadLetters(t) {
				t.Logf("dead letter: %+v", dl)
			}
		}
	})
	return fn, m
}

func post(t *testing.T, url, contentType, body string) (int, answer, http.Header) {
	t.Helper()
	res, err := http.Post(url, contentType, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	var a answer
	if err := json.NewDecoder(res.Body).Decode(&a); err != nil {
		t.Fatalf("answer %d is not JSON: %v", res.StatusCode, err)
	}
	return res.StatusCode, a, res.Header
}

func TestRateLimitedWorkIsRequeuedAndDoneLater(t *testing.T) {
	t.Parallel()
	a := startAPI(t, func(n int, w http.ResponseWriter) int {
		if n == 1 {
			return http.StatusTooManyRequests // no Retry-After: requeue_delay applies
		}
		return http.StatusOK
	})
	fn, m := deploy(t, a.srv.URL, "requeue_delay=100ms", "requeue_max_retries=3")

	code, got, h := post(t, m.GatewayURL+"/function/ratelimited", "application/json", `{"job":1}`)
	if code != http.StatusAccepted || got.Status != "requeued" || got.ID == "" || got.Retries != 1 || got.MaxRetries != 3 {
		t.Fatalf("first call answered %d %+v, want 202 requeued, retries 1 of 3", code, got)
	}
	if h.Get("X-Mailbox-Message-Id") != got.ID {
		t.Fatalf("X-Mailbox-Message-Id %q, want %q", h.Get("X-Mailbox-Message-Id"), got.ID)
	}

	poll.Until(t, 15*time.Second, "the mailbox called the function again and the work was done", func() bool {
		return len(fn.replies()) == 2
	})
	second := fn.replies()[1]
	if second.retries != "1" || second.code != http.StatusOK || second.answer.Status != "done" ||
		second.answer.APIAnswer != `api answer {"job":1}` {
		t.Fatalf("second call %+v, want X-Retries 1 answered 200 done with the API's answer", second)
	}
	if calls := a.calls(); len(calls) != 2 || calls[1] != `application/json {"job":1}` {
		t.Fatalf("API calls %q, want the same body and content type twice", calls)
	}
}

func TestRetriesSpentAnswersDeadLettered(t *testing.T) {
	t.Parallel()
	a := startAPI(t, func(n int, w http.ResponseWriter) int {
		w.Header().Set("Retry-After", "1")
		return http.StatusTooManyRequests
	})
	fn, m := deploy(t, a.srv.URL, "requeue_max_retries=1")

	code, first, _ := post(t, m.GatewayURL+"/function/ratelimited", "text/plain", "job")
	if code != http.StatusAccepted || first.Status != "requeued" {
		t.Fatalf("first call answered %d %+v, want 202 requeued", code, first)
	}
	if due, err := time.Parse(time.RFC3339Nano, first.DueAt); err != nil || time.Until(due) > 1100*time.Millisecond {
		t.Fatalf("due_at %q, want about 1s from now (the API's Retry-After)", first.DueAt)
	}
	poll.Until(t, 15*time.Second, "the retry was dead-lettered", func() bool {
		return len(fn.replies()) == 2
	})
	last := fn.replies()[1]
	if last.retries != "1" || last.code != http.StatusOK || last.answer.Status != "dead-lettered" ||
		last.answer.ID != first.ID || last.answer.Retries != 2 || last.answer.MaxRetries != 1 ||
		!strings.Contains(last.answer.Error, "retries spent") {
		t.Fatalf("last call %+v, want X-Retries 1 answered 200 dead-lettered (retries 2 of 1) with an error", last)
	}
	// The 2xx answer completed the delivery: no third call, and one dead
	// letter, the one the requeue stored.
	time.Sleep(1500 * time.Millisecond)
	if n := len(fn.replies()); n != 2 {
		t.Fatalf("the function was called %d times, want 2", n)
	}
	dead := m.DeadLetters(t)
	if len(dead) != 1 || dead[0].ID != first.ID || dead[0].Reason != "max-retries" || string(dead[0].Body) != "job" ||
		dead[0].Header.Get("Content-Type") != "text/plain" {
		t.Fatalf("dead letters %+v, want the one request, kept with reason max-retries", dead)
	}
}

func TestAPIErrorIsNotRequeued(t *testing.T) {
	t.Parallel()
	a := startAPI(t, func(int, http.ResponseWriter) int { return http.StatusInternalServerError })
	h, _, err := New([]string{"api_url=" + a.srv.URL, "mailbox_url=http://127.0.0.1:1", "function_name=ratelimited"}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest(http.MethodPost, "/", strings.NewReader("job")))
	var got answer
	_ = json.Unmarshal(rec.Body.Bytes(), &got)
	if rec.Code != http.StatusBadGateway || got.APIStatus != 500 || !strings.Contains(got.Error, "500") {
		t.Fatalf("answered %d %s, want 502 naming the API's 500", rec.Code, rec.Body)
	}
}

func TestMailboxRefusalIs502WithItsRetryAfter(t *testing.T) {
	t.Parallel()
	a := startAPI(t, func(int, http.ResponseWriter) int { return http.StatusTooManyRequests })
	mailbox := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Retry-After", "5")
		w.WriteHeader(http.StatusServiceUnavailable)
		_, _ = io.WriteString(w, `{"error":"queue unavailable, retry later"}`)
	}))
	t.Cleanup(mailbox.Close)
	h, _, err := New([]string{"api_url=" + a.srv.URL, "mailbox_url=" + mailbox.URL, "function_name=ratelimited"}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest(http.MethodPost, "/", strings.NewReader("job")))
	if rec.Code != http.StatusBadGateway || rec.Header().Get("Retry-After") != "5" ||
		!strings.Contains(rec.Body.String(), "queue unavailable, retry later") {
		t.Fatalf("answered %d, Retry-After %q, %s; want 502, 5, the mailbox's message",
			rec.Code, rec.Header().Get("Retry-After"), rec.Body)
	}
}

func TestOnlyPost(t *testing.T) {
	t.Parallel()
	h, _, err := New([]string{"api_url=http://127.0.0.1:1", "mailbox_url=http://127.0.0.1:1", "function_name=x"}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/", nil))
	if rec.Code != http.StatusMethodNotAllowed || rec.Header().Get("Allow") != "POST" {
		t.Fatalf("GET answered %d, want 405 with Allow: POST", rec.Code)
	}
}

func TestNewRejectsBadEnvironment(t *testing.T) {
	t.Parallel()
	good := []string{"api_url=http://api", "mailbox_url=http://gateway.openfaas:8080/function/mailbox", "function_name=ratelimited"}
	for _, tc := range []struct {
		env     string
		setting string
	}{
		{"api_url=", "api_url"},
		{"api_url=api.example.com", "api_url"},
		{"mailbox_url=ftp://x", "mailbox_url"},
		{"function_name=", "function_name"},
		{"requeue_max_retries=-1", "requeue_max_retries"},
		{"requeue_max_retries=many", "requeue_max_retries"},
		{"requeue_delay=soon", "requeue_delay"},
		{"requeue_delay=-5", "requeue_delay"},
		{"mailbox_token_file=/nonexistent/mailbox-token", "mailbox_token_file"},
	} {
		h, closeFn, err := New(append(append([]string(nil), good...), tc.env), io.Discard)
		if err == nil || !strings.Contains(err.Error(), tc.setting) || h != nil || closeFn != nil {
			t.Errorf("New(%q) = %v, want only an error naming %s", tc.env, err, tc.setting)
		}
	}
	cfg, err := LoadConfig(append(good, "requeue_max_retries=4", "requeue_delay=90"))
	if err != nil || *cfg.MaxRetries != 4 || *cfg.Delay != 90*time.Second {
		t.Fatalf("LoadConfig = %+v, %v", cfg, err)
	}
}
