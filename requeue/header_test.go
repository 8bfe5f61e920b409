package requeue_test

import (
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/openfaas/mailbox/requeue"
)

// hdr builds a header from name, value pairs; Add keeps repeats.
func hdr(kv ...string) http.Header {
	h := http.Header{}
	for i := 0; i+1 < len(kv); i += 2 {
		h.Add(kv[i], kv[i+1])
	}
	return h
}

func TestHeaderArithmetic(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name string
		in   http.Header
		opts []requeue.Option
		want http.Header
	}{
		{
			name: "first requeue without options leaves the mailbox's defaults",
			in:   hdr("Content-Type", "application/json"),
			want: hdr("X-Retries", "1", "Content-Type", "application/json"),
		},
		{
			name: "first requeue takes the defaults given",
			in:   hdr(),
			opts: []requeue.Option{requeue.WithDefaultMaxRetries(5), requeue.WithDefaultDelay(90 * time.Second)},
			want: hdr("X-Retries", "1", "X-Max-Retries", "5", "X-Delay-Duration", "90"),
		},
		{
			name: "a delivery's headers are carried over, X-Retries one higher",
			in: hdr("X-Retries", "2", "X-Max-Retries", "4", "X-Delay-Duration", "1.5s",
				"X-Mailbox-Message-Id", "abc_123", "Content-Type", "text/plain", "X-Other", "dropped"),
			want: hdr("X-Retries", "3", "X-Max-Retries", "4", "X-Delay-Duration", "1.5s",
				"X-Mailbox-Message-Id", "abc_123", "Content-Type", "text/plain"),
		},
		{
			name: "incoming values win over defaults",
			in:   hdr("X-Retries", "0", "X-Max-Retries", "0", "X-Delay-Duration", "5"),
			opts: []requeue.Option{requeue.WithDefaultMaxRetries(9), requeue.WithDefaultDelay(time.Minute)},
			want: hdr("X-Retries", "1", "X-Max-Retries", "0", "X-Delay-Duration", "5"),
		},
		{
			name: "WithDelay wins over the incoming delay",
			in:   hdr("X-Retries", "7", "X-Delay-Duration", "60"),
			opts: []requeue.Option{requeue.WithDelay(1500 * time.Millisecond), requeue.WithDefaultDelay(time.Hour)},
			want: hdr("X-Retries", "8", "X-Delay-Duration", "1.5s"),
		},
		{
			name: "X-Retries already above X-Max-Retries is still sent, for the mailbox to dead-letter",
			in:   hdr("X-Retries", "3", "X-Max-Retries", "3"),
			want: hdr("X-Retries", "4", "X-Max-Retries", "3"),
		},
		{
			name: "header names are matched canonically",
			in:   http.Header{"X-Retries": {"1"}, "X-Mailbox-Message-Id": {"id"}},
			want: hdr("X-Retries", "2", "X-Mailbox-Message-Id", "id"),
		},
		{
			name: "nil options are skipped",
			in:   nil,
			opts: []requeue.Option{nil},
			want: hdr("X-Retries", "1"),
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			// The arithmetic of carried headers: trusted as they are here;
			// TestHeaderDropsUnverifiedControlHeaders is the default.
			got, err := requeue.Header(tc.in, append([]requeue.Option{requeue.TrustIncoming()}, tc.opts...)...)
			if err != nil {
				t.Fatalf("Header(%v) = %v", tc.in, err)
			}
			if !equalHeader(got, tc.want) {
				t.Fatalf("Header(%v)\n got %v\nwant %v", tc.in, got, tc.want)
			}
		})
	}
}

