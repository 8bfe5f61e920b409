package invoke

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"reflect"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/openfaas/mailbox/internal/delivery"
	"github.com/openfaas/mailbox/internal/envelope"
)

// request is what the stand-in gateway saw.
type request struct {
	Method        string
	Path          string
	Header        http.Header
	ContentLength int64
	Body          []byte
}

type bundle struct {
	srv      *httptest.Server
	requests chan request
	newConns atomic.Int64
}

// setup starts a stand-in gateway that records each request and answers
// with handler. It counts new connections, to check reuse.
func setup(t *testing.T, handler http.HandlerFunc) *bundle {
	t.Helper()
	b := &bundle{requests: make(chan request, 16)}
	b.srv = httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, err := io.ReadAll(r.Body)
		if err != nil {
			t.Errorf("reading request body: %v", err)
		}
		b.requests <- request{Method: r.Method, Path: r.URL.EscapedPath(), Header: r.Header.Clone(), ContentLength: r.ContentLength, Body: body}
		if handler != nil {
			handler(w, r)
		}
	}))
	b.srv.Config.ConnState = func(_ net.Conn, s http.ConnState) {
		if s == http.StateNew {
			b.newConns.Add(1)
		}
	}
	b.srv.Start()
	t.Cleanup(b.srv.Close)
	return b
}

func (b *bundle) next(t *testing.T) request {
	t.Helper()
	select {
	case r := <-b.requests:
		return r
	case <-time.After(5 * time.Second):
		t.Fatal("the gateway got no request")
		return request{}
	}
}

func TestInvokeSendsRequest(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		body []byte
	}{
		{name: "body", body: []byte(`{"order":42}`)},
		{name: "empty body", body: []byte{}},
		{name: "nil body", body: nil},
		{name: "binary body", body: []byte{0, 1, 2, 0xff, 0xfe, '\n', 0}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			b := setup(t, func(w http.ResponseWriter, _ *http.Request) {
				w.WriteHeader(http.StatusAccepted)
				_, _ = io.WriteString(w, "queued")
			})
			inv := New(b.srv.URL+"/", NewClient(5*time.Second, 4), "openfaas-mailbox/test")
			header := http.Header{
				"Content-Type": {"application/json"},
				"X-Call-Id":    {"abc"},
				"X-Retries":    {"2"},
				"X-Multi":      {"one", "two"},
				// A request that came through another connector keeps its
				// own values, not the SDK's.
				"X-Topic":     {"orders"},
				"X-Connector": {"kafka-connector"},
				// Replaced by the Invoker's.
				"User-Agent": {"curl/8.0"},
			}
			before := header.Clone()

			res := inv.Invoke(context.Background(), "fn.openfaas-fn", tt.body, header, 0)

			if res.Err != nil || res.Status != http.StatusAccepted || string(res.Body) != "queued" {
				t.Errorf("Result = %d %q %v, want 202 \"queued\" <nil>", res.Status, res.Body, res.Err)
			}
			got := b.next(t)
			if got.Method != http.MethodPost {
				t.Errorf("method %s, want POST", got.Method)
			}
			if got.Path != "/function/fn.openfaas-fn" {
				t.Errorf("path %q, want /function/fn.openfaas-fn", got.Path)
			}
			if !bytes.Equal(got.Body, tt.body) {
				t.Errorf("body %q, want %q", got.Body, tt.body)
			}
			want := header.Clone()
			want.Set("User-Agent", "openfaas-mailbox/test")
			// Added by Go's transport.
			want.Set("Accept-Encoding", "gzip")
			// Content-Length is Go's to set; checked as ContentLength.
			gotHeader := got.Header.Clone()
			gotHeader.Del("Content-Length")
			if got.ContentLength != int64(len(tt.body)) {
				t.Errorf("ContentLength %d, want %d", got.ContentLength, len(tt.body))
			}
			if !reflect.DeepEqual(gotHeader, want) {
				t.Errorf("headers\n%v\nwant\n%v", got.Header, want)
			}
			if !reflect.DeepEqual(header, before) {
				t.Errorf("caller's header modified: %v", header)
			}
		})
	}
}

func TestInvokeEmptyBodyOneResponse(t *testing.T) {
	t.Parallel()
	// connector-sdk reports an empty body as an error and then calls the
	// function anyway: the call must be made once and succeed.
	b := setup(t, nil)
	inv := New(b.srv.URL, NewClient(5*time.Second, 1), "ua")
	res := inv.Invoke(context.Background(), "fn", nil, nil, 0)
	if res.Err != nil || res.Status != http.StatusOK {
		t.Fatalf("Result = %d %v, want 200 <nil>", res.Status, res.Err)
	}
	b.next(t)
	select {
	case r := <-b.requests:
		t.Errorf("a second request: %+v", r)
	default:
	}
}

