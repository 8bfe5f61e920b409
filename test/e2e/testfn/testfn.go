// Package testfn is the bed's test function (cmd/testfn runs it),
// deployed under several names with a behaviour each:
//
//	flaky    answers 429 to the first fail_times calls for a message, then 200
//	failing  always answers 500
//	slow     answers 200 after sleep (a Go duration)
//	signed   requeues itself through the mailbox at mailbox_url, signed
//	         with the token (package requeue, WithToken), until a delivery
//	         the mailbox signed has X-Retries requeue_times, then answers
//	         200; a callback (X-Mailbox-Outcome) is answered 200, and an
//	         unsigned call for a message it requeued 401
//	random   answers 500 to a random fail_ratio of its calls (a number
//	         from 0 to 1), 200 to the others, and reports each call to
//	         report_url (POST, JSON Report) before it answers: when the
//	         report fails it answers 503, so that no answered 200 goes
//	         unreported; its calls are not kept for /calls
//
// With token_secret (the name of a secret under secret_mount_path, as
// OpenFaaS mounts them), every call is checked with requeue.Verify (a
// callback with requeue.VerifyCallback) and the call records whether the
// mailbox signed it; signed needs it.
//
// Each call is recorded; GET /calls?id=<message id>[&id=...] (through the
// gateway: /function/<name>/calls?id=...) lists the calls for those
// messages as JSON, so tests see exactly what the gateway passed on.
// CallsOf asks for them.
package testfn

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/openfaas/mailbox/requeue"
)

// Behaviours, the environment variable behaviour.
const (
	Flaky   = "flaky"
	Failing = "failing"
	Slow    = "slow"
	Signed  = "signed"
	Random  = "random"
)

// Report is what random POSTs to its report_url for each call.
type Report struct {
	MessageID string    `json:"message_id"`
	Retries   string    `json:"retries"`
	Status    int       `json:"status"`
	At        time.Time `json:"at"` // when the call arrived
}

// Call is one call the function answered.
type Call struct {
	At         time.Time `json:"at"` // when it arrived
	MessageID  string    `json:"message_id"`
	Retries    string    `json:"retries"`
	MaxRetries string    `json:"max_retries"`
	Body       string    `json:"body"`
	Status     int       `json:"status"`
	// Verified says requeue.Verify (VerifyCallback for a callback)
	// accepted the call with the token;
	// NotVerified is its error otherwise. Both are empty without a token.
	Verified    bool   `json:"verified,omitempty"`
	NotVerified string `json:"not_verified,omitempty"`
	// The headers of a callback: the outcome, the function it reports
	// on and that function's answer.
	Outcome        string `json:"outcome,omitempty"`
	FunctionName   string `json:"function_name,omitempty"`
	FunctionStatus string `json:"function_status,omitempty"`
	// Requeued is the message id of the requeue signed made of this call
	// (the mailbox answered 202), RequeueError why it failed.
	Requeued     string `json:"requeued,omitempty"`
	RequeueError string `json:"requeue_error,omitempty"`
}

// Function is the test function's handler.
type Function struct {
	behaviour string
	failTimes int
	sleep     time.Duration
	token     string
	// signed: where and how often it requeues itself.
	mailboxURL   string
	requeueTimes int
	client       *http.Client
	// random: the share of calls it fails, and where it reports them.
	failRatio float64
	reportURL string

	mu       sync.Mutex
	calls    map[string][]Call   // by message id, in order
	requeued map[string]struct{} // ids of the messages signed requeued
}

// FromEnv makes the function from its deployment's environment:
// behaviour, fail_times for flaky, sleep for slow, mailbox_url and
// requeue_times for signed, and token_secret for any.
func FromEnv(getenv func(string) string) (*Function, error) {
	f := &Function{behaviour: getenv("behaviour"), calls: map[string][]Call{}, requeued: map[string]struct{}{}, client: &http.Client{Timeout: 10 * time.Second}}
	var err error
	if name := getenv("token_secret"); name != "" {
		b, err := os.ReadFile(filepath.Join(getenv("secret_mount_path"), name))
		if err != nil {
			return nil, fmt.Errorf("token_secret: %w", err)
		}
		if f.token = strings.TrimSpace(string(b)); f.token == "" {
			return nil, fmt.Errorf("token_secret: secret %s is empty", name)
		}
	}
	switch f.behaviour {
	case Flaky:
		if f.failTimes, err = strconv.Atoi(getenv("fail_times")); err != nil {
			return nil, fmt.Errorf("fail_times: %w", err)
		}
	case Slow:
		if f.sleep, err = time.ParseDuration(getenv("sleep")); err != nil {
			return nil, fmt.Errorf("sleep: %w", err)
		}
	case Signed:
		if f.token == "" {
			return nil, errors.New("token_secret: required by " + Signed)
		}
		if f.mailboxURL = getenv("mailbox_url"); f.mailboxURL == "" {
			return nil, errors.New("mailbox_url: required by " + Signed)
		}
		if f.requeueTimes, err = strconv.Atoi(getenv("requeue_times")); err != nil {
			return nil, fmt.Errorf("requeue_times: %w", err)
		}
	case Random:
		if f.failRatio, err = strconv.ParseFloat(getenv("fail_ratio"), 64); err != nil || f.failRatio < 0 || f.failRatio > 1 {
			return nil, fmt.Errorf("fail_ratio %q: want a number from 0 to 1", getenv("fail_ratio"))
		}
		if f.reportURL = getenv("report_url"); f.reportURL == "" {
			return nil, errors.New("report_url: required by " + Random)
		}
		// Calls come many at once: reports keep their connections.
		f.client.Transport = &http.Transport{MaxIdleConnsPerHost: 64}
	case Failing:
	default:
		return nil, fmt.Errorf("behaviour %q is not %s, %s, %s, %s or %s", f.behaviour, Flaky, Failing, Slow, Signed, Random)
	}
	return f, nil
}

