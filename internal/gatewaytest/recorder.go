package gatewaytest

import (
	"bytes"
	"io"
	"net/http"
	"sync"
	"time"

	"github.com/openfaas/mailbox/internal/envelope"
)

// Call is one request a Recorder received.
type Call struct {
	Header http.Header
	Body   []byte
	// At is when the request arrived.
	At time.Time
}

// ID is the call's X-Mailbox-Message-Id.
func (c Call) ID() string { return c.Header.Get(envelope.HeaderMessageID) }

// Recorder is a function's handler that records every call, then answers
// it. Its methods are safe for concurrent use.
type Recorder struct {
	answer func(w http.ResponseWriter, r *http.Request, n int)

	mu    sync.Mutex
	calls []Call
}

// Record returns a Recorder that answers call n (counting from 1) with
// answer, which may read the body again; a nil answer answers 200 with no
// body.
func Record(answer func(w http.ResponseWriter, r *http.Request, n int)) *Recorder {
	return &Recorder{answer: answer}
}

// ServeHTTP records the call, then answers it.
func (rec *Recorder) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	at := time.Now()
	body, _ := io.ReadAll(r.Body)
	rec.mu.Lock()
	rec.calls = append(rec.calls, Call{Header: r.Header.Clone(), Body: body, At: at})
	n := len(rec.calls)
	rec.mu.Unlock()
	if rec.answer != nil {
		r.Body = io.NopCloser(bytes.NewReader(body))
		rec.answer(w, r, n)
	}
}

// Calls returns the calls so far, in the order they arrived.
func (rec *Recorder) Calls() []Call {
	rec.mu.Lock()
	defer rec.mu.Unlock()
	return append([]Call(nil), rec.calls...)
}

// Len is the number of calls so far.
func (rec *Recorder) Len() int {
	rec.mu.Lock()
	defer rec.mu.Unlock()
	return len(rec.calls)
}

// IDs returns the message id of each call so far, in the order they
// arrived.
func (rec *Recorder) IDs() []string {
	rec.mu.Lock()
	defer rec.mu.Unlock()
	ids := make([]string, len(rec.calls))
	for i, c := range rec.calls {
		ids[i] = c.ID()
	}
	return ids
}

// Distinct is the number of different message ids among the calls.
func (rec *Recorder) Distinct() int {
	seen := map[string]bool{}
	for _, id := range rec.IDs() {
		seen[id] = true
	}
	return len(seen)
}
