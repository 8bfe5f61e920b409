package api

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"reflect"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/openfaas/mailbox/internal/delivery"
	"github.com/openfaas/mailbox/internal/envelope"
	"github.com/openfaas/mailbox/internal/logtest"
	"github.com/openfaas/mailbox/internal/metricstest"
	"github.com/openfaas/mailbox/internal/names"
	"github.com/openfaas/mailbox/internal/queue"
	"github.com/openfaas/mailbox/internal/status"
)

// memQueue is an in-memory queue.Queue that records what it was asked to
// store and fails on demand. A failing call stores nothing, like a broker
// that did not acknowledge the write.
type memQueue struct {
	mu          sync.Mutex
	scheduled   []*envelope.Envelope
	dead        []*envelope.Envelope
	scheduleErr error
	// scheduleFails, when set, fails the Schedule of each envelope it
	// returns an error for (after scheduleErr).
	scheduleFails func(e *envelope.Envelope) error
	deadErr       error
	maxPayload    int
	connected     bool
	// statuses are the latest status of each id; statusErr fails both
	// RecordStatus and Status.
	statuses  map[string]status.Status
	statusErr error
	// quotaFails, when set, refuses the new messages it returns an error
	// for in Reserve.
	quotaFails func(c status.Claim) error
	// reserved are the claims Reserve accepted and not released.
	reserved []status.Claim
}

var _ queue.Queue = (*memQueue)(nil)

func (q *memQueue) Schedule(_ context.Context, e *envelope.Envelope) error {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.scheduleErr != nil {
		return q.scheduleErr
	}
	if q.scheduleFails != nil {
		if err := q.scheduleFails(e); err != nil {
			return err
		}
	}
	q.scheduled = append(q.scheduled, clone(e))
	return nil
}

func (q *memQueue) DeadLetter(_ context.Context, e *envelope.Envelope) error {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.deadErr != nil {
		return q.deadErr
	}
	q.dead = append(q.dead, clone(e))
	return nil
}

func (q *memQueue) Consume(ctx context.Context, _ queue.Handler) error {
	<-ctx.Done()
	return ctx.Err()
}

func (q *memQueue) RecordStatus(_ context.Context, s status.Status) error {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.statusErr != nil {
		return q.statusErr
	}
	if old, ok := q.statuses[s.ID]; ok && !s.Supersedes(old, time.Now()) {
		return nil
	}
	if q.statuses == nil {
		q.statuses = map[string]status.Status{}
	}
	q.statuses[s.ID] = s
	return nil
}

func (q *memQueue) Status(_ context.Context, id string) (status.Status, error) {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.statusErr != nil {
		return status.Status{}, q.statusErr
	}
	s, ok := q.statuses[id]
	if !ok {
		return status.Status{}, queue.ErrNoStatus
	}
	return s, nil
}

func (q *memQueue) Waiting(context.Context) (map[string]int, error) {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.statusErr != nil {
		return nil, q.statusErr
	}
	out := map[string]int{}
	for _, s := range q.statuses {
		if status.Counted(s) {
			out[s.Function]++
		}
	}
	return out, nil
}

// status returns the latest status recorded for id.
func (q *memQueue) status(id string) (status.Status, bool) {
	q.mu.Lock()
	defer q.mu.Unlock()
	s, ok := q.statuses[id]
	return s, ok
}

func (q *memQueue) MaxPayload() int {
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.maxPayload
}

func (q *memQueue) Connected() bool {
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.connected
}

func (q *memQueue) Close() error { return nil }

// The API does not use the dead-letter log: an empty one.
func (q *memQueue) FollowDeadLetters(ctx context.Context, _ uint64, _ func(queue.Record)) error {
	<-ctx.Done()
	return ctx.Err()
}
func (q *memQueue) LastDeadLetterSeq(context.Context) (uint64, error) { return 0, nil }
func (q *memQueue) ReadDeadLetter(context.Context, uint64) (queue.Record, error) {
	return queue.Record{}, queue.ErrNoDeadLetter
}
func (q *memQueue) RemoveDeadLetter(context.Context, queue.Removal) error { return nil }

// stored returns copies of what was scheduled and dead-lettered.
func (q *memQueue) stored() (scheduled, dead []*envelope.Envelope) {
	q.mu.Lock()
	defer q.mu.Unlock()
	return append([]*envelope.Envelope(nil), q.scheduled...), append([]*envelope.Envelope(nil), q.dead...)
}

// clone copies e so that later changes by the handler cannot alter what
// the test sees as stored.
func clone(e *envelope.Envelope) *envelope.Envelope {
	c := *e
	c.Header = e.Header.Clone()
	if e.Body != nil {
		c.Body = append([]byte{}, e.Body...)
	}
	return &c
}

// testNow is in a non-UTC zone with sub-second digits, so the tests see
// whether times are converted to UTC and kept at full precision.
var testNow = time.Date(2025, 3, 4, 5, 6, 7, 123456789, time.FixedZone("CET", 3600))

// testDefaults are the delivery defaults and caps setup gives the handler.
func testDefaults() delivery.Defaults {
	return delivery.Defaults{
		MaxRetries:      10,
		MaxRetriesLimit: 100,
		Delay:           time.Minute,
		MaxDelay:        time.Hour,
		Backoff:         envelope.BackoffFixed,
	}
}

