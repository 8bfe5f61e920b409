package api

import (
	"net/http"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/openfaas/mailbox/internal/envelope"
)

func TestMessageType(t *testing.T) {
	t.Parallel()
	label63 := strings.Repeat("a", 63)
	tests := []struct {
		path string
		want string // "" means invalid
	}{
		{"/deadletter/a", "a"},
		{"/deadletter/fn-1", "fn-1"},
		{"/deadletter/0", "0"},
		{"/deadletter/fn.openfaas-fn", "fn.openfaas-fn"},
		{"/deadletter/" + label63, label63},
		{"/deadletter/" + label63 + "." + label63, label63 + "." + label63},

		{"/deadletter", ""},
		{"/deadletter/", ""},
		{"/deadletterfn", ""},
		{"/deadletter/a/b", ""},
		{"/deadletter/a/", ""},
		{"/deadletter/%2F", ""},
		{"/deadletter/a%2Fb", ""},
		{"/deadletter/..", ""},
		{"/deadletter/a/../b", ""},
		{"/deadletter/%2E%2E", ""},
		{"/deadletter/%25", ""},
		{"/deadletter/%61", ""},
		{"/deadletter/Fn", ""},
		{"/deadletter/-a", ""},
		{"/deadletter/a-", ""},
		{"/deadletter/a_b", ""},
		{"/deadletter/" + strings.Repeat("a", 64), ""},
		{"/deadletter/a." + strings.Repeat("a", 64), ""},
		{"/deadletter/a..b", ""},
		{"/deadletter/a.b.c", ""},
		{"/deadletter/.a", ""},
		{"/deadletter/a.", ""},
		{"/deadletter/a b", ""},
	}
	for _, tt := range tests {
		t.Run(tt.path, func(t *testing.T) {
			t.Parallel()
			got, err := messageType(tt.path)
			if tt.want == "" {
				if err == nil {
					t.Fatalf("messageType(%q) = %q, want an error", tt.path, got)
				}
				return
			}
			if err != nil {
				t.Fatalf("messageType(%q): %v", tt.path, err)
			}
			if got != tt.want {
				t.Fatalf("messageType(%q) = %q, want %q", tt.path, got, tt.want)
			}
		})
	}
}

