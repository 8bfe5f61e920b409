package api

import (
	"bytes"
	"encoding/json"
	"errors"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/textproto"
	"net/url"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/openfaas/mailbox/internal/envelope"
)

// fuzzHeaders turns "Name: value" lines into the header a server would
// hand the handler, or reports false when a server would refuse the
// request before any handler runs (a name that is not a token, a value
// with a control character).
func fuzzHeaders(lines string) (http.Header, bool) {
	h := http.Header{}
	for line := range strings.SplitSeq(lines, "\n") {
		if line == "" {
			continue
		}
		name, value, ok := strings.Cut(line, ":")
		if !ok || !validHeaderName(name) {
			return nil, false
		}
		value = strings.Trim(value, " \t")
		for i := 0; i < len(value); i++ {
			if c := value[i]; (c < ' ' && c != '\t') || c == 0x7f {
				return nil, false
			}
		}
		key := textproto.CanonicalMIMEHeaderKey(name)
		if key == "Host" || key == "Content-Length" || key == "Transfer-Encoding" {
			// Framing: the server's, not the handler's business.
			continue
		}
		h[key] = append(h[key], value)
	}
	return h, true
}

func validHeaderName(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c <= ' ' || c >= 0x7f || strings.IndexByte(`"(),/:;<=>?@[\]{}`, c) >= 0 {
			return false
		}
	}
	return true
}

// normalized is e as the comparison of a round trip sees it: an empty
// header map and a nil one are the same stored message (Encode leaves an
// empty one out).
func normalized(e *envelope.Envelope) *envelope.Envelope {
	c := *e
	if len(c.Header) == 0 {
		c.Header = nil
	}
	if len(c.Body) == 0 {
		c.Body = nil
	}
	if len(c.Deaths) == 0 {
		c.Deaths = nil
	}
	return &c
}