// ptr returns a pointer to v, for the envelope's optional policy fields.
func ptr[T any](v T) *T { return &v }

type bundle struct {
	handler http.Handler
	queue   *memQueue
	reg     *prometheus.Registry
	logs    *logtest.Buffer
}

// setup builds the handler on a fresh registry and memQueue; adjust may
// change the options before New.
func setup(t *testing.T, adjust func(*Options)) *bundle {
	t.Helper()
	b := &bundle{
		queue: &memQueue{maxPayload: 1 << 20, connected: true},
		reg:   prometheus.NewRegistry(),
		logs:  &logtest.Buffer{},
	}
	o := Options{
		Queue:        b.queue,
		Defaults:     testDefaults(),
		Callbacks:    testCallbacks(t),
		MaxBodyBytes: 1 << 16,
		Registerer:   b.reg,
		Gatherer:     b.reg,
		Logger:       slog.New(slog.NewTextHandler(b.logs, &slog.HandlerOptions{Level: slog.LevelDebug})),
		Now:          func() time.Time { return testNow },
	}
	if adjust != nil {
		adjust(&o)
	}
	h, err := New(o)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	b.handler = h
	return b
}

func (b *bundle) do(method, target string, body []byte, header http.Header) *httptest.ResponseRecorder {
	r := httptest.NewRequest(method, target, bytes.NewReader(body))
	// Canonical keys, as a server receives them (envelope.HeaderTTL is
	// written X-Message-TTL).
	for k, vs := range header {
		r.Header[http.CanonicalHeaderKey(k)] = vs
	}
	w := httptest.NewRecorder()
	b.handler.ServeHTTP(w, r)
	return w
}

// decodeJSON checks the answer is JSON and decodes it into a map.
func decodeJSON(t *testing.T, w *httptest.ResponseRecorder) map[string]any {
	t.Helper()
	if ct := w.Header().Get("Content-Type"); ct != "application/json" {
		t.Fatalf("Content-Type = %q, want application/json (body %q)", ct, w.Body)
	}
	var m map[string]any
	if err := json.Unmarshal(w.Body.Bytes(), &m); err != nil {
		t.Fatalf("body %q is not a JSON object: %v", w.Body, err)
	}
	return m
}

// wantError checks an error answer: code, JSON with a non-empty "error",
// and "field" equal to field (absent when field is "").
func wantError(t *testing.T, w *httptest.ResponseRecorder, code int, field string) map[string]any {
	t.Helper()
	if w.Code != code {
		t.Fatalf("status = %d, want %d (body %q)", w.Code, code, w.Body)
	}
	m := decodeJSON(t, w)
	if msg, _ := m["error"].(string); msg == "" {
		t.Fatalf("error answer %q has no error message", w.Body)
	}
	got, has := m["field"]
	if field == "" && has {
		t.Fatalf("error answer %q names field %v, want none", w.Body, got)
	}
	if field != "" && got != field {
		t.Fatalf("error answer %q names field %v, want %q", w.Body, got, field)
	}
	return m
}

func wantNothingStored(t *testing.T, q *memQueue) {
	t.Helper()
	if s, d := q.stored(); len(s) != 0 || len(d) != 0 {
		t.Fatalf("stored %d scheduled and %d dead letters, want none", len(s), len(d))
	}
}

func TestPathValidation(t *testing.T) {
	t.Parallel()
	label63 := strings.Repeat("a", 63)
	tests := []struct {
		target string
		want   string // the function stored; "" means 400
	}{
		{"/deadletter/a", "a"},
		{"/deadletter/fn-1", "fn-1"},
		{"/deadletter/fn.openfaas-fn", "fn.openfaas-fn"},
		{"/deadletter/" + label63, label63},
		{"/deadletter/fn?ignored=query", "fn"},

		{"/deadletter", ""},
		{"/deadletter/", ""},
		{"/deadletter/a/b", ""},
		{"/deadletter/a/", ""},
		{"/deadletter/%2F", ""},
		{"/deadletter/a%2Fb", ""},
		{"/deadletter/a%2fb", ""},
		{"/deadletter/..", ""},
		{"/deadletter/a/../b", ""},
		{"/deadletter/%2E%2E", ""},
		{"/deadletter/%25", ""},
		{"/deadletter/%61", ""},
		{"/deadletter/%C3%A4", ""},
		{"/deadletter/Fn", ""},
		{"/deadletter/-a", ""},
		{"/deadletter/a-", ""},
		{"/deadletter/" + strings.Repeat("a", 64), ""},
		{"/deadletter/a..b", ""},
		{"/deadletter/a.b.c", ""},
	}
	for _, tt := range tests {
		t.Run(tt.target, func(t *testing.T) {
			t.Parallel()
			b := setup(t, nil)
			w := b.do(http.MethodPost, tt.target, []byte("x"), nil)
			if tt.want == "" {
				wantError(t, w, http.StatusBadRequest, "path")
				wantNothingStored(t, b.queue)
				return
			}
			if w.Code != http.StatusAccepted {
				t.Fatalf("status = %d, want 202 (body %q)", w.Code, w.Body)
			}
			s, _ := b.queue.stored()
			if len(s) != 1 || s[0].Function != tt.want {
				t.Fatalf("stored %+v, want one message for %q", s, tt.want)
			}
		})
	}
}

