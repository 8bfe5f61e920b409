// Package auth guards the mailbox's HTTP endpoints with one API token: an
// OpenFaaS secret, the file auth_token_secret under secret_mount_path, read
// as other OpenFaaS components read basic-auth-password from there.
//
// A request is authorized when it carries any of:
//
//   - Authorization: Bearer <token>
//   - X-Mailbox-Signature: sha256=<hex HMAC-SHA256 of the raw request body,
//     keyed with the token>, for callers that sign bodies as GitHub
//     webhooks and the OpenFaaS HMAC examples do
//   - on UI endpoints only, the mailbox_session cookie that SessionCookie
//     makes
//
// The cookie is accepted only where the caller asks for it (Check's cookie
// argument; Guard asks for it on UI endpoints only) because a browser
// sends cookies by itself, also on requests another site makes it send
// (cross-site request forgery). The cookie is SameSite=Strict: a browser
// sends it only on requests started from the mailbox's own pages, so a
// form on another site that posts to a UI endpoint arrives without it and
// is refused. The requeue and management endpoints never accept it: their
// callers send a header, which a browser adds to another site's request
// only after a CORS preflight that the mailbox does not answer.
//
// The token is never logged and never put in a cookie: a Token prints as
// [redacted], errors never quote a credential, and the session cookie
// holds an HMAC of the token, not the token.
package auth