func TestInvokeStatus(t *testing.T) {
	t.Parallel()
	for _, status := range []int{200, 204, 301, 400, 404, 429, 500, 502, 503} {
		b := setup(t, func(w http.ResponseWriter, r *http.Request) {
			if status >= 300 && status < 400 {
				// Must not be followed: the body would go elsewhere.
				w.Header().Set("Location", "/function/other")
			}
			w.WriteHeader(status)
		})
		inv := New(b.srv.URL, NewClient(5*time.Second, 1), "ua")
		res := inv.Invoke(context.Background(), "fn", []byte("x"), nil, 0)
		if res.Err != nil || res.Status != status {
			t.Errorf("status %d: Result = %d %v", status, res.Status, res.Err)
		}
		if got := b.next(t).Path; got != "/function/fn" {
			t.Errorf("status %d: path %q", status, got)
		}
		select {
		case r := <-b.requests:
			t.Errorf("status %d: a second request to %s", status, r.Path)
		default:
		}
	}
}

func TestInvokeBoundsResponse(t *testing.T) {
	t.Parallel()
	long := strings.Repeat("é", 40<<10) // 80 KiB, more than the drain limit
	b := setup(t, func(w http.ResponseWriter, _ *http.Request) {
		w.WriteHeader(http.StatusInternalServerError)
		_, _ = io.WriteString(w, long)
	})
	inv := New(b.srv.URL, NewClient(5*time.Second, 1), "ua")
	res := inv.Invoke(context.Background(), "fn", []byte("x"), nil, 0)
	if res.Err != nil || res.Status != 500 {
		t.Fatalf("Result = %d %v", res.Status, res.Err)
	}
	if string(res.Body) != long[:readLimit] {
		t.Errorf("Body has %d bytes, want the first %d", len(res.Body), readLimit)
	}
	// What Decide keeps ends on a character boundary.
	e := delivery.Decide(&envelope.Envelope{}, delivery.Policy{MaxRetries: 3, RetryCodes: delivery.DefaultRetryCodes}, res, time.Now(), 0).Next
	if e.LastResponse != strings.Repeat("é", delivery.ResponseLimit/2) {
		t.Errorf("LastResponse has %d bytes", len(e.LastResponse))
	}
}

func TestInvokeNetworkError(t *testing.T) {
	t.Parallel()
	b := setup(t, nil)
	url := b.srv.URL
	b.srv.Close()
	inv := New(url, NewClient(5*time.Second, 1), "ua")
	res := inv.Invoke(context.Background(), "fn", []byte("x"), nil, 0)
	if res.Err == nil || res.Status != 0 {
		t.Fatalf("Result = %d %v, want an error", res.Status, res.Err)
	}
}

func TestInvokeTimeout(t *testing.T) {
	t.Parallel()
	release := make(chan struct{})
	b := setup(t, func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-release:
		case <-r.Context().Done():
		}
	})
	defer close(release)
	inv := New(b.srv.URL, NewClient(100*time.Millisecond, 1), "ua")

	start := time.Now()
	res := inv.Invoke(context.Background(), "fn", []byte("x"), nil, 0)
	if res.Err == nil || res.Status != 0 {
		t.Fatalf("Result = %d %v, want an error", res.Status, res.Err)
	}
	var ne net.Error
	if !errors.As(res.Err, &ne) || !ne.Timeout() {
		t.Errorf("Err = %v, want a timeout", res.Err)
	}
	if d := time.Since(start); d > 3*time.Second {
		t.Errorf("took %v", d)
	}
}

func TestInvokeTimeoutReadingBody(t *testing.T) {
	t.Parallel()
	release := make(chan struct{})
	b := setup(t, func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(http.StatusOK)
		_, _ = io.WriteString(w, "partial")
		w.(http.Flusher).Flush()
		select {
		case <-release:
		case <-r.Context().Done():
		}
	})
	defer close(release)
	inv := New(b.srv.URL, NewClient(100*time.Millisecond, 1), "ua")
	res := inv.Invoke(context.Background(), "fn", []byte("x"), nil, 0)
	if res.Err == nil {
		t.Fatalf("Result = %d %q, want an error", res.Status, res.Body)
	}
}

