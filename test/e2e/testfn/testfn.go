// Package testfn is the bed's test function (cmd/testfn runs it),
// deployed under several names with a behaviour each:
//
//	flaky    answers 429 to the first fail_times calls for a message, then 200
//	failing  always answers 500
//	slow     answers 200 after sleep (a Go duration)
//
// Each call is recorded; GET /calls?id=<message id>[&id=...] (through the
// gateway: /function/<name>/calls?id=...) lists the calls for those
// messages as JSON, so tests see exactly what the gateway passed on.
// CallsOf asks for them.
package testfn

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"sync"
	"time"
)

// Behaviours, the environment variable behaviour.
const (
	Flaky   = "flaky"
	Failing = "failing"
	Slow    = "slow"
)

// Call is one call the function answered.
type Call struct {
	At         time.Time `json:"at"` // when it arrived
	MessageID  string    `json:"message_id"`
	Retries    string    `json:"retries"`
	MaxRetries string    `json:"max_retries"`
	Body       string    `json:"body"`
	Status     int       `json:"status"`
}

// Function is the test function's handler.
type Function struct {
	behaviour string
	failTimes int
	sleep     time.Duration

	mu    sync.Mutex
	calls map[string][]Call // by message id, in order
}

// FromEnv makes the function from its deployment's environment:
// behaviour, and fail_times for flaky or sleep for slow.
func FromEnv(getenv func(string) string) (*Function, error) {
	f := &Function{behaviour: getenv("behaviour"), calls: map[string][]Call{}}
	var err error
	switch f.behaviour {
	case Flaky:
		if f.failTimes, err = strconv.Atoi(getenv("fail_times")); err != nil {
			return nil, fmt.Errorf("fail_times: %w", err)
		}
	case Slow:
		if f.sleep, err = time.ParseDuration(getenv("sleep")); err != nil {
			return nil, fmt.Errorf("sleep: %w", err)
		}
	case Failing:
	default:
		return nil, fmt.Errorf("behaviour %q is not %s, %s or %s", f.behaviour, Flaky, Failing, Slow)
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
	}
	f.mu.Lock()
	c.Status = f.answer(len(f.calls[c.MessageID]))
	f.mu.Unlock()
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