func TestParseParams(t *testing.T) {
	t.Parallel()
	l := limits{defaultMaxRetries: 10, maxRetriesLimit: 100, defaultDelay: time.Minute, maxDelay: time.Hour}
	defaults := requeueParams{retries: 0, maxRetries: 10, delay: time.Minute}
	with := func(f func(*requeueParams)) requeueParams {
		p := defaults
		f(&p)
		return p
	}
	id64 := strings.Repeat("Z", 64)

	tests := []struct {
		name      string
		header    http.Header
		want      requeueParams
		wantField string // set when an error naming this header is expected
	}{
		{name: "defaults", header: http.Header{}, want: defaults},

		{name: "retries", header: http.Header{envelope.HeaderRetries: {"3"}}, want: with(func(p *requeueParams) { p.retries = 3 })},
		{name: "retries zero", header: http.Header{envelope.HeaderRetries: {"0"}}, want: defaults},
		{name: "retries not a number", header: http.Header{envelope.HeaderRetries: {"abc"}}, wantField: envelope.HeaderRetries},
		{name: "retries negative", header: http.Header{envelope.HeaderRetries: {"-1"}}, wantField: envelope.HeaderRetries},
		{name: "retries signed", header: http.Header{envelope.HeaderRetries: {"+1"}}, wantField: envelope.HeaderRetries},
		{name: "retries empty", header: http.Header{envelope.HeaderRetries: {""}}, wantField: envelope.HeaderRetries},
		{name: "retries fraction", header: http.Header{envelope.HeaderRetries: {"1.5"}}, wantField: envelope.HeaderRetries},
		{name: "retries overflow", header: http.Header{envelope.HeaderRetries: {"99999999999999999999999"}}, wantField: envelope.HeaderRetries},
		{name: "retries twice", header: http.Header{envelope.HeaderRetries: {"1", "2"}}, wantField: envelope.HeaderRetries},

		{name: "max retries", header: http.Header{envelope.HeaderMaxRetries: {"5"}}, want: with(func(p *requeueParams) { p.maxRetries = 5 })},
		{name: "max retries zero", header: http.Header{envelope.HeaderMaxRetries: {"0"}}, want: with(func(p *requeueParams) { p.maxRetries = 0 })},
		{name: "max retries at cap", header: http.Header{envelope.HeaderMaxRetries: {"100"}}, want: with(func(p *requeueParams) { p.maxRetries = 100 })},
		{name: "max retries above cap", header: http.Header{envelope.HeaderMaxRetries: {"101"}}, wantField: envelope.HeaderMaxRetries},
		{name: "max retries negative", header: http.Header{envelope.HeaderMaxRetries: {"-1"}}, wantField: envelope.HeaderMaxRetries},
		{name: "max retries not a number", header: http.Header{envelope.HeaderMaxRetries: {"many"}}, wantField: envelope.HeaderMaxRetries},

		{name: "delay seconds", header: http.Header{envelope.HeaderDelay: {"5"}}, want: with(func(p *requeueParams) { p.delay = 5 * time.Second })},
		{name: "delay zero", header: http.Header{envelope.HeaderDelay: {"0"}}, want: with(func(p *requeueParams) { p.delay = 0 })},
		{name: "delay milliseconds", header: http.Header{envelope.HeaderDelay: {"1500ms"}}, want: with(func(p *requeueParams) { p.delay = 1500 * time.Millisecond })},
		{name: "delay minutes", header: http.Header{envelope.HeaderDelay: {"2m"}}, want: with(func(p *requeueParams) { p.delay = 2 * time.Minute })},
		{name: "delay at cap", header: http.Header{envelope.HeaderDelay: {"3600"}}, want: with(func(p *requeueParams) { p.delay = time.Hour })},
		{name: "delay above cap seconds", header: http.Header{envelope.HeaderDelay: {"3601"}}, wantField: envelope.HeaderDelay},
		{name: "delay above cap duration", header: http.Header{envelope.HeaderDelay: {"2h"}}, wantField: envelope.HeaderDelay},
		{name: "delay negative seconds", header: http.Header{envelope.HeaderDelay: {"-5"}}, wantField: envelope.HeaderDelay},
		{name: "delay negative duration", header: http.Header{envelope.HeaderDelay: {"-1s"}}, wantField: envelope.HeaderDelay},
		{name: "delay not a duration", header: http.Header{envelope.HeaderDelay: {"soon"}}, wantField: envelope.HeaderDelay},
		{name: "delay empty", header: http.Header{envelope.HeaderDelay: {""}}, wantField: envelope.HeaderDelay},

		{name: "message id", header: http.Header{envelope.HeaderMessageID: {"abc_DEF-123"}}, want: with(func(p *requeueParams) { p.id = "abc_DEF-123" })},
		{name: "message id 64", header: http.Header{envelope.HeaderMessageID: {id64}}, want: with(func(p *requeueParams) { p.id = id64 })},
		{name: "message id 65", header: http.Header{envelope.HeaderMessageID: {id64 + "Z"}}, wantField: envelope.HeaderMessageID},
		{name: "message id empty", header: http.Header{envelope.HeaderMessageID: {""}}, wantField: envelope.HeaderMessageID},
		{name: "message id dot", header: http.Header{envelope.HeaderMessageID: {"a.b"}}, wantField: envelope.HeaderMessageID},
		{name: "message id slash", header: http.Header{envelope.HeaderMessageID: {"a/b"}}, wantField: envelope.HeaderMessageID},

		{
			name: "all set",
			header: http.Header{
				envelope.HeaderRetries: {"7"}, envelope.HeaderMaxRetries: {"9"}, envelope.HeaderDelay: {"90s"}, envelope.HeaderMessageID: {"x"},
			},
			want: requeueParams{retries: 7, maxRetries: 9, delay: 90 * time.Second, id: "x"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			got, err := parseParams(tt.header, l)
			if tt.wantField != "" {
				fe, ok := err.(*fieldError)
				if !ok {
					t.Fatalf("parseParams() = %+v, %v; want an error naming %s", got, err, tt.wantField)
				}
				if fe.field != tt.wantField {
					t.Fatalf("error names %q, want %q (%v)", fe.field, tt.wantField, err)
				}
				if !strings.HasPrefix(err.Error(), tt.wantField+": ") {
					t.Fatalf("error %q does not start with the header name %s", err, tt.wantField)
				}
				return
			}
			if err != nil {
				t.Fatalf("parseParams(): %v", err)
			}
			if got != tt.want {
				t.Fatalf("parseParams() = %+v, want %+v", got, tt.want)
			}
		})
	}
}

