package auth_test

import (
	"bytes"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/openfaas/mailbox/internal/auth"
)

const secret = "s3cret-token"

func newToken(t testing.TB, s string) *auth.Token {
	t.Helper()
	tok, err := auth.NewToken(s)
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

// signAt is a request signature written independently of the package,
// from the README's description: the canonical request keyed with
// HMAC-SHA256(token, "mailbox/v1/request").
func signAt(key, method, path string, headers []string, body []byte, ts int64) (sig, timestamp string) {
	k := hmac.New(sha256.New, []byte(key))
	k.Write([]byte("mailbox/v1/request"))
	m := hmac.New(sha256.New, k.Sum(nil))
	sum := sha256.Sum256(body)
	timestamp = fmt.Sprint(ts)
	lines := append([]string{"mailbox-request-v1", method, path, timestamp}, headers...)
	m.Write([]byte(strings.Join(append(lines, hex.EncodeToString(sum[:])), "\n")))
	return "v1=" + hex.EncodeToString(m.Sum(nil)), timestamp
}

// now is the fixed clock of the signature tests.
var now = time.Unix(1_800_000_000, 0)

func TestLoad(t *testing.T) {
	t.Parallel()

	dir := t.TempDir()
	write := func(name, content string) {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	write("newline", secret+"\n")
	write("padded", " \t"+secret+" \r\n")
	write("inner-space", "two words\n")
	write("empty", "")
	write("blank", " \n\t\n")
	if err := os.Mkdir(filepath.Join(dir, "a-directory"), 0o700); err != nil {
		t.Fatal(err)
	}

	for _, tc := range []struct {
		name    string
		file    string
		want    string   // the token read
		wantErr []string // all in the error
	}{
		{name: "trailing newline trimmed", file: "newline", want: secret},
		{name: "surrounding white space trimmed", file: "padded", want: secret},
		{name: "inner white space kept", file: "inner-space", want: "two words"},
		{name: "empty file", file: "empty", wantErr: []string{filepath.Join(dir, "empty"), "is empty"}},
		{name: "blank file", file: "blank", wantErr: []string{filepath.Join(dir, "blank"), "is empty"}},
		{name: "missing file", file: "nope", wantErr: []string{filepath.Join(dir, "nope"), "does not exist", "auth_token_secret"}},
		{name: "directory", file: "a-directory", wantErr: []string{"auth_token_secret", filepath.Join(dir, "a-directory")}},
		{name: "path, not a name", file: "../newline", wantErr: []string{`"../newline" is not a file name`}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			tok, err := auth.Load(dir, tc.file)
			if tc.wantErr != nil {
				if err == nil {
					t.Fatalf("Load(%q) = %v, nil; want an error", tc.file, tok)
				}
				for _, w := range tc.wantErr {
					if !strings.Contains(err.Error(), w) {
						t.Errorf("Load(%q) error %q does not contain %q", tc.file, err, w)
					}
				}
				if tok != nil {
					t.Errorf("Load(%q) returned a token with its error", tc.file)
				}
				return
			}
			if err != nil {
				t.Fatalf("Load(%q): %v", tc.file, err)
			}
			if !tok.Matches(tc.want) {
				t.Errorf("Load(%q) does not match %q", tc.file, tc.want)
			}
			if tok.Matches(tc.want + "\n") {
				t.Errorf("Load(%q) matches %q with a newline", tc.file, tc.want)
			}
		})
	}

	t.Run("no name: no token", func(t *testing.T) {
		t.Parallel()
		tok, err := auth.Load("/does/not/exist", "")
		if tok != nil || err != nil {
			t.Errorf("Load with no name = %v, %v; want nil, nil", tok, err)
		}
	})
}

func TestNewTokenEmpty(t *testing.T) {
	t.Parallel()
	if tok, err := auth.NewToken(""); err == nil || tok != nil {
		t.Errorf("NewToken(\"\") = %v, %v; want an error", tok, err)
	}
}

func TestMatches(t *testing.T) {
	t.Parallel()
	tok := newToken(t, secret)
	for _, tc := range []struct {
		s    string
		want bool
	}{
		{secret, true},
		{"", false},
		{secret[:len(secret)-1], false},
		{secret + "x", false},
		{strings.ToUpper(secret), false},
	} {
		if got := tok.Matches(tc.s); got != tc.want {
			t.Errorf("Matches(%q) = %v, want %v", tc.s, got, tc.want)
		}
	}
}

func TestCheckBearer(t *testing.T) {
	t.Parallel()

	tok := newToken(t, secret)
	sig, ts := signAt(secret, http.MethodGet, "/deadletters", nil, nil, now.Unix())
	for _, tc := range []struct {
		name   string
		header map[string]string
		want   error
	}{
		{name: "right bearer", header: map[string]string{"Authorization": "Bearer " + secret}, want: nil},
		{name: "bearer scheme in any case", header: map[string]string{"Authorization": "bearer " + secret}, want: nil},
		{name: "wrong bearer", header: map[string]string{"Authorization": "Bearer nope"}, want: auth.ErrBadToken},
		{name: "bearer with the token's prefix", header: map[string]string{"Authorization": "Bearer " + secret[:4]}, want: auth.ErrBadToken},
		{name: "empty bearer", header: map[string]string{"Authorization": "Bearer"}, want: auth.ErrBadToken},
		{name: "basic instead of bearer", header: map[string]string{"Authorization": "Basic " + secret}, want: auth.ErrBadToken},
		{name: "token without scheme", header: map[string]string{"Authorization": secret}, want: auth.ErrBadToken},
		{name: "nothing", want: auth.ErrMissingToken},
		// A signature, even a right one, is for requeues only.
		{name: "a right signature", header: map[string]string{auth.HeaderSignature: sig, "X-Mailbox-Timestamp": ts}, want: auth.ErrMissingToken},
		{name: "the old empty-body signature", header: map[string]string{auth.HeaderSignature: oldEmptyBodySignature(secret)}, want: auth.ErrMissingToken},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			r := httptest.NewRequest(http.MethodGet, "/deadletters", nil)
			for k, v := range tc.header {
				r.Header.Set(k, v)
			}
			if err := tok.CheckBearer(r); err != tc.want {
				t.Fatalf("CheckBearer = %v, want %v", err, tc.want)
			}
		})
	}
}