func TestInvokeContextCancel(t *testing.T) {
	t.Parallel()
	release := make(chan struct{})
	b := setup(t, func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-release:
		case <-r.Context().Done():
		}
	})
	defer close(release)
	// No client timeout: only the context can end the call.
	inv := New(b.srv.URL, NewClient(0, 1), "ua")

	ctx, cancel := context.WithCancel(context.Background())
	go func() {
		b.next(t) // the call is in flight
		cancel()
	}()
	done := make(chan delivery.Result, 1)
	go func() { done <- inv.Invoke(ctx, "fn", []byte("x"), nil, 0) }()

	select {
	case res := <-done:
		if !errors.Is(res.Err, context.Canceled) {
			t.Errorf("Err = %v, want context.Canceled", res.Err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Invoke did not return after cancel")
	}
}

func TestInvokeReusesConnection(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		resp string
	}{
		{name: "short response", resp: "ok"},
		// Longer than what is kept but within the drain limit.
		{name: "long response", resp: strings.Repeat("x", 32<<10)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			b := setup(t, func(w http.ResponseWriter, _ *http.Request) {
				_, _ = io.WriteString(w, tt.resp)
			})
			inv := New(b.srv.URL, NewClient(5*time.Second, 2), "ua")
			for i := range 5 {
				body := []byte("x")
				if i%2 == 1 {
					body = nil
				}
				if res := inv.Invoke(context.Background(), "fn", body, nil, 0); res.Err != nil || res.Status != 200 {
					t.Fatalf("call %d: Result = %d %v", i, res.Status, res.Err)
				}
				b.next(t)
				// Longer than types.MakeClient's 120ms idle timeout.
				if i == 2 {
					time.Sleep(200 * time.Millisecond)
				}
			}
			if n := b.newConns.Load(); n != 1 {
				t.Errorf("%d connections for 5 sequential calls, want 1", n)
			}
		})
	}
}

func TestInvokeConcurrent(t *testing.T) {
	t.Parallel()
	b := setup(t, func(w http.ResponseWriter, r *http.Request) {
		// Echo the call id so each caller can check it got its own answer.
		w.WriteHeader(http.StatusOK)
		_, _ = io.WriteString(w, r.Header.Get("X-Call-Id"))
	})
	inv := New(b.srv.URL, NewClient(5*time.Second, 8), "ua")
	// 16 calls fit the requests buffer, so the handler never blocks.
	var wg sync.WaitGroup
	for i := range 16 {
		wg.Go(func() {
			id := string(rune('a' + i))
			res := inv.Invoke(context.Background(), "fn", nil, http.Header{"X-Call-Id": {id}}, 0)
			if res.Err != nil || string(res.Body) != id {
				t.Errorf("call %s: Result = %d %q %v", id, res.Status, res.Body, res.Err)
			}
		})
	}
	wg.Wait()
}

func TestInvokeUserAgent(t *testing.T) {
	t.Parallel()
	b := setup(t, nil)

	inv := New(b.srv.URL, NewClient(5*time.Second, 1), "openfaas-mailbox/1.2.3")
	inv.Invoke(context.Background(), "fn", []byte("x"), nil, 0)
	if got := b.next(t).Header.Values("User-Agent"); !reflect.DeepEqual(got, []string{"openfaas-mailbox/1.2.3"}) {
		t.Errorf("User-Agent %q", got)
	}

	// Without one, the stored request's own is sent.
	inv = New(b.srv.URL, NewClient(5*time.Second, 1), "")
	inv.Invoke(context.Background(), "fn", []byte("x"), http.Header{"User-Agent": {"curl/8.0"}}, 0)
	if got := b.next(t).Header.Values("User-Agent"); !reflect.DeepEqual(got, []string{"curl/8.0"}) {
		t.Errorf("User-Agent %q", got)
	}
}

func TestInvokeFunctionName(t *testing.T) {
	t.Parallel()
	b := setup(t, nil)
	inv := New(b.srv.URL, NewClient(5*time.Second, 1), "ua")

	if res := inv.Invoke(context.Background(), "", []byte("x"), nil, 0); res.Err == nil {
		t.Error("empty function name: no error")
	}
	inv.Invoke(context.Background(), "../system/functions?x=1", []byte("x"), nil, 0)
	if got := b.next(t).Path; got != "/function/..%2Fsystem%2Ffunctions%3Fx=1" {
		t.Errorf("path %q, want the name escaped into one segment", got)
	}
}

func TestNewClientNil(t *testing.T) {
	t.Parallel()
	b := setup(t, nil)
	inv := New(b.srv.URL, nil, "ua")
	if res := inv.Invoke(context.Background(), "fn", []byte("x"), nil, 0); res.Err != nil || res.Status != 200 {
		t.Errorf("Result = %d %v", res.Status, res.Err)
	}
}