// TestPathValidationOverTheWire sends raw request targets through a real
// server, so the escaped path is what a client actually sent.
func TestPathValidationOverTheWire(t *testing.T) {
	t.Parallel()
	b := setup(t, nil)
	srv := httptest.NewServer(b.handler)
	t.Cleanup(srv.Close)

	tests := []struct {
		target string
		want   int
	}{
		{"/deadletter/fn", http.StatusAccepted},
		{"/deadletter/%25", http.StatusBadRequest},
		{"/deadletter/a%2Fb", http.StatusBadRequest},
		{"/deadletter/../healthz", http.StatusBadRequest},
		{"/deadletter/%2e%2e", http.StatusBadRequest},
	}
	for _, tt := range tests {
		req, err := http.NewRequest(http.MethodPost, srv.URL, strings.NewReader("x"))
		if err != nil {
			t.Fatal(err)
		}
		// Opaque makes the client send the target exactly as written.
		req.URL.Opaque = tt.target
		resp, err := srv.Client().Do(req)
		if err != nil {
			t.Fatalf("%s: %v", tt.target, err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != tt.want {
			t.Errorf("%s: status %d, want %d (body %q)", tt.target, resp.StatusCode, tt.want, body)
		}
	}
	if s, _ := b.queue.stored(); len(s) != 1 || s[0].Function != "fn" {
		t.Fatalf("stored %+v, want only the message for fn", s)
	}
}

func TestRequeueScheduled(t *testing.T) {
	t.Parallel()
	binary := make([]byte, 256)
	for i := range binary {
		binary[i] = byte(i)
	}
	tests := []struct {
		name           string
		header         http.Header
		body           []byte
		wantRetries    int
		wantMaxRetries int           // the answer's: the header's, else the default
		wantDelay      time.Duration // the wait before the first delivery
		wantPolicy     envelope.Policy
	}{
		{
			name:           "defaults",
			body:           []byte("hello"),
			wantMaxRetries: 10,
			wantDelay:      time.Minute,
		},
		{
			name:           "empty body",
			body:           []byte{},
			wantMaxRetries: 10,
			wantDelay:      time.Minute,
		},
		{
			name:           "binary body",
			body:           binary,
			wantMaxRetries: 10,
			wantDelay:      time.Minute,
		},
		{
			name:           "seconds",
			header:         http.Header{"X-Retries": {"2"}, "X-Max-Retries": {"5"}, "X-Delay-Duration": {"30"}},
			body:           []byte("{}"),
			wantRetries:    2,
			wantMaxRetries: 5,
			wantDelay:      30 * time.Second,
			wantPolicy:     envelope.Policy{MaxRetries: ptr(5), Delay: ptr(30 * time.Second)},
		},
		{
			name:           "go duration",
			header:         http.Header{"X-Delay-Duration": {"1500ms"}},
			body:           []byte("{}"),
			wantMaxRetries: 10,
			wantDelay:      1500 * time.Millisecond,
			wantPolicy:     envelope.Policy{Delay: ptr(1500 * time.Millisecond)},
		},
		{
			// Retries == MaxRetries is still delivered once more.
			name:           "last retry",
			header:         http.Header{"X-Retries": {"3"}, "X-Max-Retries": {"3"}, "X-Delay-Duration": {"0"}},
			body:           []byte("last"),
			wantRetries:    3,
			wantMaxRetries: 3,
			wantPolicy:     envelope.Policy{MaxRetries: ptr(3), Delay: ptr(time.Duration(0))},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			b := setup(t, nil)
			w := b.do(http.MethodPost, "/deadletter/fn.openfaas-fn", tt.body, tt.header)
			if w.Code != http.StatusAccepted {
				t.Fatalf("status = %d, want 202 (body %q)", w.Code, w.Body)
			}
			m := decodeJSON(t, w)
			id, _ := m["id"].(string)
			if !regexp.MustCompile(`^[0-9a-f]{32}$`).MatchString(id) {
				t.Fatalf("id %q is not a generated 128-bit lowercase hex id", id)
			}
			if got := w.Header().Get(envelope.HeaderMessageID); got != id {
				t.Fatalf("%s header = %q, want the body's id %q", envelope.HeaderMessageID, got, id)
			}
			wantDue := testNow.Add(tt.wantDelay).UTC()
			want := map[string]any{
				"status":      "scheduled",
				"id":          id,
				"function":    "fn.openfaas-fn",
				"retries":     float64(tt.wantRetries),
				"max_retries": float64(tt.wantMaxRetries),
				"due_at":      wantDue.Format(time.RFC3339Nano),
			}
			if !reflect.DeepEqual(m, want) {
				t.Fatalf("body = %v, want %v", m, want)
			}

			s, d := b.queue.stored()
			if len(s) != 1 || len(d) != 0 {
				t.Fatalf("stored %d scheduled and %d dead letters, want 1 and 0", len(s), len(d))
			}
			e := s[0]
			if e.ID != id || e.Function != "fn.openfaas-fn" {
				t.Errorf("stored ID %q function %q, want %q and fn.openfaas-fn", e.ID, e.Function, id)
			}
			if !bytes.Equal(e.Body, tt.body) {
				t.Errorf("stored body %q, want %q", e.Body, tt.body)
			}
			if e.Retries != tt.wantRetries {
				t.Errorf("stored retries %d, want %d", e.Retries, tt.wantRetries)
			}
			// The policy holds only what the headers set: the connector
			// fills the rest from annotations and defaults, so the
			// defaults are not baked into the message.
			if !reflect.DeepEqual(e.Policy, tt.wantPolicy) {
				t.Errorf("stored policy %s, want %s", policyString(e.Policy), policyString(tt.wantPolicy))
			}
			if e.Kind != envelope.KindMessage {
				t.Errorf("stored kind %q, want a message", e.Kind)
			}
			if !e.AcceptedAt.Equal(testNow) || e.AcceptedAt.Location() != time.UTC {
				t.Errorf("AcceptedAt = %v, want %v in UTC", e.AcceptedAt, testNow)
			}
			if !e.DueAt.Equal(wantDue) {
				t.Errorf("DueAt = %v, want %v", e.DueAt, wantDue)
			}
			if e.Reason != "" || !e.DeadAt.IsZero() {
				t.Errorf("scheduled message has Reason %q DeadAt %v", e.Reason, e.DeadAt)
			}
		})
	}
}

func TestRequeueHeaders(t *testing.T) {
	t.Parallel()
	tests := []struct {
		keepCredentials bool
		want            http.Header
	}{
		{false, http.Header{
			"Content-Type": {"text/plain"},
			"X-Custom":     {"a", "b"},
		}},
		{true, http.Header{
			"Content-Type":  {"text/plain"},
			"X-Custom":      {"a", "b"},
			"Authorization": {"Bearer t"},
			"Cookie":        {"c=1"},
		}},
	}
	for _, tt := range tests {
		t.Run(fmt.Sprint("keep credentials ", tt.keepCredentials), func(t *testing.T) {
			t.Parallel()
			b := setup(t, func(o *Options) { o.KeepCredentials = tt.keepCredentials })
			w := b.do(http.MethodPut, "/deadletter/fn", []byte("x"), http.Header{
				"Content-Type":         {"text/plain"},
				"X-Custom":             {"a", "b"},
				"Authorization":        {"Bearer t"},
				"Cookie":               {"c=1"},
				"Connection":           {"X-Hop"},
				"X-Hop":                {"1"},
				"Upgrade":              {"h2c"},
				"Proxy-Authorization":  {"Basic x"},
				"Content-Length":       {"1"},
				"X-Retries":            {"1"},
				"X-Max-Retries":        {"2"},
				"X-Delay-Duration":     {"3"},
				"X-Mailbox-Message-Id": {"m1"},
			})
			if w.Code != http.StatusAccepted {
				t.Fatalf("status = %d, want 202 (body %q)", w.Code, w.Body)
			}
			s, _ := b.queue.stored()
			if len(s) != 1 {
				t.Fatalf("stored %d messages, want 1", len(s))
			}
			if !reflect.DeepEqual(s[0].Header, tt.want) {
				t.Fatalf("stored header %v, want %v", s[0].Header, tt.want)
			}
		})
	}
}

func TestRequeueCarriesMessageID(t *testing.T) {
	t.Parallel()
	b := setup(t, nil)
	w := b.do(http.MethodPost, "/deadletter/fn", []byte("x"), http.Header{envelope.HeaderMessageID: {"msg_ABC-123"}})
	if w.Code != http.StatusAccepted {
		t.Fatalf("status = %d, want 202 (body %q)", w.Code, w.Body)
	}
	if got := decodeJSON(t, w)["id"]; got != "msg_ABC-123" {
		t.Errorf("body id = %v, want msg_ABC-123", got)
	}
	if got := w.Header().Get(envelope.HeaderMessageID); got != "msg_ABC-123" {
		t.Errorf("%s header = %q, want msg_ABC-123", envelope.HeaderMessageID, got)
	}
	if s, _ := b.queue.stored(); len(s) != 1 || s[0].ID != "msg_ABC-123" {
		t.Fatalf("stored %+v, want one message with id msg_ABC-123", s)
	}
}

func TestRequeueGeneratesDistinctIDs(t *testing.T) {
	t.Parallel()
	b := setup(t, nil)
	first := b.do(http.MethodPost, "/deadletter/fn", nil, nil).Header().Get(envelope.HeaderMessageID)
	second := b.do(http.MethodPost, "/deadletter/fn", nil, nil).Header().Get(envelope.HeaderMessageID)
	if first == "" || first == second {
		t.Fatalf("ids %q and %q, want two distinct ids", first, second)
	}
}

func TestRequeueDeadLetter(t *testing.T) {
	t.Parallel()
	b := setup(t, nil)
	body := []byte("spent")
	w := b.do(http.MethodPost, "/deadletter/fn", body, http.Header{
		"X-Retries": {"4"}, "X-Max-Retries": {"3"}, envelope.HeaderMessageID: {"m-1"},
	})
	if w.Code != http.StatusOK {
		t.Fatalf("status = %d, want 200 (body %q)", w.Code, w.Body)
	}
	want := map[string]any{
		"status":      "dead-lettered",
		"reason":      "max-retries",
		"id":          "m-1",
		"function":    "fn",
		"retries":     float64(4),
		"max_retries": float64(3),
	}
	if m := decodeJSON(t, w); !reflect.DeepEqual(m, want) {
		t.Fatalf("body = %v, want %v", m, want)
	}
	if got := w.Header().Get(envelope.HeaderMessageID); got != "m-1" {
		t.Errorf("%s header = %q, want m-1", envelope.HeaderMessageID, got)
	}
	s, d := b.queue.stored()
	if len(s) != 0 {
		t.Fatalf("scheduled %d messages, want none", len(s))
	}
	if len(d) != 1 {
		t.Fatalf("dead-lettered %d messages, want 1", len(d))
	}
	e := d[0]
	if e.ID != "m-1" || e.Function != "fn" || !bytes.Equal(e.Body, body) || e.Retries != 4 ||
		!reflect.DeepEqual(e.Policy, envelope.Policy{MaxRetries: ptr(3)}) || e.Kind != envelope.KindMessage {
		t.Errorf("dead letter = %+v, policy %s", e, policyString(e.Policy))
	}
	if e.Reason != envelope.ReasonMaxRetries || !e.DeadAt.Equal(testNow) {
		t.Errorf("dead letter Reason %q DeadAt %v, want %q and %v", e.Reason, e.DeadAt, envelope.ReasonMaxRetries, testNow)
	}
}

func TestRequeueBadHeaderAnswer(t *testing.T) {
	t.Parallel()
	b := setup(t, nil)
	w := b.do(http.MethodPost, "/deadletter/fn", []byte("x"), http.Header{"X-Retries": {"abc"}})
	wantError(t, w, http.StatusBadRequest, "X-Retries")
	want := `{"error":"X-Retries: \"abc\" is not a non-negative integer","field":"X-Retries"}` + "\n"
	if w.Body.String() != want {
		t.Fatalf("body = %q, want %q", w.Body, want)
	}
	wantNothingStored(t, b.queue)
}

func TestRequeueBadHeaders(t *testing.T) {
	t.Parallel()
	tests := []struct {
		header http.Header
		field  string
	}{
		{http.Header{"X-Retries": {"-1"}}, "X-Retries"},
		{http.Header{"X-Max-Retries": {"101"}}, "X-Max-Retries"},
		{http.Header{"X-Delay-Duration": {"2h"}}, "X-Delay-Duration"},
		{http.Header{"X-Delay-Duration": {"-5"}}, "X-Delay-Duration"},
		{http.Header{envelope.HeaderMessageID: {"not/valid"}}, envelope.HeaderMessageID},
	}
	for _, tt := range tests {
		t.Run(fmt.Sprint(tt.header), func(t *testing.T) {
			t.Parallel()
			b := setup(t, nil)
			wantError(t, b.do(http.MethodPost, "/deadletter/fn", []byte("x"), tt.header), http.StatusBadRequest, tt.field)
			wantNothingStored(t, b.queue)
		})
	}
}

func TestRequeueBodyLimit(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name          string
		maxBodyBytes  int64
		maxPayload    int
		size          int
		unknownLength bool // chunked: only MaxBytesReader can catch it
		want          int
	}{
		{name: "at limit", maxBodyBytes: 10, maxPayload: 1000, size: 10, want: http.StatusAccepted},
		{name: "above limit", maxBodyBytes: 10, maxPayload: 1000, size: 11, want: http.StatusRequestEntityTooLarge},
		{name: "above limit unknown length", maxBodyBytes: 10, maxPayload: 1000, size: 11, unknownLength: true, want: http.StatusRequestEntityTooLarge},
		{name: "at limit unknown length", maxBodyBytes: 10, maxPayload: 1000, size: 10, unknownLength: true, want: http.StatusAccepted},
		{name: "clamped to max payload", maxBodyBytes: 1000, maxPayload: 10, size: 11, unknownLength: true, want: http.StatusRequestEntityTooLarge},
		{name: "at max payload", maxBodyBytes: 1000, maxPayload: 10, size: 10, want: http.StatusAccepted},
		{name: "default is max payload", maxBodyBytes: 0, maxPayload: 10, size: 11, unknownLength: true, want: http.StatusRequestEntityTooLarge},
		{name: "no limit known", maxBodyBytes: 0, maxPayload: 0, size: 1, want: http.StatusServiceUnavailable},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			b := setup(t, func(o *Options) { o.MaxBodyBytes = tt.maxBodyBytes })
			b.queue.maxPayload = tt.maxPayload
			r := httptest.NewRequest(http.MethodPost, "/deadletter/fn", bytes.NewReader(bytes.Repeat([]byte("x"), tt.size)))
			if tt.unknownLength {
				r.ContentLength = -1
			}
			w := httptest.NewRecorder()
			b.handler.ServeHTTP(w, r)
			if tt.want == http.StatusAccepted {
				if w.Code != tt.want {
					t.Fatalf("status = %d, want %d (body %q)", w.Code, tt.want, w.Body)
				}
				if s, _ := b.queue.stored(); len(s) != 1 || len(s[0].Body) != tt.size {
					t.Fatalf("stored %+v, want one %d-byte body", s, tt.size)
				}
				return
			}
			wantError(t, w, tt.want, "")
			wantNothingStored(t, b.queue)
		})
	}
}