// oldEmptyBodySignature is the value that opened every endpoint before
// signatures covered the request: sha256=HMAC(token, "").
func oldEmptyBodySignature(key string) string {
	m := hmac.New(sha256.New, []byte(key))
	return "sha256=" + hex.EncodeToString(m.Sum(nil))
}

func TestCheckRequeue(t *testing.T) {
	t.Parallel()

	tok := newToken(t, secret)
	body := []byte(`{"order":42}`)
	const path = "/deadletter/fn"
	headers := map[string]string{"X-Max-Retries": "3", "X-Delay-Duration": "60", "X-Callback-Url": "http://gateway:8080/function/cb"}
	lines := []string{"x-max-retries:3", "x-delay-duration:60", "x-callback-url:http://gateway:8080/function/cb"}
	good, ts := signAt(secret, http.MethodPost, path, lines, body, now.Unix())
	with := func(extra map[string]string) map[string]string {
		h := map[string]string{auth.HeaderSignature: good, "X-Mailbox-Timestamp": ts}
		for k, v := range headers {
			h[k] = v
		}
		for k, v := range extra {
			if v == "-" {
				delete(h, k)
				continue
			}
			h[k] = v
		}
		return h
	}
	signedAt := func(t time.Time) map[string]string {
		sig, ts := signAt(secret, http.MethodPost, path, lines, body, t.Unix())
		return with(map[string]string{auth.HeaderSignature: sig, "X-Mailbox-Timestamp": ts})
	}
	otherKey, _ := signAt("other", http.MethodPost, path, lines, body, now.Unix())
	bad := auth.ErrBadSignature
	for _, tc := range []struct {
		name   string
		method string
		path   string
		header map[string]string
		body   []byte // as passed; body when nil
		want   error  // nil, or the error's field when not one of the Err values
		field  string
	}{
		{name: "right bearer", header: map[string]string{"Authorization": "Bearer " + secret}},
		{name: "nothing", want: auth.ErrMissingRequeueToken},
		{name: "right signature", header: with(nil)},
		{name: "signature in upper-case hex", header: with(map[string]string{auth.HeaderSignature: "v1=" + strings.ToUpper(strings.TrimPrefix(good, "v1="))})},
		{name: "signature 4 minutes old", header: signedAt(now.Add(-4 * time.Minute))},
		{name: "signature 4 minutes ahead", header: signedAt(now.Add(4 * time.Minute))},
		{name: "signature 6 minutes old", header: signedAt(now.Add(-6 * time.Minute)), field: "X-Mailbox-Timestamp"},
		{name: "signature 6 minutes ahead", header: signedAt(now.Add(6 * time.Minute)), field: "X-Mailbox-Timestamp"},
		{name: "no timestamp", header: with(map[string]string{"X-Mailbox-Timestamp": "-"}), field: "X-Mailbox-Timestamp"},
		{name: "timestamp not a number", header: with(map[string]string{"X-Mailbox-Timestamp": "soon"}), field: "X-Mailbox-Timestamp"},
		{name: "timestamp changed", header: with(map[string]string{"X-Mailbox-Timestamp": fmt.Sprint(now.Unix() - 1)}), want: bad},
		{name: "another path", path: "/deadletter/other", header: with(nil), want: bad},
		{name: "another method", method: http.MethodPut, header: with(nil), want: bad},
		{name: "another body", header: with(nil), body: []byte(`{"order":43}`), want: bad},
		{name: "body not passed", header: with(nil), body: []byte{}, want: bad},
		{name: "X-Max-Retries changed", header: with(map[string]string{"X-Max-Retries": "10000"}), want: bad},
		{name: "X-Delay-Duration changed", header: with(map[string]string{"X-Delay-Duration": "0"}), want: bad},
		{name: "X-Callback-Url changed", header: with(map[string]string{"X-Callback-Url": "http://169.254.169.254/"}), want: bad},
		{name: "X-Callback-Url removed", header: with(map[string]string{"X-Callback-Url": "-"}), want: bad},
		{name: "X-Retries added", header: with(map[string]string{"X-Retries": "0"}), want: bad},
		{name: "X-Dead-Letter-From added", header: with(map[string]string{"X-Dead-Letter-From": "fn"}), want: bad},
		{name: "another header added is not covered", header: with(map[string]string{"X-Other": "1"})},
		{name: "signed with another key", header: with(map[string]string{auth.HeaderSignature: otherKey}), want: bad},
		{name: "without v1=", header: with(map[string]string{auth.HeaderSignature: strings.TrimPrefix(good, "v1=")}), want: bad},
		{name: "not hex", header: with(map[string]string{auth.HeaderSignature: "v1=zz"}), want: bad},
		{name: "empty", header: with(map[string]string{auth.HeaderSignature: "v1="}), want: bad},
		{name: "the old body signature", header: with(map[string]string{auth.HeaderSignature: oldEmptyBodySignature(secret)}), body: []byte{}, want: bad},
		{name: "wrong bearer, good signature", header: with(map[string]string{"Authorization": "Bearer nope"})},
		{name: "right bearer, bad signature", header: with(map[string]string{"Authorization": "Bearer " + secret, auth.HeaderSignature: "v1=00"})},
		{name: "wrong bearer and bad signature: the bearer is named", header: with(map[string]string{"Authorization": "Bearer nope", auth.HeaderSignature: "v1=00"}), want: auth.ErrBadToken},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			method, p, b := http.MethodPost, path, body
			if tc.method != "" {
				method = tc.method
			}
			if tc.path != "" {
				p = tc.path
			}
			if tc.body != nil {
				b = tc.body
			}
			r := httptest.NewRequest(method, p, bytes.NewReader(b))
			for k, v := range tc.header {
				r.Header.Set(k, v)
			}
			err := tok.CheckRequeue(r, b, now, 5*time.Minute)
			switch {
			case tc.field != "":
				if ae, ok := errors.AsType[*auth.Error](err); !ok || ae.Field() != tc.field {
					t.Fatalf("CheckRequeue = %v, want an error about %s", err, tc.field)
				}
			case err != tc.want:
				t.Fatalf("CheckRequeue = %v, want %v", err, tc.want)
			}
			if err != nil && strings.Contains(err.Error(), secret) {
				t.Errorf("error %q quotes the token", err)
			}
		})
	}
}