func TestHeaderRefusesWhatItCannotCount(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name string
		in   http.Header
		opts []requeue.Option
		want string // in the error
	}{
		{"X-Retries not a number", hdr("X-Retries", "two"), nil, "X-Retries"},
		{"X-Retries negative", hdr("X-Retries", "-1"), nil, "X-Retries"},
		{"X-Retries signed", hdr("X-Retries", "+1"), nil, "X-Retries"},
		{"X-Retries empty", hdr("X-Retries", ""), nil, "X-Retries"},
		{"X-Retries too large to count", hdr("X-Retries", "99999999999999999999"), nil, "X-Retries"},
		{"X-Retries at the largest int", hdr("X-Retries", "9223372036854775807"), nil, "cannot be incremented"},
		{"X-Retries twice", hdr("X-Retries", "1", "X-Retries", "2"), nil, "X-Retries: given more than once"},
		{"X-Max-Retries twice", hdr("X-Max-Retries", "1", "X-Max-Retries", "2"), nil, "X-Max-Retries"},
		{"X-Delay-Duration twice", hdr("X-Delay-Duration", "1", "X-Delay-Duration", "2"), nil, "X-Delay-Duration"},
		{"message id twice", hdr("X-Mailbox-Message-Id", "a", "X-Mailbox-Message-Id", "b"), nil, "X-Mailbox-Message-Id"},
		{"negative default max retries", nil, []requeue.Option{requeue.WithDefaultMaxRetries(-1)}, "WithDefaultMaxRetries"},
		{"negative default delay", nil, []requeue.Option{requeue.WithDefaultDelay(-time.Second)}, "WithDefaultDelay"},
		{"negative delay", nil, []requeue.Option{requeue.WithDelay(-time.Second)}, "WithDelay"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			got, err := requeue.Header(tc.in, append([]requeue.Option{requeue.TrustIncoming()}, tc.opts...)...)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Header(%v) = %v, %v; want an error containing %q", tc.in, got, err, tc.want)
			}
		})
	}
}

func TestFormatDelay(t *testing.T) {
	t.Parallel()
	for d, want := range map[time.Duration]string{
		0:                       "0",
		time.Second:             "1",
		2 * time.Minute:         "120",
		1500 * time.Millisecond: "1.5s",
		250 * time.Millisecond:  "250ms",
	} {
		if got := requeue.FormatDelay(d); got != want {
			t.Errorf("FormatDelay(%s) = %q, want %q", d, got, want)
		}
	}
}

func equalHeader(a, b http.Header) bool {
	if len(a) != len(b) {
		return false
	}
	for k, av := range a {
		bv := b[k]
		if len(av) != len(bv) {
			return false
		}
		for i := range av {
			if av[i] != bv[i] {
				return false
			}
		}
	}
	return true
}

// A routed dead letter requeued by its dead-letter function stays marked,
// so the mailbox does not route it again.
func TestHeaderKeepsDeadLetterMarks(t *testing.T) {
	in := http.Header{
		"X-Dead-Letter-From":    {"orders"},
		"X-Dead-Letter-Reason":  {"rejected"},
		"X-Dead-Letter-Time":    {"2026-11-23T05:00:00Z"},
		"X-Dead-Letter-Retries": {"3"},
		"X-Unrelated":           {"x"},
	}
	out, err := requeue.Header(in, requeue.TrustIncoming())
	if err != nil {
		t.Fatal(err)
	}
	for name, v := range in {
		if got := out.Get(name); name != "X-Unrelated" && got != v[0] {
			t.Errorf("%s = %q, want %q", name, got, v[0])
		}
	}
	if out.Get("X-Unrelated") != "" {
		t.Errorf("X-Unrelated carried over")
	}
	plain, _ := requeue.Header(http.Header{}, requeue.TrustIncoming())
	if plain.Get("X-Dead-Letter-From") != "" {
		t.Errorf("X-Dead-Letter-From set on an ordinary requeue")
	}
	// Unverified, they are anyone's: dropped.
	if untrusted, _ := requeue.Header(in); untrusted.Get("X-Dead-Letter-From") != "" {
		t.Errorf("X-Dead-Letter-From carried over from an unverified request")
	}
}

func TestParseDelay(t *testing.T) {
	for v, want := range map[string]time.Duration{"60": time.Minute, "0": 0, "1500ms": 1500 * time.Millisecond, "2m": 2 * time.Minute} {
		if got, err := requeue.ParseDelay(v); err != nil || got != want {
			t.Errorf("ParseDelay(%q) = %s, %v; want %s", v, got, err, want)
		}
		if got, _ := requeue.ParseDelay(requeue.FormatDelay(want)); got != want {
			t.Errorf("ParseDelay(FormatDelay(%s)) = %s", want, got)
		}
	}
	for _, v := range []string{"-1", "-1s", "soon", ""} {
		if _, err := requeue.ParseDelay(v); err == nil {
			t.Errorf("ParseDelay(%q) succeeded, want an error", v)
		}
	}
}
