package main

import (
	"io"
	"net/http"
	"sync"
	"time"

	"github.com/openfaas/mailbox/internal/envelope"
	"github.com/openfaas/mailbox/internal/gatewaytest"
)

// sink is the function every message is for, deployed on a stand-in for
// the OpenFaaS gateway: it answers 200 at once. It records when each
// message first arrived and, for messages whose body is their due time
// (RFC 3339), how late that was.
type sink struct {
	gw *gatewaytest.Gateway

	mu      sync.Mutex
	calls   int
	ids     map[string]time.Time // first arrival of each message
	first   time.Time            // the first arrival
	last    time.Time            // first arrival of the latest new message
	late    []time.Duration      // arrival minus due time, first arrivals only
	badBody int                  // bodies meant to carry a due time that did not
}

func startSink(dueInBody bool) (*sink, error) {
	s := &sink{ids: map[string]time.Time{}}
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		at := time.Now()
		body, _ := io.ReadAll(r.Body)
		id := r.Header.Get(envelope.HeaderMessageID)
		s.mu.Lock()
		s.calls++
		if _, seen := s.ids[id]; !seen {
			if len(s.ids) == 0 {
				s.first = at
			}
			s.ids[id] = at
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
	gw, err := gatewaytest.Start(gatewaytest.Options{})
	if err != nil {
		return nil, err
	}
	gw.Deploy(function, h, nil)
	s.gw = gw
	return s, nil
}

// url is the gateway's.
func (s *sink) url() string { return s.gw.URL() }

func (s *sink) stop() { s.gw.Stop() }

// delivered is the number of distinct messages received.
func (s *sink) delivered() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.ids)
}

// arrival is when message id first arrived, if it did.
func (s *sink) arrival(id string) (time.Time, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	at, ok := s.ids[id]
	return at, ok
}

// snapshot returns the calls made and when the first and the latest new
// message arrived.
func (s *sink) snapshot() (calls int, first, last time.Time) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.calls, s.first, s.last
}