import (
	"crypto/hmac"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// The names a request carries its credentials under.
const (
	// HeaderSignature carries "sha256=<hex HMAC-SHA256 of the body>".
	HeaderSignature = "X-Mailbox-Signature"
	// CookieSession is the UI's session cookie.
	CookieSession = "mailbox_session"
)

// sessionMessage is what the session cookie's value is the HMAC of.
const sessionMessage = "mailbox-ui-session"

// Token is the mailbox's API token. It prints as [redacted].
type Token struct {
	digest  [sha256.Size]byte // of the token: compared without leaking its length
	key     []byte            // the token, the HMAC key
	session []byte            // HMAC-SHA256(token, sessionMessage)
}

// Load reads the token from the file secretName under secretMountPath,
// trimming surrounding white space. An empty secretName means no token:
// Load returns nil, nil. A missing or empty file is an error naming it.
func Load(secretMountPath, secretName string) (*Token, error) {
	if secretName == "" {
		return nil, nil
	}
	if strings.ContainsAny(secretName, `/\`) || secretName == "." || secretName == ".." {
		return nil, fmt.Errorf("auth: auth_token_secret %q is not a file name", secretName)
	}
	path := filepath.Join(secretMountPath, secretName)
	b, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("auth: the token secret %s does not exist: create the secret %q, or unset auth_token_secret to run without a token", path, secretName)
	}
	if err != nil {
		return nil, fmt.Errorf("auth: reading the token secret (auth_token_secret): %w", err)
	}
	secret := strings.TrimSpace(string(b))
	if secret == "" {
		return nil, fmt.Errorf("auth: the token secret %s (auth_token_secret) is empty", path)
	}
	return NewToken(secret)
}

// NewToken returns the Token secret, which must not be empty. It is used
// as it is; Load trims the file it reads.
func NewToken(secret string) (*Token, error) {
	if secret == "" {
		return nil, errors.New("auth: the token is empty")
	}
	t := &Token{digest: sha256.Sum256([]byte(secret)), key: []byte(secret)}
	t.session = t.mac([]byte(sessionMessage))
	return t, nil
}

func (t *Token) mac(b []byte) []byte {
	m := hmac.New(sha256.New, t.key)
	m.Write(b)
	return m.Sum(nil)
}

// Matches reports whether s is the token, in constant time. The UI's
// sign-in form uses it before it sets SessionCookie.
func (t *Token) Matches(s string) bool {
	d := sha256.Sum256([]byte(s))
	return subtle.ConstantTimeCompare(d[:], t.digest[:]) == 1
}

// Sign returns the X-Mailbox-Signature value of body: "sha256=" and the
// hex HMAC-SHA256 of body keyed with the token.
func (t *Token) Sign(body []byte) string {
	return "sha256=" + hex.EncodeToString(t.mac(body))
}

// SessionMaxAge is how long a browser keeps the UI's session cookie.
const SessionMaxAge = 12 * time.Hour

// SessionCookie is the UI's session cookie, to set once a user has signed
// in with the token. Its value is the hex HMAC-SHA256 of
// "mailbox-ui-session" keyed with the token, so the token itself is never
// in a cookie; changing the token ends every session. It is HttpOnly,
// SameSite=Strict (see the package documentation); the browser keeps it
// for SessionMaxAge, and the mailbox accepts it until the token changes. It has no Path: the browser scopes it to the directory
// of the sign-in form's URL, the UI's own (/function/mailbox/ui behind the
// gateway), so other functions on the gateway never receive it. secure
// sets Secure: pass true when the UI is served over HTTPS.
func (t *Token) SessionCookie(secure bool) *http.Cookie {
	return &http.Cookie{
		Name:     CookieSession,
		Value:    hex.EncodeToString(t.session),
		MaxAge:   int(SessionMaxAge.Seconds()),
		HttpOnly: true,
		Secure:   secure,
		SameSite: http.SameSiteStrictMode,
	}
}

// Check returns nil when r carries the token as a bearer token, a
// signature of body, or (only when cookie is true) the session cookie. body
// is r's raw body as the caller already read it (see ReadBody); nil reads
// as an empty body, so a signed request whose body was not passed fails
// the check rather than passing it.
//
// Otherwise it returns ErrBadToken, ErrBadSignature or ErrBadSession for
// the first credential present that is wrong, in that order, or
// ErrMissingToken when there is none.
func (t *Token) Check(r *http.Request, body []byte, cookie bool) error {
	var failed error
	if h := r.Header.Get("Authorization"); h != "" {
		scheme, cred, _ := strings.Cut(h, " ")
		if strings.EqualFold(scheme, "Bearer") && t.Matches(strings.TrimSpace(cred)) {
			return nil
		}
		failed = ErrBadToken
	}
	if h := r.Header.Get(HeaderSignature); h != "" {
		sig, err := hex.DecodeString(strings.TrimPrefix(h, "sha256="))
		if strings.HasPrefix(h, "sha256=") && err == nil && hmac.Equal(sig, t.mac(body)) {
			return nil
		}
		if failed == nil {
			failed = ErrBadSignature
		}
	}
	if cookie {
		if c, err := r.Cookie(CookieSession); err == nil {
			v, err := hex.DecodeString(c.Value)
			if err == nil && hmac.Equal(v, t.session) {
				return nil
			}
			if failed == nil {
				failed = ErrBadSession
			}
		}
	}
	if failed == nil {
		return ErrMissingToken
	}
	return failed
}

// String is "[redacted]", so that printing a Token never shows it.
func (Token) String() string { return "[redacted]" }

// GoString is "[redacted]", for %#v.
func (Token) GoString() string { return "[redacted]" }

// LogValue is "[redacted]", for slog.
func (Token) LogValue() slog.Value { return slog.StringValue("[redacted]") }

// Error is why a request is not authorized. Its message says what is
// wrong without quoting any credential.
type Error struct {
	field string
	msg   string
}

func (e *Error) Error() string { return e.msg }

// Field is the header the error is about.
func (e *Error) Field() string { return e.field }

// The errors of Check.
var (
	ErrMissingToken = &Error{"Authorization", "missing token: send Authorization: Bearer <token>, or X-Mailbox-Signature: sha256=<hex HMAC-SHA256 of the body keyed with the token>"}
	ErrBadToken     = &Error{"Authorization", "bad token: Authorization is not Bearer <the mailbox's token>"}
	ErrBadSignature = &Error{HeaderSignature, "bad signature: X-Mailbox-Signature is not sha256=<hex HMAC-SHA256 of the body keyed with the token>"}
	ErrBadSession   = &Error{"Cookie", "bad session: the mailbox_session cookie is not valid; sign in again"}
)