func TestKeptHeaders(t *testing.T) {
	t.Parallel()
	in := func() http.Header {
		return http.Header{
			"Content-Type":        {"application/octet-stream"},
			"X-Custom":            {"one", "two"},
			"Connection":          {"keep-alive, X-Per-Hop"},
			"X-Per-Hop":           {"dropped"},
			"Keep-Alive":          {"timeout=5"},
			"Proxy-Authenticate":  {"Basic"},
			"Proxy-Authorization": {"Basic Zm9vOmJhcg=="},
			"Proxy-Connection":    {"keep-alive"},
			"Te":                  {"trailers"},
			"Trailer":             {"X-Sum"},
			"Transfer-Encoding":   {"chunked"},
			"Upgrade":             {"websocket"},
			"Host":                {"mailbox:8080"},
			"Content-Length":      {"12"},
			"X-Retries":           {"1"},
			"X-Max-Retries":       {"2"},
			"X-Delay-Duration":    {"3"},
			"X-Mailbox-Message-Id": {
				"abc",
			},
			"Authorization": {"Bearer secret"},
			"Cookie":        {"session=secret"},
		}
	}
	tests := []struct {
		name            string
		header          http.Header
		keepCredentials bool
		want            http.Header
	}{
		{
			name:   "credentials dropped",
			header: in(),
			want: http.Header{
				"Content-Type": {"application/octet-stream"},
				"X-Custom":     {"one", "two"},
			},
		},
		{
			name:            "credentials kept",
			header:          in(),
			keepCredentials: true,
			want: http.Header{
				"Content-Type":  {"application/octet-stream"},
				"X-Custom":      {"one", "two"},
				"Authorization": {"Bearer secret"},
				"Cookie":        {"session=secret"},
			},
		},
		{name: "nothing left", header: http.Header{"Connection": {"close"}}, want: nil},
		{name: "nil", header: nil, want: nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			before := tt.header.Clone()
			got := keptHeaders(tt.header, tt.keepCredentials)
			if !reflect.DeepEqual(got, tt.want) {
				t.Fatalf("keptHeaders() = %v, want %v", got, tt.want)
			}
			if !reflect.DeepEqual(tt.header, before) {
				t.Fatalf("keptHeaders modified its input: %v, was %v", tt.header, before)
			}
		})
	}
}

func TestNewMessageID(t *testing.T) {
	t.Parallel()
	seen := make(map[string]bool)
	for range 100 {
		id, err := newMessageID()
		if err != nil {
			t.Fatal(err)
		}
		if len(id) != 32 || strings.Trim(id, "0123456789abcdef") != "" {
			t.Fatalf("id %q is not 32 lowercase hex characters", id)
		}
		if !isMessageID(id) {
			t.Fatalf("generated id %q would be refused as X-Mailbox-Message-Id", id)
		}
		if seen[id] {
			t.Fatalf("id %q generated twice", id)
		}
		seen[id] = true
	}
}