func TestRequeueQueueErrors(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name           string
		header         http.Header
		scheduleErr    error
		deadErr        error
		want           int
		wantRetryAfter string
	}{
		{name: "too large", scheduleErr: fmt.Errorf("publish: %w", queue.ErrTooLarge), want: http.StatusRequestEntityTooLarge},
		{name: "unavailable", scheduleErr: fmt.Errorf("publish: %w", queue.ErrUnavailable), want: http.StatusServiceUnavailable, wantRetryAfter: "5"},
		{name: "timeout", scheduleErr: context.DeadlineExceeded, want: http.StatusServiceUnavailable, wantRetryAfter: "5"},
		{
			name:           "dead letter unavailable",
			header:         http.Header{"X-Retries": {"2"}, "X-Max-Retries": {"1"}},
			deadErr:        queue.ErrUnavailable,
			want:           http.StatusServiceUnavailable,
			wantRetryAfter: "5",
		},
		{
			name:    "dead letter too large",
			header:  http.Header{"X-Retries": {"2"}, "X-Max-Retries": {"1"}},
			deadErr: queue.ErrTooLarge,
			want:    http.StatusRequestEntityTooLarge,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			b := setup(t, nil)
			b.queue.scheduleErr, b.queue.deadErr = tt.scheduleErr, tt.deadErr
			secret := "body-must-not-be-logged"
			w := b.do(http.MethodPost, "/deadletter/fn", []byte(secret), tt.header)
			wantError(t, w, tt.want, "")
			if got := w.Header().Get("Retry-After"); got != tt.wantRetryAfter {
				t.Errorf("Retry-After = %q, want %q", got, tt.wantRetryAfter)
			}
			if got := w.Header().Get(envelope.HeaderMessageID); got != "" {
				t.Errorf("%s = %q on a failed requeue, want none", envelope.HeaderMessageID, got)
			}
			wantNothingStored(t, b.queue)
			logs := b.logs.String()
			if strings.Contains(logs, secret) {
				t.Errorf("logs contain the request body: %s", logs)
			}
			if tt.want == http.StatusServiceUnavailable && !strings.Contains(logs, "queue write failed") {
				t.Errorf("logs do not report the queue failure: %s", logs)
			}
		})
	}
}

