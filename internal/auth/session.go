package auth

import (
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/time/rate"
)

// CookieSession is the web page's session cookie.
const CookieSession = "mailbox_session"

// DefaultSessionTTL is how long a session lasts unless configured
// (session_ttl).
const DefaultSessionTTL = 12 * time.Hour

// maxRevoked bounds the sessions remembered as signed out. Only a user who
// signed in can sign out, so reaching it takes the token; past it the
// session closest to its own expiry is forgotten first.
const maxRevoked = 10000

// Sessions are the web page's sessions. A session is a signed, expiring
// value: a random id and its expiry, with their HMAC under the session key
// (a key derived from the token for sessions only). The mailbox checks
// the HMAC and the expiry itself, whatever the browser says; signing out
// puts the id on a list of ended sessions, kept until the session would
// have expired.
//
// Why signed rather than only stored: the mailbox function may run as
// several replicas behind the gateway, any of which may serve the next
// page. A signed session is valid on every replica until it expires, and
// changing the token ends all. The list of ended sessions is per process:
// behind several replicas, signing out ends the session on the replica
// that served the sign-out at once, and on the others at its expiry
// (session_ttl). Run one replica, or a short session_ttl, where that
// matters.
type Sessions struct {
	key []byte
	ttl time.Duration
	now func() time.Time

	mu      sync.Mutex
	revoked map[string]time.Time // id -> its expiry
}

// Sessions returns the sessions of t, each lasting ttl (DefaultSessionTTL
// when 0). now is the clock, time.Now when nil.
func (t *Token) Sessions(ttl time.Duration, now func() time.Time) *Sessions {
	if ttl <= 0 {
		ttl = DefaultSessionTTL
	}
	if now == nil {
		now = time.Now
	}
	return &Sessions{key: t.session, ttl: ttl, now: now, revoked: map[string]time.Time{}}
}

// TTL is how long a session lasts.
func (s *Sessions) TTL() time.Duration { return s.ttl }

// Start starts a session and returns its cookie: HttpOnly, SameSite=Strict
// (see the package documentation), kept by the browser for as long as the
// session lasts. It has no Path: the browser scopes it to the directory of
// the sign-in form's URL, the page's own (/function/mailbox/ui behind the
// gateway), so other functions on the gateway never receive it. secure
// sets Secure: pass true when the page is served over HTTPS.
func (s *Sessions) Start(secure bool) (*http.Cookie, error) {
	var id [16]byte
	if _, err := rand.Read(id[:]); err != nil {
		return nil, fmt.Errorf("auth: starting a session: %w", err)
	}
	expires := s.now().Add(s.ttl).Unix()
	body := hex.EncodeToString(id[:]) + "." + strconv.FormatInt(expires, 10)
	return &http.Cookie{
		Name:     CookieSession,
		Value:    body + "." + hex.EncodeToString(s.mac(body)),
		MaxAge:   int(s.ttl / time.Second),
		HttpOnly: true,
		Secure:   secure,
		SameSite: http.SameSiteStrictMode,
	}, nil
}

func (s *Sessions) mac(body string) []byte {
	m := hmac.New(sha256.New, s.key)
	m.Write([]byte("mailbox-session-v1\n" + body))
	return m.Sum(nil)
}

// parse returns the id and expiry of a session cookie value whose HMAC is
// right, whatever its expiry.
func (s *Sessions) parse(v string) (id string, expires int64, ok bool) {
	body, sig, found := strings.Cut(v, ".")
	if !found {
		return "", 0, false
	}
	exp, sig, found := strings.Cut(sig, ".")
	if !found {
		return "", 0, false
	}
	body = body + "." + exp
	got, err := hex.DecodeString(sig)
	if err != nil || !hmac.Equal(got, s.mac(body)) {
		return "", 0, false
	}
	id, e, _ := strings.Cut(body, ".")
	n, err := strconv.ParseInt(e, 10, 64)
	if err != nil {
		return "", 0, false
	}
	return id, n, true
}

// Check returns nil when r carries a session cookie of these sessions that
// has not expired and was not ended; else ErrMissingSession or
// ErrBadSession.
func (s *Sessions) Check(r *http.Request) error {
	c, err := r.Cookie(CookieSession)
	if err != nil {
		return ErrMissingSession
	}
	id, expires, ok := s.parse(c.Value)
	if !ok || s.now().Unix() >= expires {
		return ErrBadSession
	}
	s.mu.Lock()
	_, ended := s.revoked[id]
	s.mu.Unlock()
	if ended {
		return ErrBadSession
	}
	return nil
}

