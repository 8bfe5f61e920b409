// Command testfn is the bed's test function, deployed under several names
// with a different behaviour each (environment variable behaviour):
//
//	flaky    answers 429 to the first fail_times calls with a message, then 200
//	failing  always answers 500
//	slow     answers 200 after sleep (a Go duration)
//
// Each call is recorded; GET /calls (through the gateway:
// /function/<name>/calls) lists them as JSON, so tests see exactly what
// the gateway passed on. It serves on the host:port of upstream_url, as
// the bed's provider asks of every function.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"os/signal"
	"strconv"
	"sync"
	"syscall"
	"time"
)

// Call is one call the function answered.
type Call struct {
	At         time.Time `json:"at"`
	MessageID  string    `json:"message_id"`
	Retries    string    `json:"retries"`
	MaxRetries string    `json:"max_retries"`
	Body       string    `json:"body"`
	Status     int       `json:"status"`
}

type function struct {
	behaviour string
	failTimes int
	sleep     time.Duration

	mu    sync.Mutex
	calls []Call
	seen  map[string]int // calls per message
}

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	if err := run(ctx); err != nil {
		fmt.Fprintln(os.Stderr, "testfn:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context) error {
	u, err := url.Parse(os.Getenv("upstream_url"))
	if err != nil || u.Host == "" {
		return fmt.Errorf("upstream_url %q is not a URL with a host", os.Getenv("upstream_url"))
	}
	f := &function{behaviour: os.Getenv("behaviour"), seen: map[string]int{}}
	switch f.behaviour {
	case "flaky":
		if f.failTimes, err = strconv.Atoi(os.Getenv("fail_times")); err != nil {
			return fmt.Errorf("fail_times: %w", err)
		}
	case "slow":
		if f.sleep, err = time.ParseDuration(os.Getenv("sleep")); err != nil {
			return fmt.Errorf("sleep: %w", err)
		}
	case "failing":
	default:
		return fmt.Errorf("behaviour %q is not flaky, failing or slow", f.behaviour)
	}
	srv := &http.Server{Addr: u.Host, Handler: f, ReadHeaderTimeout: 10 * time.Second}
	go func() {
		<-ctx.Done()
		shutdown, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = srv.Shutdown(shutdown)
	}()
	if err := srv.ListenAndServe(); !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}

func (f *function) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Method == http.MethodGet && r.URL.Path == "/calls" {
		f.mu.Lock()
		defer f.mu.Unlock()
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(f.calls)
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
	c.Status = f.answer(c)
	if f.behaviour == "slow" {
		select {
		case <-time.After(f.sleep):
		case <-r.Context().Done():
			return
		}
	}
	f.mu.Lock()
	f.calls = append(f.calls, c)
	f.mu.Unlock()
	w.WriteHeader(c.Status)
	fmt.Fprintf(w, "%s: %d for %q\n", f.behaviour, c.Status, c.Body)
}

// answer is the status for call c.
func (f *function) answer(c Call) int {
	switch f.behaviour {
	case "failing":
		return http.StatusInternalServerError
	case "flaky":
		key := c.MessageID
		if key == "" {
			key = c.Body
		}
		f.mu.Lock()
		defer f.mu.Unlock()
		f.seen[key]++
		if f.seen[key] <= f.failTimes {
			return http.StatusTooManyRequests
		}
	}
	return http.StatusOK
}