func TestMethodNotAllowed(t *testing.T) {
	t.Parallel()
	tests := []struct {
		method, target, allow string
	}{
		{http.MethodGet, "/deadletter/fn", "POST, PUT"},
		{http.MethodDelete, "/deadletter/fn", "POST, PUT"},
		{http.MethodPatch, "/deadletter/fn", "POST, PUT"},
		{http.MethodPost, "/healthz", "GET, HEAD"},
		{http.MethodPost, "/metrics", "GET, HEAD"},
	}
	for _, tt := range tests {
		t.Run(tt.method+" "+tt.target, func(t *testing.T) {
			t.Parallel()
			b := setup(t, nil)
			w := b.do(tt.method, tt.target, []byte("x"), nil)
			wantError(t, w, http.StatusMethodNotAllowed, "")
			if got := w.Header().Get("Allow"); got != tt.allow {
				t.Errorf("Allow = %q, want %q", got, tt.allow)
			}
			wantNothingStored(t, b.queue)
		})
	}
}

func TestNotFound(t *testing.T) {
	t.Parallel()
	for _, target := range []string{"/", "/foo", "/deadletterfn", "/healthz/", "/metrics/x", "/function/fn"} {
		t.Run(target, func(t *testing.T) {
			t.Parallel()
			b := setup(t, nil)
			wantError(t, b.do(http.MethodPost, target, nil, nil), http.StatusNotFound, "")
			wantError(t, b.do(http.MethodGet, target, nil, nil), http.StatusNotFound, "")
			wantNothingStored(t, b.queue)
		})
	}
}

