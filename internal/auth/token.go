// Package auth guards the mailbox's HTTP endpoints with one API token: an
// OpenFaaS secret, the file auth_token_secret under secret_mount_path, read
// as other OpenFaaS components read basic-auth-password from there.
//
// Each endpoint takes one kind of credential:
//
//   - the management API and GET /messages/<id>: Authorization: Bearer
//     <token> only (Token.CheckBearer)
//   - requeue (POST /deadletter/<fn>): the bearer token, or a signature of
//     that one request (X-Mailbox-Timestamp and X-Mailbox-Signature:
//     v1=...), which covers the method, the escaped path, every control
//     header, the time and the body's hash, and is refused 5 minutes
//     (signature_window) away from its timestamp; package signature
//     defines the canonical form (Token.CheckRequeue)
//   - the web page: the mailbox_session cookie of a session started by
//     signing in with the token on its form (Sessions)
//
// Nothing is keyed with the token itself: requests, sessions and
// deliveries each have a key derived from it (signature.Key), so a value
// made for one purpose is never valid for another.
//
// The cookie is accepted only on the web page because a browser sends
// cookies by itself, also on requests another site makes it send
// (cross-site request forgery). The cookie is SameSite=Strict: a browser
// sends it only on requests started from the mailbox's own pages, so a
// form on another site that posts to a UI endpoint arrives without it and
// is refused. The requeue and management endpoints never accept it: their
// callers send a header, which a browser adds to another site's request
// only after a CORS preflight that the mailbox does not answer.
//
// The token is never logged and never put in a cookie: a Token prints as
// [redacted], errors never quote a credential, and a session cookie holds
// a random id, its expiry and their HMAC with the session key.
package auth

import (
	"crypto/sha256"
	"crypto/subtle"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/openfaas/mailbox/internal/signature"
)

// The names a request carries its credentials under.
const (
	// HeaderSignature carries a requeue's signature (package signature).
	HeaderSignature = signature.HeaderRequest
)

// Token is the mailbox's API token. It prints as [redacted].
type Token struct {
	digest [sha256.Size]byte // of the token: compared without leaking its length
	short  bool              // shorter than MinStrongLength (WarnIfWeak)
	// One key per purpose (signature.Key): no value made for one purpose
	// is valid for another, and none is keyed with the token itself.
	request, session, delivery []byte
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
	return &Token{
		short:    len(secret) < MinStrongLength,
		digest:   sha256.Sum256([]byte(secret)),
		request:  signature.Key([]byte(secret), signature.PurposeRequest),
		session:  signature.Key([]byte(secret), signature.PurposeSession),
		delivery: signature.Key([]byte(secret), signature.PurposeDelivery),
	}, nil
}

// MinStrongLength is the shortest token the mailbox does not warn about:
// 32 bytes, as many as the HMAC-SHA256 keys derived from it.
const MinStrongLength = 32

// WarnIfWeak logs a warning naming auth_token_secret when t is shorter
// than MinStrongLength bytes. Nothing refuses such a token (deployments
// have them), but nothing caps guessing it either: the throttle of wrong
// credentials never refuses the right one (see Guard), so its length is
// the defence. A nil t (no token) logs nothing.
func WarnIfWeak(t *Token, log *slog.Logger) {
	if t == nil || !t.short {
		return
	}
	if log == nil {
		log = slog.Default()
	}
	log.Warn("the token (auth_token_secret) is shorter than 32 bytes and could be guessed; make a new one with: openssl rand -hex 32",
		"setting", "auth_token_secret", "min_bytes", MinStrongLength)
}

// Matches reports whether s is the token, in constant time. The UI's
// sign-in form uses it before it starts a session.
func (t *Token) Matches(s string) bool {
	d := sha256.Sum256([]byte(s))
	return subtle.ConstantTimeCompare(d[:], t.digest[:]) == 1
}

// CheckBearer returns nil when r carries Authorization: Bearer <token>,
// else ErrBadToken or ErrMissingToken. The management API and
// GET /messages/<id> accept nothing else: a signature is for one requeue,
// a session for the web page.
func (t *Token) CheckBearer(r *http.Request) error {
	h := r.Header.Get("Authorization")
	if h == "" {
		return ErrMissingToken
	}
	scheme, cred, _ := strings.Cut(h, " ")
	if strings.EqualFold(scheme, "Bearer") && t.Matches(strings.TrimSpace(cred)) {
		return nil
	}
	return ErrBadToken
}

// CheckRequeue returns nil when r carries the token as a bearer token, or
// a request signature (see package signature) made for r's method, escaped
// path, control headers and body, with an X-Mailbox-Timestamp within
// window of now. body is r's raw body as the caller already read it (see
// ReadBody); nil reads as an empty body.
//
// Otherwise it returns ErrBadToken, ErrBadSignature or an *Error about
// X-Mailbox-Timestamp (missing, or outside the window) for the first credential present that is wrong, in that order, or
// ErrMissingRequeueToken when there is none.
func (t *Token) CheckRequeue(r *http.Request, body []byte, now time.Time, window time.Duration) error {
	var failed error
	if r.Header.Get("Authorization") != "" {
		if failed = t.CheckBearer(r); failed == nil {
			return nil
		}
	}
	if v := r.Header.Get(signature.HeaderRequest); v != "" {
		err := t.checkSignature(r, body, v, now, window)
		if err == nil {
			return nil
		}
		if failed == nil {
			failed = err
		}
	}
	if failed == nil {
		return ErrMissingRequeueToken
	}
	return failed
}

