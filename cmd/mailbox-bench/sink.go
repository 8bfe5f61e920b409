package main

import (
	"io"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/openfaas/mailbox/internal/envelope"
)

// sink stands in for the OpenFaaS gateway: every function answers 200 at
// once. It records when each message first arrived and, for messages whose
// body is their due time (RFC 3339), how late that was.
type sink struct {
	addr string
	stop func()

	mu      sync.Mutex
	calls   int
	ids     map[string]bool
	first   time.Time       // the first arrival
	last    time.Time       // first arrival of the latest new message
	late    []time.Duration // arrival minus due time, first arrivals only
	badBody int             // bodies meant to carry a due time that did not
}

func startSink(dueInBody bool) (*sink, error) {
	s := &sink{ids: map[string]bool{}}
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !strings.HasPrefix(r.URL.Path, "/function/") {
			// connector-sdk's function lookup, used only while the
			// gateway is thought down.
			_, _ = io.WriteString(w, "[]")
			return
		}
		at := time.Now()
		body, _ := io.ReadAll(r.Body)
		id := r.Header.Get(envelope.HeaderMessageID)
		s.mu.Lock()
		s.calls++
		if !s.ids[id] {
			if len(s.ids) == 0 {
				s.first = at
			}
			s.ids[id] = true
			s.last = at
			if dueInBody {
				if due, err := time.Parse(time.RFC3339Nano, string(body)); err == nil {
					s.late = append(s.late, at.Sub(due))
				} else {
					s.badBody++
				}
			}
		}
		s.mu.Unlock()
		w.WriteHeader(http.StatusOK)
	})
	addr, stop, err := serve(h)
	if err != nil {
		return nil, err
	}
	s.addr, s.stop = addr, stop
	return s, nil
}

func (s *sink) url() string { return "http://" + s.addr }

// delivered is the number of distinct messages received.
func (s *sink) delivered() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.ids)
}

// snapshot returns the calls made and when the first and the latest new
// message arrived.
func (s *sink) snapshot() (calls int, first, last time.Time) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.calls, s.first, s.last
}