func (f *Function) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Method == http.MethodGet && r.URL.Path == "/calls" {
		f.mu.Lock()
		out := map[string][]Call{}
		for _, id := range r.URL.Query()["id"] {
			out[id] = slices.Clone(f.calls[id])
		}
		f.mu.Unlock()
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(out)
		return
	}
	if f.behaviour == Random {
		f.random(w, r)
		return
	}
	body, err := io.ReadAll(r.Body)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	c := Call{
		At:         time.Now(),
		MessageID:  r.Header.Get("X-Mailbox-Message-Id"),
		Retries:    r.Header.Get("X-Retries"),
		MaxRetries: r.Header.Get("X-Max-Retries"),
		Body:       string(body),

		Outcome:        r.Header.Get("X-Mailbox-Outcome"),
		FunctionName:   r.Header.Get("X-Function-Name"),
		FunctionStatus: r.Header.Get("X-Function-Status"),
	}
	var d *requeue.Delivery
	if f.token != "" {
		// A callback is signed apart from deliveries: neither verifies
		// as the other.
		if c.Outcome != "" {
			_, err = requeue.VerifyCallback(r, body, f.token)
		} else {
			d, err = requeue.Verify(r, body, f.token)
		}
		if err == nil {
			c.Verified = true
		} else {
			c.NotVerified = err.Error()
		}
	}
	f.mu.Lock()
	c.Status = f.answer(len(f.calls[c.MessageID]))
	_, mine := f.requeued[c.MessageID]
	f.mu.Unlock()
	switch {
	case f.behaviour != Signed || c.Outcome != "":
	case d == nil && mine:
		// A call for a message it requeued that the mailbox did not sign:
		// refused, rather than requeued as a new message for ever.
		c.Status = http.StatusUnauthorized
	case d == nil || d.Retries < f.requeueTimes:
		c.Status = f.requeue(r, body, &c)
	}
	if f.behaviour == Slow {
		select {
		case <-time.After(f.sleep):
		case <-r.Context().Done():
			return
		}
	}
	f.mu.Lock()
	f.calls[c.MessageID] = append(f.calls[c.MessageID], c)
	f.mu.Unlock()
	w.WriteHeader(c.Status)
	fmt.Fprintf(w, "%s: %d for %q\n", f.behaviour, c.Status, c.Body)
}

// random answers a call as the random behaviour does.
func (f *Function) random(w http.ResponseWriter, r *http.Request) {
	rep := Report{At: time.Now(), MessageID: r.Header.Get("X-Mailbox-Message-Id"), Retries: r.Header.Get("X-Retries"), Status: http.StatusOK}
	_, _ = io.Copy(io.Discard, r.Body)
	if rand.Float64() < f.failRatio {
		rep.Status = http.StatusInternalServerError
	}
	if err := f.report(r.Context(), rep); err != nil {
		http.Error(w, "report: "+err.Error(), http.StatusServiceUnavailable)
		return
	}
	w.WriteHeader(rep.Status)
	fmt.Fprintf(w, "%s: %d\n", f.behaviour, rep.Status)
}

// report POSTs rep to the report URL.
func (f *Function) report(ctx context.Context, rep Report) error {
	b, err := json.Marshal(rep)
	if err != nil {
		return err
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, f.reportURL, bytes.NewReader(b))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	res, err := f.client.Do(req)
	if err != nil {
		return err
	}
	defer res.Body.Close()
	_, _ = io.Copy(io.Discard, res.Body)
	if res.StatusCode/100 != 2 {
		return fmt.Errorf("%s answered %d", f.reportURL, res.StatusCode)
	}
	return nil
}

// requeue asks the mailbox to call the function again with body, as a
// retry of r, signed with the token; package requeue carries r's control
// headers over only when the mailbox signed r. It records the outcome in
// c and returns the status to answer.
func (f *Function) requeue(r *http.Request, body []byte, c *Call) int {
	res, err := requeue.Request(r.Context(), f.client, f.mailboxURL, f.behaviour, r, body,
		requeue.WithToken(f.token), requeue.WithDelay(time.Second), requeue.WithDefaultMaxRetries(5))
	if err != nil {
		c.RequeueError = err.Error()
		return http.StatusBadGateway
	}
	c.Requeued = res.ID
	f.mu.Lock()
	f.requeued[res.ID] = struct{}{}
	f.mu.Unlock()
	return http.StatusAccepted
}

// answer is the status of a call for a message already called before
// times.
func (f *Function) answer(before int) int {
	switch {
	case f.behaviour == Failing:
		return http.StatusInternalServerError
	case f.behaviour == Flaky && before < f.failTimes:
		return http.StatusTooManyRequests
	}
	return http.StatusOK
}

// CallsOf asks the function at fnURL (for instance the gateway's
// /function/<name>) for the calls it answered for each message of ids,
// in one request.
func CallsOf(ctx context.Context, client *http.Client, fnURL string, ids ...string) (map[string][]Call, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, fnURL+"/calls?"+url.Values{"id": ids}.Encode(), nil)
	if err != nil {
		return nil, err
	}
	res, err := client.Do(req)
	if err != nil {
		return nil, err
	}
	defer res.Body.Close()
	if res.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(io.LimitReader(res.Body, 1024))
		return nil, fmt.Errorf("GET %s: %d %s", req.URL, res.StatusCode, b)
	}
	var calls map[string][]Call
	if err := json.NewDecoder(res.Body).Decode(&calls); err != nil {
		return nil, fmt.Errorf("GET %s: %w", req.URL, err)
	}
	return calls, nil
}