func TestHealthz(t *testing.T) {
	t.Parallel()
	tests := []struct {
		method    string
		connected bool
		want      int
	}{
		{http.MethodGet, true, http.StatusOK},
		{http.MethodHead, true, http.StatusOK},
		{http.MethodGet, false, http.StatusServiceUnavailable},
		{http.MethodHead, false, http.StatusServiceUnavailable},
	}
	for _, tt := range tests {
		t.Run(fmt.Sprint(tt.method, " connected ", tt.connected), func(t *testing.T) {
			t.Parallel()
			b := setup(t, nil)
			b.queue.connected = tt.connected
			w := b.do(tt.method, "/healthz", nil, nil)
			if tt.want != http.StatusOK {
				wantError(t, w, tt.want, "")
				return
			}
			if w.Code != tt.want {
				t.Fatalf("status = %d, want %d", w.Code, tt.want)
			}
			if m := decodeJSON(t, w); !reflect.DeepEqual(m, map[string]any{"status": "ok"}) {
				t.Fatalf("body = %v, want {status: ok}", m)
			}
		})
	}
}

func TestMetrics(t *testing.T) {
	t.Parallel()
	for _, path := range []string{"/metrics", "/_metrics"} {
		t.Run(path, func(t *testing.T) {
			t.Parallel()
			b := setup(t, nil)
			if w := b.do(http.MethodPost, "/deadletter/fn", []byte("12345"), nil); w.Code != http.StatusAccepted {
				t.Fatalf("requeue status = %d", w.Code)
			}
			b.do(http.MethodPost, "/deadletter/Fn", nil, nil)
			b.do(http.MethodPost, "/deadletter/fn", nil, http.Header{"X-Retries": {"x"}})

			w := b.do(http.MethodGet, path, nil, nil)
			if w.Code != http.StatusOK {
				t.Fatalf("status = %d, want 200", w.Code)
			}
			text := w.Body.String()
			for _, want := range []string{
				`mailbox_requeue_requests_total{code="202"} 1`,
				`mailbox_requeue_requests_total{code="400"} 2`,
				`mailbox_requeue_requests_total{code="503"} 0`,
				`mailbox_requeue_body_bytes_count 1`,
				`mailbox_requeue_body_bytes_sum 5`,
				`mailbox_received_total{function="fn"} 1`,
			} {
				if !strings.Contains(text, want+"\n") {
					t.Errorf("%s lacks %q:\n%s", path, want, text)
				}
			}
			// Refused requeues are not counted per function.
			if strings.Contains(text, `function="Fn"`) || strings.Count(text, `mailbox_received_total{function=`) != 1 {
				t.Errorf("metrics label refused requeues by function:\n%s", text)
			}
		})
	}
}