// FuzzRequeueRequest sends a request target, headers and body to the
// requeue API: first through its parsers, then through the whole handler
// over an in-memory queue. Whatever the input, nothing panics, and either
// the answer is an error naming the field it is about (the path or a
// header) and nothing is stored, or what is stored is a valid envelope
// for the function the path names that survives the broker's round trip.
func FuzzRequeueRequest(f *testing.F) {
	for _, seed := range []struct{ path, header, body string }{
		{"/deadletter/fn", "", "hello"},
		{"/deadletter/fn.openfaas-fn", "X-Retries: 2\nX-Max-Retries: 5\nX-Delay-Duration: 1500ms", `{"a":1}`},
		{"/deadletter/%25", "", ""},
		{"/deadletter/a%2Fb", "", ""},
		{"/deadletter/%2e%2e", "", ""},
		{"/deadletter/../healthz", "", ""},
		{"/deadletter/a.b.c", "", ""},
		{"/deadletter/" + strings.Repeat("a", 64), "", ""},
		{"/deadletter/fn?x=%25", "", ""},
		{"/deadletter/fñ", "", ""},
		{"/deadletter/fn", "X-Retries: 99999999999999999999999", ""},
		{"/deadletter/fn", "X-Max-Retries: 101", ""},
		{"/deadletter/fn", "X-Retries: 11", "spent"},
		{"/deadletter/fn", "X-Delay-Duration: 9223372036854775807", ""},
		{"/deadletter/fn", "X-Delay-Duration: -1s", ""},
		{"/deadletter/fn", "X-Delay-Duration: 1e9h", ""},
		{"/deadletter/fn", "X-Message-TTL: 0", ""},
		{"/deadletter/fn", "X-Max-Delay: 2h", ""},
		{"/deadletter/fn", "X-Backoff: EXPONENTIAL", ""},
		{"/deadletter/fn", "X-Retries: 1\nX-Retries: 2", ""},
		{"/deadletter/fn", "X-Mailbox-Message-Id: abc-cb", ""},
		{"/deadletter/fn", "X-Mailbox-Message-Id: abc-dl\nX-Dead-Letter-From: fn", ""},
		{"/deadletter/fn", "X-Mailbox-Message-Id: ümlaut", ""},
		{"/deadletter/fn", "X-Dead-Letter-Function: mailbox", ""},
		{"/deadletter/fn", "X-Dead-Letter-Function: dlq.openfaas-fn", ""},
		{"/deadletter/fn", "X-Callback-Url: http://user:pw@example.com/", ""},
		{"/deadletter/fn", "X-Callback-Url: http://gateway:8080/function/cb?token=s3cret", ""},
		{"/deadletter/fn", "X-Callback-Url: http://169.254.169.254/latest/meta-data", ""},
		{"/deadletter/fn", "Connection: X-Secret\nX-Secret: 1\nAuthorization: Bearer t\nCookie: c=1", ""},
		{"/deadletter/fn", "Content-Type: application/octet-stream", "\x00\x01\xff\xfe"},
	} {
		f.Add(seed.path, seed.header, []byte(seed.body))
	}

	q := &memQueue{maxPayload: 1 << 20, connected: true}
	reg := prometheus.NewRegistry()
	callbacks := testCallbacks(f)
	h, err := New(Options{
		Callbacks:    callbacks,
		Queue:        q,
		Defaults:     testDefaults(),
		MaxBodyBytes: 1 << 16,
		Registerer:   reg,
		Gatherer:     reg,
		Logger:       slog.New(slog.DiscardHandler),
		Now:          func() time.Time { return testNow },
	})
	if err != nil {
		f.Fatal(err)
	}

	f.Fuzz(func(t *testing.T, target, headerLines string, body []byte) {
		u, err := url.ParseRequestURI(target)
		if err != nil || !strings.HasPrefix(target, "/") {
			return // a server answers 400 before any handler
		}
		header, ok := fuzzHeaders(headerLines)
		if !ok {
			return
		}

		// The parsers: an error names its field.
		path := u.EscapedPath()
		function, pathErr := messageType(path)
		if pathErr != nil {
			mustNameField(t, pathErr)
		}
		_, paramErr := parseParams(header, testDefaults(), callbacks)
		if paramErr != nil {
			mustNameField(t, paramErr)
		}

		// The whole handler, for what it routes to requeue.
		if path != "/deadletter" && !strings.HasPrefix(path, deadletterPrefix) {
			return
		}
		q.mu.Lock()
		q.scheduled, q.dead = nil, nil
		q.mu.Unlock()
		r := httptest.NewRequest(http.MethodPost, "/", bytes.NewReader(body))
		r.URL, r.RequestURI, r.Header = u, target, header
		w := httptest.NewRecorder()
		h.ServeHTTP(w, r)

		if ct := w.Header().Get("Content-Type"); ct != "application/json" {
			t.Fatalf("answer %d with Content-Type %q, want JSON", w.Code, ct)
		}
		var answer map[string]any
		if err := json.Unmarshal(w.Body.Bytes(), &answer); err != nil {
			t.Fatalf("answer %d is not JSON: %q", w.Code, w.Body)
		}
		scheduled, dead := q.stored()
		stored := append(scheduled, dead...)
		switch w.Code {
		case http.StatusAccepted, http.StatusOK:
			if pathErr != nil || paramErr != nil {
				t.Fatalf("answered %d to a request its parsers refuse (%v, %v)", w.Code, pathErr, paramErr)
			}
			if len(stored) == 0 {
				t.Fatalf("answered %d and stored nothing", w.Code)
			}
			if w.Code == http.StatusAccepted && (len(scheduled) != 1 || len(dead) != 0 || scheduled[0].Function != function) {
				t.Fatalf("answered 202 and stored %d scheduled, %d dead letters, want one message for %q", len(scheduled), len(dead), function)
			}
			for _, e := range stored {
				checkStored(t, e, header, body)
			}
		case http.StatusBadRequest, http.StatusForbidden:
			if field, _ := answer["field"].(string); field == "" {
				t.Fatalf("answer %d %q names no field", w.Code, w.Body)
			}
			fallthrough
		case http.StatusRequestEntityTooLarge:
			if msg, _ := answer["error"].(string); msg == "" {
				t.Fatalf("answer %d %q has no error message", w.Code, w.Body)
			}
			if len(stored) != 0 {
				t.Fatalf("answered %d and stored %d messages", w.Code, len(stored))
			}
		default:
			t.Fatalf("unexpected answer %d %q", w.Code, w.Body)
		}
	})
}

func mustNameField(t *testing.T, err error) {
	t.Helper()
	fe, ok := errors.AsType[*fieldError](err)
	if !ok || fe.field == "" {
		t.Fatalf("error %q names no field", err)
	}
}

// checkStored checks a stored envelope: no control header or credential
// kept, the body as sent, and the broker's round trip changes nothing.
func checkStored(t *testing.T, e *envelope.Envelope, header http.Header, body []byte) {
	t.Helper()
	for _, name := range []string{envelope.HeaderRetries, envelope.HeaderMaxRetries, envelope.HeaderDelay,
		envelope.HeaderMessageID, envelope.HeaderCallbackURL, "Authorization", "Cookie"} {
		if _, ok := e.Header[name]; ok {
			t.Fatalf("stored header keeps %s: %v", name, e.Header)
		}
	}
	if e.Kind == envelope.KindMessage && !bytes.Equal(e.Body, body) {
		t.Fatalf("stored body %q, want %q", e.Body, body)
	}
	if id := header.Get(envelope.HeaderMessageID); id != "" && e.Kind == envelope.KindMessage && e.ID != id {
		t.Fatalf("stored id %q, want the header's %q", e.ID, id)
	}
	if !isMessageID(e.ID) {
		t.Fatalf("stored id %q is not a message id", e.ID)
	}
	data, err := envelope.Encode(e)
	if err != nil {
		t.Fatalf("Encode: %v", err)
	}
	back, err := envelope.Decode(data)
	if err != nil {
		t.Fatalf("Decode of what Encode wrote: %v", err)
	}
	if !reflect.DeepEqual(normalized(back), normalized(e)) {
		t.Fatalf("round trip changed the envelope:\n%+v\nwant\n%+v", back, e)
	}
}