func TestSignRequestRoundTrip(t *testing.T) {
	t.Parallel()
	tok := newToken(t, secret)
	h := http.Header{"X-Max-Retries": {"3"}}
	if err := tok.SignRequest(http.MethodPost, "/deadletter/fn", h, []byte("b"), now); err != nil {
		t.Fatal(err)
	}
	want, ts := signAt(secret, http.MethodPost, "/deadletter/fn", []string{"x-max-retries:3"}, []byte("b"), now.Unix())
	if h.Get(auth.HeaderSignature) != want || h.Get("X-Mailbox-Timestamp") != ts {
		t.Errorf("SignRequest set %v, want %s at %s", h, want, ts)
	}
	if err := tok.SignRequest(http.MethodPost, "/deadletter/fn", http.Header{"X-Retries": {"1\nx"}}, nil, now); err == nil {
		t.Error("SignRequest of a header with a line break: no error")
	}
}

func TestKeysPerPurpose(t *testing.T) {
	t.Parallel()
	// A delivery signature over the same bytes is no request signature.
	tok := newToken(t, secret)
	h := http.Header{}
	if err := tok.SignDelivery(h, nil, now); err != nil {
		t.Fatal(err)
	}
	r := httptest.NewRequest(http.MethodPost, "/deadletter/fn", nil)
	r.Header.Set(auth.HeaderSignature, h.Get("X-Mailbox-Delivery-Signature"))
	r.Header.Set("X-Mailbox-Timestamp", h.Get("X-Mailbox-Timestamp"))
	if err := tok.CheckRequeue(r, nil, now, time.Minute); err != auth.ErrBadSignature {
		t.Errorf("a delivery signature as a requeue's: %v, want ErrBadSignature", err)
	}
	// A session cookie is no signature either.
	c, err := tok.Sessions(0, func() time.Time { return now }).Start(false)
	if err != nil {
		t.Fatal(err)
	}
	r.Header.Set(auth.HeaderSignature, "v1="+c.Value[strings.LastIndex(c.Value, ".")+1:])
	if err := tok.CheckRequeue(r, nil, now, time.Minute); err != auth.ErrBadSignature {
		t.Errorf("a session's HMAC as a requeue's signature: %v, want ErrBadSignature", err)
	}
}