func TestWaitingMetric(t *testing.T) {
	t.Parallel()
	b := setup(t, nil)
	ctx := context.Background()
	at := testNow.Add(-time.Minute)
	for _, s := range []status.Status{
		{ID: "a1", Function: "a", State: status.Waiting},
		{ID: "a2", Function: "a", State: status.InFlight},
		{ID: "b1", Function: "b", State: status.Waiting},
		{ID: "c1", Function: "c", State: status.Delivered},
		{ID: "a1-cb", Function: "a", Kind: envelope.KindCallback, State: status.Waiting},
	} {
		s.AcceptedAt, s.UpdatedAt = at, at
		if err := b.queue.RecordStatus(ctx, s); err != nil {
			t.Fatal(err)
		}
	}
	text := b.do(http.MethodGet, "/metrics", nil, nil).Body.String()
	for _, want := range []string{"# TYPE mailbox_waiting gauge", `mailbox_waiting{function="a"} 2`, `mailbox_waiting{function="b"} 1`} {
		if !strings.Contains(text, want+"\n") {
			t.Errorf("/metrics lacks %q:\n%s", want, text)
		}
	}
	if strings.Contains(text, `mailbox_waiting{function="c"}`) {
		t.Errorf("a function with nothing waiting is exported:\n%s", text)
	}

	// Past names.MaxLabels functions, the rest are counted as other.
	for i := range names.MaxLabels + 1 {
		s := status.Status{ID: fmt.Sprintf("z%d", i), Function: fmt.Sprintf("z%04d", i), State: status.Waiting, AcceptedAt: at, UpdatedAt: at}
		if err := b.queue.RecordStatus(ctx, s); err != nil {
			t.Fatal(err)
		}
	}
	// a, b and the first 498 z functions have labels of their own.
	if got := metricstest.Sum(t, b.reg, "mailbox_waiting", "function", names.Other); got != 3 {
		t.Errorf("mailbox_waiting{function=other} = %v, want 3", got)
	}
	if got := metricstest.Sum(t, b.reg, "mailbox_waiting"); got != names.MaxLabels+1+3 {
		t.Errorf("mailbox_waiting sums to %v, want %d", got, names.MaxLabels+1+3)
	}

	// Without counts, nothing is exported.
	b.queue.mu.Lock()
	b.queue.statusErr = queue.ErrUnavailable
	b.queue.mu.Unlock()
	if text := b.do(http.MethodGet, "/metrics", nil, nil).Body.String(); strings.Contains(text, "mailbox_waiting{") {
		t.Errorf("mailbox_waiting exported while the queue is unavailable:\n%s", text)
	}
	if !strings.Contains(b.logs.String(), "mailbox_waiting not exported") {
		t.Errorf("no debug log of the failed count:\n%s", b.logs.String())
	}
}

func TestNewInvalidOptions(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name   string
		adjust func(*Options)
		want   string // part of the error
	}{
		{"nil queue", func(o *Options) { o.Queue = nil }, "Queue"},
		{"negative default max retries", func(o *Options) { o.Defaults.MaxRetries = -1 }, "Defaults.MaxRetries is -1"},
		{"limit below default", func(o *Options) { o.Defaults.MaxRetriesLimit = 5 }, "Defaults.MaxRetriesLimit is 5"},
		{"negative default delay", func(o *Options) { o.Defaults.Delay = -time.Second }, "Defaults.Delay is -1s"},
		{"max delay below default", func(o *Options) { o.Defaults.MaxDelay = time.Second }, "Defaults.MaxDelay is 1s"},
		{"negative max body", func(o *Options) { o.MaxBodyBytes = -1 }, "MaxBodyBytes"},
		{"nil registerer", func(o *Options) { o.Registerer = nil }, "Registerer"},
		{"nil gatherer", func(o *Options) { o.Gatherer = nil }, "Gatherer"},
		{"page without a guard", func(o *Options) { o.UI = http.NotFoundHandler() }, "Guard is required"},
		{"no callback policy", func(o *Options) { o.Callbacks = nil }, "Callbacks is required"},
	}
	// valid returns working options on a fresh registry, so that only the
	// option under test is wrong.
	valid := func() Options {
		reg := prometheus.NewRegistry()
		return Options{
			Queue:      &memQueue{},
			Defaults:   testDefaults(),
			Callbacks:  testCallbacks(t),
			Registerer: reg,
			Gatherer:   reg,
		}
	}
	if _, err := New(valid()); err != nil {
		t.Fatalf("New with valid options: %v", err)
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			o := valid()
			tt.adjust(&o)
			h, err := New(o)
			if err == nil {
				t.Fatalf("New = %v, want an error naming %s", h, tt.want)
			}
			if !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("error %q does not name %s", err, tt.want)
			}
		})
	}
}