// CheckRequeueHeaders checks what CheckRequeue can without the body: it
// returns needBody false and nil when r carries the bearer token, needBody
// true and nil when it carries a signature of the right form (v1= and 64
// hex digits) with an X-Mailbox-Timestamp within window of now, which
// CheckRequeue then checks with the body; else the error CheckRequeue
// would return.
func (t *Token) CheckRequeueHeaders(r *http.Request, now time.Time, window time.Duration) (needBody bool, err error) {
	var failed error
	if r.Header.Get("Authorization") != "" {
		if failed = t.CheckBearer(r); failed == nil {
			return false, nil
		}
	}
	if v := r.Header.Get(signature.HeaderRequest); v != "" {
		err := checkSignatureHeaders(r, v, now, window)
		if err == nil {
			return true, nil
		}
		if failed == nil {
			failed = err
		}
	}
	if failed == nil {
		return false, ErrMissingRequeueToken
	}
	return false, failed
}

// checkSignatureHeaders checks a signature's timestamp and form.
func checkSignatureHeaders(r *http.Request, value string, now time.Time, window time.Duration) error {
	if err := signature.CheckTime(r.Header.Get(signature.HeaderTimestamp), now, window); err != nil {
		return &Error{signature.HeaderTimestamp, "bad signature: X-Mailbox-Timestamp is " + err.Error() + "; sign with the current unix time"}
	}
	if !signature.WellFormed(value) {
		return ErrBadSignature
	}
	return nil
}

func (t *Token) checkSignature(r *http.Request, body []byte, value string, now time.Time, window time.Duration) error {
	if err := checkSignatureHeaders(r, value, now, window); err != nil {
		return err
	}
	ts := r.Header.Get(signature.HeaderTimestamp)
	canonical, err := signature.Request(r.Method, r.URL.EscapedPath(), ts, r.Header, body)
	if err != nil || !signature.Equal(t.request, canonical, value) {
		return ErrBadSignature
	}
	return nil
}

// SignRequest sets X-Mailbox-Timestamp (now) and X-Mailbox-Signature on h
// for a request with method to escapedPath (as the mailbox receives it),
// carrying h's control headers and body. The CLI and tests sign with it;
// the requeue package does the same for functions.
func (t *Token) SignRequest(method, escapedPath string, h http.Header, body []byte, now time.Time) error {
	ts := signature.Timestamp(now)
	canonical, err := signature.Request(method, escapedPath, ts, h, body)
	if err != nil {
		return fmt.Errorf("auth: signing: %w", err)
	}
	h.Set(signature.HeaderTimestamp, ts)
	h.Set(signature.HeaderRequest, signature.Sign(t.request, canonical))
	return nil
}

// SignDelivery sets X-Mailbox-Timestamp (now) and
// X-Mailbox-Delivery-Signature on h, the headers of a delivery (a call to
// a function or a routed dead letter) the connector makes with body, so
// the receiver can check it with requeue.Verify.
func (t *Token) SignDelivery(h http.Header, body []byte, now time.Time) error {
	return t.signCall(h, body, now, signature.Delivery, "delivery")
}

// SignCallback is SignDelivery for a callback (a message's outcome POSTed
// to its callback URL), which requeue.VerifyCallback checks and
// requeue.Verify refuses.
func (t *Token) SignCallback(h http.Header, body []byte, now time.Time) error {
	return t.signCall(h, body, now, signature.Callback, "callback")
}

func (t *Token) signCall(h http.Header, body []byte, now time.Time, canon func(string, http.Header, []byte) (string, error), what string) error {
	ts := signature.Timestamp(now)
	canonical, err := canon(ts, h, body)
	if err != nil {
		return fmt.Errorf("auth: signing a %s: %w", what, err)
	}
	h.Set(signature.HeaderTimestamp, ts)
	h.Set(signature.HeaderDelivery, signature.Sign(t.delivery, canonical))
	return nil
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
	ErrMissingToken        = &Error{"Authorization", "missing token: send Authorization: Bearer <token>"}
	ErrMissingRequeueToken = &Error{"Authorization", "missing token: send Authorization: Bearer <token>, or sign the request (X-Mailbox-Timestamp and X-Mailbox-Signature: v1=..., see the README)"}
	ErrBadToken            = &Error{"Authorization", "bad token: Authorization is not Bearer <the mailbox's token>"}
	ErrBadSignature        = &Error{HeaderSignature, "bad signature: X-Mailbox-Signature is not v1=<hex HMAC-SHA256 of this request's canonical form, keyed with the request key> (see the README)"}
	ErrMissingSession      = &Error{"Cookie", "missing session: sign in"}
	ErrBadSession          = &Error{"Cookie", "bad session: the mailbox_session cookie is not valid or has expired; sign in again"}
)
