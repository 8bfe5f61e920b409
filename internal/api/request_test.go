package api

import (
	"net/http"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/openfaas/mailbox/internal/delivery"
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
	d := delivery.Defaults{MaxRetries: 10, MaxRetriesLimit: 100, Delay: time.Minute, MaxDelay: time.Hour}
	// Nothing set: an absent header leaves its setting to the connector
	// (annotations, then defaults), so parseParams fills in no default.
	unset := requeueParams{}
	with := func(f func(*requeueParams)) requeueParams {
		p := unset
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
		{name: "nothing set", header: http.Header{}, want: unset},
		{name: "nil header", header: nil, want: unset},

		{name: "retries", header: http.Header{envelope.HeaderRetries: {"3"}}, want: with(func(p *requeueParams) { p.retries = 3 })},
		{name: "retries zero", header: http.Header{envelope.HeaderRetries: {"0"}}, want: unset},
		{name: "retries not a number", header: http.Header{envelope.HeaderRetries: {"abc"}}, wantField: envelope.HeaderRetries},
		{name: "retries negative", header: http.Header{envelope.HeaderRetries: {"-1"}}, wantField: envelope.HeaderRetries},
		{name: "retries signed", header: http.Header{envelope.HeaderRetries: {"+1"}}, wantField: envelope.HeaderRetries},
		{name: "retries empty", header: http.Header{envelope.HeaderRetries: {""}}, wantField: envelope.HeaderRetries},
		{name: "retries fraction", header: http.Header{envelope.HeaderRetries: {"1.5"}}, wantField: envelope.HeaderRetries},
		{name: "retries overflow", header: http.Header{envelope.HeaderRetries: {"99999999999999999999999"}}, wantField: envelope.HeaderRetries},
		{name: "retries twice", header: http.Header{envelope.HeaderRetries: {"1", "2"}}, wantField: envelope.HeaderRetries},

		{name: "max retries", header: http.Header{envelope.HeaderMaxRetries: {"5"}}, want: with(func(p *requeueParams) { p.policy.MaxRetries = ptr(5) })},
		{name: "max retries zero", header: http.Header{envelope.HeaderMaxRetries: {"0"}}, want: with(func(p *requeueParams) { p.policy.MaxRetries = ptr(0) })},
		{name: "max retries default value", header: http.Header{envelope.HeaderMaxRetries: {"10"}}, want: with(func(p *requeueParams) { p.policy.MaxRetries = ptr(10) })},
		{name: "max retries at cap", header: http.Header{envelope.HeaderMaxRetries: {"100"}}, want: with(func(p *requeueParams) { p.policy.MaxRetries = ptr(100) })},
		{name: "max retries above cap", header: http.Header{envelope.HeaderMaxRetries: {"101"}}, wantField: envelope.HeaderMaxRetries},
		{name: "max retries negative", header: http.Header{envelope.HeaderMaxRetries: {"-1"}}, wantField: envelope.HeaderMaxRetries},
		{name: "max retries not a number", header: http.Header{envelope.HeaderMaxRetries: {"many"}}, wantField: envelope.HeaderMaxRetries},
		{name: "max retries twice", header: http.Header{envelope.HeaderMaxRetries: {"1", "1"}}, wantField: envelope.HeaderMaxRetries},

		{name: "delay seconds", header: http.Header{envelope.HeaderDelay: {"5"}}, want: with(func(p *requeueParams) { p.policy.Delay = ptr(5 * time.Second) })},
		{name: "delay zero", header: http.Header{envelope.HeaderDelay: {"0"}}, want: with(func(p *requeueParams) { p.policy.Delay = ptr(time.Duration(0)) })},
		{name: "delay milliseconds", header: http.Header{envelope.HeaderDelay: {"1500ms"}}, want: with(func(p *requeueParams) { p.policy.Delay = ptr(1500 * time.Millisecond) })},
		{name: "delay minutes", header: http.Header{envelope.HeaderDelay: {"2m"}}, want: with(func(p *requeueParams) { p.policy.Delay = ptr(2 * time.Minute) })},
		{name: "delay at cap", header: http.Header{envelope.HeaderDelay: {"3600"}}, want: with(func(p *requeueParams) { p.policy.Delay = ptr(time.Hour) })},
		{name: "delay above cap seconds", header: http.Header{envelope.HeaderDelay: {"3601"}}, wantField: envelope.HeaderDelay},
		{name: "delay above cap duration", header: http.Header{envelope.HeaderDelay: {"2h"}}, wantField: envelope.HeaderDelay},
		{name: "delay negative seconds", header: http.Header{envelope.HeaderDelay: {"-5"}}, wantField: envelope.HeaderDelay},
		{name: "delay negative duration", header: http.Header{envelope.HeaderDelay: {"-1s"}}, wantField: envelope.HeaderDelay},
		{name: "delay not a duration", header: http.Header{envelope.HeaderDelay: {"soon"}}, wantField: envelope.HeaderDelay},
		{name: "delay empty", header: http.Header{envelope.HeaderDelay: {""}}, wantField: envelope.HeaderDelay},
		{name: "delay twice", header: http.Header{envelope.HeaderDelay: {"1", "2"}}, wantField: envelope.HeaderDelay},

		{name: "backoff fixed", header: http.Header{envelope.HeaderBackoff: {"fixed"}}, want: with(func(p *requeueParams) { p.policy.Backoff = envelope.BackoffFixed })},
		{name: "backoff exponential", header: http.Header{envelope.HeaderBackoff: {"exponential"}}, want: with(func(p *requeueParams) { p.policy.Backoff = envelope.BackoffExponential })},
		{name: "backoff other", header: http.Header{envelope.HeaderBackoff: {"linear"}}, wantField: envelope.HeaderBackoff},
		{name: "backoff empty", header: http.Header{envelope.HeaderBackoff: {""}}, wantField: envelope.HeaderBackoff},
		{name: "backoff twice", header: http.Header{envelope.HeaderBackoff: {"fixed", "exponential"}}, wantField: envelope.HeaderBackoff},

		{name: "max delay seconds", header: http.Header{envelope.HeaderMaxDelay: {"30"}}, want: with(func(p *requeueParams) { p.policy.MaxDelay = ptr(30 * time.Second) })},
		{name: "max delay duration", header: http.Header{envelope.HeaderMaxDelay: {"10m"}}, want: with(func(p *requeueParams) { p.policy.MaxDelay = ptr(10 * time.Minute) })},
		{name: "max delay at cap", header: http.Header{envelope.HeaderMaxDelay: {"1h"}}, want: with(func(p *requeueParams) { p.policy.MaxDelay = ptr(time.Hour) })},
		{name: "max delay above cap", header: http.Header{envelope.HeaderMaxDelay: {"3601"}}, wantField: envelope.HeaderMaxDelay},
		{name: "max delay negative", header: http.Header{envelope.HeaderMaxDelay: {"-1m"}}, wantField: envelope.HeaderMaxDelay},
		{name: "max delay not a duration", header: http.Header{envelope.HeaderMaxDelay: {"later"}}, wantField: envelope.HeaderMaxDelay},
		{name: "max delay twice", header: http.Header{envelope.HeaderMaxDelay: {"1m", "1m"}}, wantField: envelope.HeaderMaxDelay},

		{name: "id taking a callback's", header: http.Header{envelope.HeaderMessageID: {"abc-cb"}}, wantField: envelope.HeaderMessageID},
		{name: "id taking a route's", header: http.Header{envelope.HeaderMessageID: {"abc-dl"}}, wantField: envelope.HeaderMessageID},
		{name: "routed dead letter keeps its id", header: http.Header{envelope.HeaderMessageID: {"abc-dl"}, envelope.HeaderDeadLetterFrom: {"fn"}},
			want: with(func(p *requeueParams) { p.id, p.routed = "abc-dl", true })},

		{name: "ttl seconds", header: http.Header{envelope.HeaderTTL: {"90"}}, want: with(func(p *requeueParams) { p.policy.TTL = ptr(90 * time.Second) })},
		{name: "ttl duration", header: http.Header{envelope.HeaderTTL: {"1500ms"}}, want: with(func(p *requeueParams) { p.policy.TTL = ptr(1500 * time.Millisecond) })},
		// No cap: a message may be kept for longer than one delay.
		{name: "ttl above max delay", header: http.Header{envelope.HeaderTTL: {"720h"}}, want: with(func(p *requeueParams) { p.policy.TTL = ptr(720 * time.Hour) })},
		{name: "ttl zero", header: http.Header{envelope.HeaderTTL: {"0"}}, wantField: envelope.HeaderTTL},
		{name: "ttl zero duration", header: http.Header{envelope.HeaderTTL: {"0s"}}, wantField: envelope.HeaderTTL},
		{name: "ttl negative", header: http.Header{envelope.HeaderTTL: {"-5"}}, wantField: envelope.HeaderTTL},
		{name: "ttl negative duration", header: http.Header{envelope.HeaderTTL: {"-1h"}}, wantField: envelope.HeaderTTL},
		{name: "ttl garbage", header: http.Header{envelope.HeaderTTL: {"forever"}}, wantField: envelope.HeaderTTL},
		{name: "ttl empty", header: http.Header{envelope.HeaderTTL: {""}}, wantField: envelope.HeaderTTL},
		{name: "ttl twice", header: http.Header{envelope.HeaderTTL: {"1h", "2h"}}, wantField: envelope.HeaderTTL},

		{name: "dead-letter function", header: http.Header{envelope.HeaderDeadLetterFunction: {"dlq"}}, want: with(func(p *requeueParams) { p.policy.DeadLetterFunction = "dlq" })},
		{name: "dead-letter function with namespace", header: http.Header{envelope.HeaderDeadLetterFunction: {"dlq.openfaas-fn"}}, want: with(func(p *requeueParams) { p.policy.DeadLetterFunction = "dlq.openfaas-fn" })},
		{name: "dead-letter function upper case", header: http.Header{envelope.HeaderDeadLetterFunction: {"DLQ"}}, wantField: envelope.HeaderDeadLetterFunction},
		{name: "dead-letter function underscore", header: http.Header{envelope.HeaderDeadLetterFunction: {"dl_q"}}, wantField: envelope.HeaderDeadLetterFunction},
		{name: "dead-letter function three parts", header: http.Header{envelope.HeaderDeadLetterFunction: {"a.b.c"}}, wantField: envelope.HeaderDeadLetterFunction},
		{name: "dead-letter function slash", header: http.Header{envelope.HeaderDeadLetterFunction: {"a/b"}}, wantField: envelope.HeaderDeadLetterFunction},
		{name: "dead-letter function leading dash", header: http.Header{envelope.HeaderDeadLetterFunction: {"-dlq"}}, wantField: envelope.HeaderDeadLetterFunction},
		{name: "dead-letter function too long", header: http.Header{envelope.HeaderDeadLetterFunction: {strings.Repeat("a", 64)}}, wantField: envelope.HeaderDeadLetterFunction},
		{name: "dead-letter function empty", header: http.Header{envelope.HeaderDeadLetterFunction: {""}}, wantField: envelope.HeaderDeadLetterFunction},
		{name: "dead-letter function twice", header: http.Header{envelope.HeaderDeadLetterFunction: {"a", "b"}}, wantField: envelope.HeaderDeadLetterFunction},

		{name: "callback http", header: http.Header{envelope.HeaderCallbackURL: {"http://cb.example.com/hook"}}, want: with(func(p *requeueParams) { p.policy.CallbackURL = "http://cb.example.com/hook" })},
		{name: "callback https with port and query", header: http.Header{envelope.HeaderCallbackURL: {"https://cb.example.com:8443/x?y=1"}}, want: with(func(p *requeueParams) { p.policy.CallbackURL = "https://cb.example.com:8443/x?y=1" })},
		{name: "callback relative", header: http.Header{envelope.HeaderCallbackURL: {"/hook"}}, wantField: envelope.HeaderCallbackURL},
		{name: "callback no scheme", header: http.Header{envelope.HeaderCallbackURL: {"cb.example.com/hook"}}, wantField: envelope.HeaderCallbackURL},
		{name: "callback ftp", header: http.Header{envelope.HeaderCallbackURL: {"ftp://cb.example.com/hook"}}, wantField: envelope.HeaderCallbackURL},
		{name: "callback mailto", header: http.Header{envelope.HeaderCallbackURL: {"mailto:ops@example.com"}}, wantField: envelope.HeaderCallbackURL},
		{name: "callback no host", header: http.Header{envelope.HeaderCallbackURL: {"http://"}}, wantField: envelope.HeaderCallbackURL},
		{name: "callback garbage", header: http.Header{envelope.HeaderCallbackURL: {"http://%zz"}}, wantField: envelope.HeaderCallbackURL},
		{name: "callback empty", header: http.Header{envelope.HeaderCallbackURL: {""}}, wantField: envelope.HeaderCallbackURL},
		{name: "callback twice", header: http.Header{envelope.HeaderCallbackURL: {"http://a/", "http://b/"}}, wantField: envelope.HeaderCallbackURL},

		{name: "message id", header: http.Header{envelope.HeaderMessageID: {"abc_DEF-123"}}, want: with(func(p *requeueParams) { p.id = "abc_DEF-123" })},
		{name: "message id 64", header: http.Header{envelope.HeaderMessageID: {id64}}, want: with(func(p *requeueParams) { p.id = id64 })},
		{name: "message id 65", header: http.Header{envelope.HeaderMessageID: {id64 + "Z"}}, wantField: envelope.HeaderMessageID},
		{name: "message id empty", header: http.Header{envelope.HeaderMessageID: {""}}, wantField: envelope.HeaderMessageID},
		{name: "message id dot", header: http.Header{envelope.HeaderMessageID: {"a.b"}}, wantField: envelope.HeaderMessageID},
		{name: "message id slash", header: http.Header{envelope.HeaderMessageID: {"a/b"}}, wantField: envelope.HeaderMessageID},
		{name: "message id twice", header: http.Header{envelope.HeaderMessageID: {"a", "a"}}, wantField: envelope.HeaderMessageID},

		{name: "routed dead letter", header: http.Header{envelope.HeaderDeadLetterFrom: {"fn"}}, want: with(func(p *requeueParams) { p.routed = true })},
		{name: "empty dead-letter from", header: http.Header{envelope.HeaderDeadLetterFrom: {""}}, want: unset},

		{
			name: "all set",
			header: http.Header{
				envelope.HeaderRetries: {"7"}, envelope.HeaderMaxRetries: {"9"}, envelope.HeaderDelay: {"90s"}, envelope.HeaderMessageID: {"x"},
				envelope.HeaderBackoff: {"exponential"}, envelope.HeaderMaxDelay: {"30m"}, envelope.HeaderTTL: {"2h"},
				envelope.HeaderDeadLetterFunction: {"dlq"}, envelope.HeaderCallbackURL: {"https://cb/"},
				envelope.HeaderDeadLetterFrom: {"other"},
			},
			want: requeueParams{
				retries: 7,
				id:      "x",
				policy: envelope.Policy{
					MaxRetries: ptr(9), Delay: ptr(90 * time.Second), Backoff: envelope.BackoffExponential,
					MaxDelay: ptr(30 * time.Minute), TTL: ptr(2 * time.Hour), DeadLetterFunction: "dlq", CallbackURL: "https://cb/",
				},
				routed: true,
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			got, err := parseParams(canonical(tt.header), d, testCallbacks(t))
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
			if !reflect.DeepEqual(got, tt.want) {
				t.Fatalf("parseParams() = %+v (policy %s), want %+v (policy %s)",
					got, policyString(got.policy), tt.want, policyString(tt.want.policy))
			}
		})
	}
}

// canonical returns h with its keys in canonical form, as a server
// receives them: envelope.HeaderTTL (X-Message-TTL) is not canonical.
func canonical(h http.Header) http.Header {
	if h == nil {
		return nil
	}
	out := make(http.Header, len(h))
	for k, vs := range h {
		k = http.CanonicalHeaderKey(k)
		out[k] = append(out[k], vs...)
	}
	return out
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
			"X-Backoff":              {"exponential"},
			"X-Max-Delay":            {"1m"},
			"X-Message-Ttl":          {"1h"},
			"X-Dead-Letter-Function": {"dlq"},
			"X-Callback-Url":         {"http://cb/"},
			"Authorization":          {"Bearer secret"},
			"Cookie":                 {"session=secret"},
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
			got := keptHeaders(tt.header, tt.keepCredentials, false)
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