// End ends r's session, if it carries a valid one, and returns the cookie
// that makes the browser forget it.
func (s *Sessions) End(r *http.Request, secure bool) *http.Cookie {
	if c, err := r.Cookie(CookieSession); err == nil {
		if id, expires, ok := s.parse(c.Value); ok && s.now().Unix() < expires {
			s.revoke(id, time.Unix(expires, 0))
		}
	}
	return &http.Cookie{Name: CookieSession, MaxAge: -1, HttpOnly: true, Secure: secure, SameSite: http.SameSiteStrictMode}
}

func (s *Sessions) revoke(id string, expires time.Time) {
	s.mu.Lock()
	defer s.mu.Unlock()
	now := s.now()
	for k, exp := range s.revoked {
		if !exp.After(now) {
			delete(s.revoked, k)
		}
	}
	if len(s.revoked) >= maxRevoked {
		var first string
		var firstExp time.Time
		for k, exp := range s.revoked {
			if first == "" || exp.Before(firstExp) {
				first, firstExp = k, exp
			}
		}
		delete(s.revoked, first)
	}
	s.revoked[id] = expires
}

// Throttle slows guessing of the token per client address: each address
// may fail a burst of signInBurst times, then once per signInEvery. It is a
// token bucket per address (golang.org/x/time/rate, already a dependency)
// in a map bounded at maxThrottled addresses: past that, addresses whose
// bucket is full again are forgotten, and if none is, new addresses share
// one bucket, so neither many addresses nor many failures grow memory, and
// many addresses do not escape the limit.
//
// One Throttle is shared by the Guard (wrong bearer tokens and signatures,
// Fail) and the web page's sign-in form (Take), so guessing on one does
// not reset the budget of the other.
//
// The address is the connection's (r.RemoteAddr), never a header a client
// can set. Behind the gateway that is the gateway's, so failures from
// anyone slow everyone's sign-in while they last: an overall bound on
// guessing, which is the point. Signed-in sessions and the bearer token
// are not affected (see Guard).
type Throttle struct {
	now func() time.Time

	mu       sync.Mutex
	clients  map[string]*rate.Limiter
	overflow *rate.Limiter
}

const (
	signInBurst  = 10
	signInEvery  = 6 * time.Second
	maxThrottled = 4096
)

// NewThrottle returns a Throttle; now is the clock, time.Now when nil.
func NewThrottle(now func() time.Time) *Throttle {
	if now == nil {
		now = time.Now
	}
	return &Throttle{now: now, clients: map[string]*rate.Limiter{}, overflow: newSignInLimiter()}
}

func newSignInLimiter() *rate.Limiter { return rate.NewLimiter(rate.Every(signInEvery), signInBurst) }

// client is the address r came from.
func client(r *http.Request) string {
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		return r.RemoteAddr
	}
	return host
}

func (t *Throttle) limiter(r *http.Request) *rate.Limiter {
	addr := client(r)
	t.mu.Lock()
	defer t.mu.Unlock()
	if l, ok := t.clients[addr]; ok {
		return l
	}
	if len(t.clients) >= maxThrottled {
		now := t.now()
		for k, l := range t.clients {
			if l.TokensAt(now) >= signInBurst {
				delete(t.clients, k)
			}
		}
		if len(t.clients) >= maxThrottled {
			return t.overflow
		}
	}
	l := newSignInLimiter()
	t.clients[addr] = l
	return l
}

// Take takes one attempt from r's client's bucket before anything of the
// attempt is read, and returns 0 when it may go on, else how long until
// its next attempt. Taking first, not after a failure, is what bounds
// concurrent attempts: a client opening many connections that send their
// forms slowly gets no more attempts than the bucket holds. A success is
// an attempt too (the rate package cannot give a token back once time has
// moved on): it costs a legitimate user one of the burst.
func (t *Throttle) Take(r *http.Request) time.Duration {
	return t.take(t.limiter(r))
}

// Fail counts a failed check of r's client's credential, and returns 0
// while the client is within its budget, else how long until the bucket
// holds an attempt again: the caller answers 429 instead of 401.
func (t *Throttle) Fail(r *http.Request) time.Duration { return t.Take(r) }

func (t *Throttle) take(l *rate.Limiter) time.Duration {
	now := t.now()
	if l.AllowN(now, 1) {
		return 0
	}
	res := l.ReserveN(now, 1)
	d := res.DelayFrom(now)
	res.CancelAt(now) // at the same instant: the token is given back
	if d <= 0 {
		d = time.Second
	}
	return d
}