func TestTokenIsNotPrinted(t *testing.T) {
	t.Parallel()
	tok := newToken(t, secret)
	var logs bytes.Buffer
	slog.New(slog.NewTextHandler(&logs, nil)).Info("loaded", "token", tok)
	slog.New(slog.NewJSONHandler(&logs, nil)).Info("loaded", "token", *tok)
	out := logs.String() +
		fmt.Sprintf("%v %+v %s %#v %v %+v %#v", tok, tok, tok, tok, *tok, *tok, *tok)
	if strings.Contains(out, secret) || strings.Contains(out, hex.EncodeToString([]byte(secret))) {
		t.Errorf("the token is printed: %s", out)
	}
	if !strings.Contains(out, "[redacted]") {
		t.Errorf("no [redacted] in %s", out)
	}
}

func TestErrorFields(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		err   *auth.Error
		field string
	}{
		{auth.ErrMissingToken, "Authorization"},
		{auth.ErrBadToken, "Authorization"},
		{auth.ErrBadSignature, "X-Mailbox-Signature"},
		{auth.ErrBadSession, "Cookie"},
		{auth.ErrMissingSession, "Cookie"},
		{auth.ErrMissingRequeueToken, "Authorization"},
	} {
		if tc.err.Field() != tc.field {
			t.Errorf("%v: Field = %q, want %q", tc.err, tc.err.Field(), tc.field)
		}
	}
}