func TestNewRegistrationConflict(t *testing.T) {
	t.Parallel()
	reg := prometheus.NewRegistry()
	reg.MustRegister(prometheus.NewHistogram(prometheus.HistogramOpts{Name: "mailbox_requeue_body_bytes", Help: "taken"}))
	_, err := New(Options{
		Queue:      &memQueue{},
		Callbacks:  testCallbacks(t),
		Registerer: reg,
		Gatherer:   reg,
	})
	if err == nil {
		t.Fatal("New succeeded although mailbox_requeue_body_bytes is already registered")
	}
	if !strings.Contains(err.Error(), "mailbox_requeue_body_bytes") {
		t.Fatalf("error %q does not name the conflicting metric", err)
	}
	// The counter registered before the conflict must have been removed:
	// Unregister reports whether it found it.
	if reg.Unregister(prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "mailbox_requeue_requests_total", Help: "x",
	}, []string{"code"})) {
		t.Fatal("mailbox_requeue_requests_total is still registered after New failed")
	}
}

// TestRequeueRefusesHeaderNotUTF8 (found by FuzzRequeueRequest): HTTP
// lets a header value carry bytes that are not UTF-8, but the envelope
// stores headers as JSON text, which would turn them into U+FFFD: the
// function would get other bytes than were sent. Such a request is
// refused, naming the header, rather than changed.
func TestRequeueRefusesHeaderNotUTF8(t *testing.T) {
	t.Parallel()
	for _, name := range []string{"X-Custom", "Content-Type", envelope.HeaderCallbackURL} {
		b := setup(t, nil)
		w := b.do(http.MethodPost, "/deadletter/fn", []byte("x"), http.Header{name: {"http://a/\xd7"}})
		wantError(t, w, http.StatusBadRequest, name)
		wantNothingStored(t, b.queue)
	}
	// Credentials that are not kept are not stored, so not checked.
	b := setup(t, nil)
	if w := b.do(http.MethodPost, "/deadletter/fn", []byte("x"), http.Header{"Cookie": {"c=\xd7"}, "X-Text": {"ünïcödé ✓"}}); w.Code != http.StatusAccepted {
		t.Fatalf("status %d, want 202 (body %q)", w.Code, w.Body)
	}
}

// TestRequeueDropsMailboxHeaders: the headers the mailbox sets on what it
// delivers (a callback's outcome, the function name, attempts, the
// delivery signature) are the mailbox's word, and a delivery's signature
// covers them. A caller's copies, or those added to a captured signed
// requeue, are never stored, so never vouched for. A routed dead letter
// keeps the X-Dead-Letter-* that make it one; a plain message does not.
func TestRequeueDropsMailboxHeaders(t *testing.T) {
	t.Parallel()
	forged := func() http.Header {
		return http.Header{
			"Content-Type":                 {"text/plain"},
			"X-Custom":                     {"kept"},
			"X-Mailbox-Outcome":            {"delivered"},
			"X-Function-Status":            {"200"},
			"X-Function-Name":              {"payments"},
			"X-Mailbox-Attempts":           {"1"},
			"X-Mailbox-Function":           {"payments"},
			"X-Mailbox-Delivery-Signature": {"v1=00"},
			"X-Mailbox-Timestamp":          {"1"},
			"X-Dead-Letter-Reason":         {"rejected"},
			"X-Dead-Letter-Time":           {"2026-01-01T00:00:00Z"},
			"X-Dead-Letter-Retries":        {"3"},
			"x-mailbox-outcome":            {"non-canonical"},
			"Connection":                   {"X-Hop, keep-alive"},
			"X-Hop":                        {"1"},
			"Keep-Alive":                   {"timeout=5"},
		}
	}
	b := setup(t, nil)
	if w := b.do(http.MethodPost, "/deadletter/fn", []byte("x"), forged()); w.Code != http.StatusAccepted {
		t.Fatalf("status = %d, want 202 (body %q)", w.Code, w.Body)
	}
	routed := forged()
	routed.Set("X-Dead-Letter-From", "fn")
	if w := b.do(http.MethodPost, "/deadletter/dlq", []byte("x"), routed); w.Code != http.StatusAccepted {
		t.Fatalf("routed: status = %d, want 202 (body %q)", w.Code, w.Body)
	}
	s, _ := b.queue.stored()
	if len(s) != 2 {
		t.Fatalf("stored %d messages, want 2", len(s))
	}
	want := http.Header{"Content-Type": {"text/plain"}, "X-Custom": {"kept"}}
	if !reflect.DeepEqual(s[0].Header, want) {
		t.Errorf("stored header %v, want %v", s[0].Header, want)
	}
	want = http.Header{"Content-Type": {"text/plain"}, "X-Custom": {"kept"}, "X-Dead-Letter-Reason": {"rejected"},
		"X-Dead-Letter-Time": {"2026-01-01T00:00:00Z"}, "X-Dead-Letter-Retries": {"3"}, "X-Dead-Letter-From": {"fn"}}
	if !reflect.DeepEqual(s[1].Header, want) {
		t.Errorf("routed dead letter's stored header %v, want %v", s[1].Header, want)
	}
}
