package auth_test

import (
	"bytes"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/openfaas/mailbox/internal/auth"
)

const secret = "s3cret-token"

func newToken(t *testing.T, s string) *auth.Token {
	t.Helper()
	tok, err := auth.NewToken(s)
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

// sign is the signature written independently of the package.
func sign(key string, body []byte) string {
	m := hmac.New(sha256.New, []byte(key))
	m.Write(body)
	return "sha256=" + hex.EncodeToString(m.Sum(nil))
}

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

func TestCheck(t *testing.T) {
	t.Parallel()

	tok := newToken(t, secret)
	body := []byte(`{"order":42}`)
	session := tok.SessionCookie(false).Value

	for _, tc := range []struct {
		name   string
		header map[string]string
		cookie string // mailbox_session value; "" for none
		body   []byte // as passed to Check
		ui     bool   // cookie accepted
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
		{name: "nothing on a UI endpoint", ui: true, want: auth.ErrMissingToken},

		{name: "good signature", header: map[string]string{auth.HeaderSignature: sign(secret, body)}, body: body, want: nil},
		{name: "good signature in upper-case hex", header: map[string]string{auth.HeaderSignature: "sha256=" + strings.ToUpper(strings.TrimPrefix(sign(secret, body), "sha256="))}, body: body, want: nil},
		{name: "signature of another body", header: map[string]string{auth.HeaderSignature: sign(secret, []byte("other"))}, body: body, want: auth.ErrBadSignature},
		{name: "signature with another key", header: map[string]string{auth.HeaderSignature: sign("other", body)}, body: body, want: auth.ErrBadSignature},
		{name: "signature without sha256=", header: map[string]string{auth.HeaderSignature: strings.TrimPrefix(sign(secret, body), "sha256=")}, body: body, want: auth.ErrBadSignature},
		{name: "signature with sha1=", header: map[string]string{auth.HeaderSignature: "sha1=" + strings.TrimPrefix(sign(secret, body), "sha256=")}, body: body, want: auth.ErrBadSignature},
		{name: "signature not hex", header: map[string]string{auth.HeaderSignature: "sha256=zz"}, body: body, want: auth.ErrBadSignature},
		{name: "empty signature", header: map[string]string{auth.HeaderSignature: "sha256="}, body: body, want: auth.ErrBadSignature},
		{name: "signed body not passed", header: map[string]string{auth.HeaderSignature: sign(secret, body)}, body: nil, want: auth.ErrBadSignature},
		{name: "empty body signed, nil passed", header: map[string]string{auth.HeaderSignature: sign(secret, nil)}, body: nil, want: nil},
		{name: "empty body signed, empty passed", header: map[string]string{auth.HeaderSignature: sign(secret, []byte{})}, body: []byte{}, want: nil},
		{name: "empty body signed, body passed", header: map[string]string{auth.HeaderSignature: sign(secret, nil)}, body: body, want: auth.ErrBadSignature},

		{name: "wrong bearer, good signature", header: map[string]string{"Authorization": "Bearer nope", auth.HeaderSignature: sign(secret, body)}, body: body, want: nil},
		{name: "right bearer, bad signature", header: map[string]string{"Authorization": "Bearer " + secret, auth.HeaderSignature: "sha256=00"}, body: body, want: nil},
		{name: "wrong bearer and bad signature: the bearer is named", header: map[string]string{"Authorization": "Bearer nope", auth.HeaderSignature: "sha256=00"}, body: body, want: auth.ErrBadToken},

		{name: "session cookie on a UI endpoint", cookie: session, ui: true, want: nil},
		{name: "session cookie elsewhere", cookie: session, ui: false, want: auth.ErrMissingToken},
		{name: "wrong session cookie on a UI endpoint", cookie: strings.Repeat("0", len(session)), ui: true, want: auth.ErrBadSession},
		{name: "session cookie not hex", cookie: "nothex", ui: true, want: auth.ErrBadSession},
		{name: "the token as the cookie", cookie: secret, ui: true, want: auth.ErrBadSession},
		{name: "wrong session cookie elsewhere", cookie: "nothex", ui: false, want: auth.ErrMissingToken},
		{name: "wrong bearer, good cookie on a UI endpoint", header: map[string]string{"Authorization": "Bearer nope"}, cookie: session, ui: true, want: nil},
		{name: "wrong bearer, good cookie elsewhere", header: map[string]string{"Authorization": "Bearer nope"}, cookie: session, ui: false, want: auth.ErrBadToken},
		{name: "right bearer on a UI endpoint", header: map[string]string{"Authorization": "Bearer " + secret}, ui: true, want: nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			r := httptest.NewRequest(http.MethodPost, "/deadletter/fn", bytes.NewReader(body))
			for k, v := range tc.header {
				r.Header.Set(k, v)
			}
			if tc.cookie != "" {
				r.AddCookie(&http.Cookie{Name: auth.CookieSession, Value: tc.cookie})
			}
			err := tok.Check(r, tc.body, tc.ui)
			if err != tc.want {
				t.Fatalf("Check = %v, want %v", err, tc.want)
			}
			if err != nil && strings.Contains(err.Error(), secret) {
				t.Errorf("error %q quotes the token", err)
			}
		})
	}
}

func TestSign(t *testing.T) {
	t.Parallel()
	tok := newToken(t, secret)
	for _, b := range [][]byte{nil, []byte("hello")} {
		if got, want := tok.Sign(b), sign(secret, b); got != want {
			t.Errorf("Sign(%q) = %s, want %s", b, got, want)
		}
	}
}

func TestSessionCookie(t *testing.T) {
	t.Parallel()
	tok := newToken(t, secret)

	m := hmac.New(sha256.New, []byte(secret))
	m.Write([]byte("mailbox-ui-session"))
	wantValue := hex.EncodeToString(m.Sum(nil))

	for _, secure := range []bool{false, true} {
		c := tok.SessionCookie(secure)
		if c.Name != "mailbox_session" || c.Value != wantValue || c.Path != "" ||
			!c.HttpOnly || c.SameSite != http.SameSiteStrictMode || c.Secure != secure {
			t.Errorf("SessionCookie(%v) = %+v", secure, c)
		}
		if strings.Contains(c.String(), secret) {
			t.Errorf("SessionCookie(%v) holds the token: %s", secure, c)
		}
	}
	if other := newToken(t, "another").SessionCookie(false); other.Value == wantValue {
		t.Error("two tokens give the same session cookie")
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
	} {
		if tc.err.Field() != tc.field {
			t.Errorf("%v: Field = %q, want %q", tc.err, tc.err.Field(), tc.field)
		}
	}
}