func TestCheckRequeueHeaders(t *testing.T) {
	t.Parallel()
	tok := newToken(t, secret)
	sig, ts := signAt(secret, http.MethodPost, "/deadletter/fn", nil, []byte("b"), now.Unix())
	stale := strconv.FormatInt(now.Add(-time.Hour).Unix(), 10)
	for _, c := range []struct {
		name     string
		header   []string
		needBody bool
		err      error // nil: accepted so far
		field    string
	}{
		{name: "bearer", header: []string{"Authorization", "Bearer " + secret}},
		{name: "well-formed signature", header: []string{auth.HeaderSignature, sig, "X-Mailbox-Timestamp", ts}, needBody: true},
		{name: "a wrong signature of the right form", header: []string{auth.HeaderSignature, "v1=" + strings.Repeat("0", 64), "X-Mailbox-Timestamp", ts}, needBody: true},
		{name: "wrong bearer, well-formed signature", header: []string{"Authorization", "Bearer x", auth.HeaderSignature, sig, "X-Mailbox-Timestamp", ts}, needBody: true},
		{name: "none", err: auth.ErrMissingRequeueToken},
		{name: "wrong bearer", header: []string{"Authorization", "Bearer x"}, err: auth.ErrBadToken},
		{name: "garbage signature", header: []string{auth.HeaderSignature, "sha256=x", "X-Mailbox-Timestamp", ts}, err: auth.ErrBadSignature},
		{name: "63 hex digits", header: []string{auth.HeaderSignature, sig[:len(sig)-1], "X-Mailbox-Timestamp", ts}, err: auth.ErrBadSignature},
		{name: "no timestamp", header: []string{auth.HeaderSignature, sig}, field: "X-Mailbox-Timestamp"},
		{name: "stale timestamp", header: []string{auth.HeaderSignature, sig, "X-Mailbox-Timestamp", stale}, field: "X-Mailbox-Timestamp"},
	} {
		r := httptest.NewRequest(http.MethodPost, "/deadletter/fn", nil)
		for i := 0; i+1 < len(c.header); i += 2 {
			r.Header.Set(c.header[i], c.header[i+1])
		}
		needBody, err := tok.CheckRequeueHeaders(r, now, time.Minute)
		switch {
		case c.field != "":
			var ae *auth.Error
			if !errors.As(err, &ae) || ae.Field() != c.field {
				t.Errorf("%s: %v, want an error about %s", c.name, err, c.field)
			}
		case err != c.err || needBody != c.needBody:
			t.Errorf("%s: needBody %v, %v; want %v, %v", c.name, needBody, err, c.needBody, c.err)
		}
	}
}

// A short token is guessable however the guessing is throttled (the
// throttle never refuses the right token, see Guard): the mailbox warns
// at start-up, naming the setting, and still starts.
func TestWarnIfWeak(t *testing.T) {
	t.Parallel()
	for _, c := range []struct {
		secret string
		warn   bool
	}{
		{strings.Repeat("x", 31), true},
		{strings.Repeat("x", 32), false},
		{strings.Repeat("x", 64), false},
	} {
		var logs bytes.Buffer
		auth.WarnIfWeak(newToken(t, c.secret), slog.New(slog.NewTextHandler(&logs, nil)))
		got := logs.String()
		if c.warn != (strings.Contains(got, "level=WARN") && strings.Contains(got, "auth_token_secret")) {
			t.Errorf("a token of %d bytes: logged %q, want a warning %v", len(c.secret), got, c.warn)
		}
		if strings.Contains(got, c.secret) {
			t.Errorf("the warning quotes the token: %q", got)
		}
	}
	auth.WarnIfWeak(nil, slog.New(slog.DiscardHandler)) // no token: nothing to say
}
