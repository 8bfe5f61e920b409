// Package ui is the mailbox's web page at /ui: waiting and dead-letter
// counts, a searchable list of dead letters, one dead letter's details,
// and replay and purge buttons. It is rendered on the server from
// templates embedded in the binary; its one script asks for confirmation
// before a replay or a purge.
//
// A user signs in with the API token and gets a session (auth.Sessions):
// it expires on the server (session_ttl, 12 h by default), and signing out
// ends it there. Sign-in attempts are throttled per client address
// (auth.Throttle): past the burst the form answers 429 with Retry-After
// before it reads the form. The bucket is the form's own, not the API
// guard's: behind the gateway every caller has one address, and a
// function sending a stale token to the API must not lock the operators
// out of the page.
// The cookie is SameSite=Strict, so another site cannot make a browser
// send it along with a forged form post; every POST also has to come from
// this origin when the browser says where it comes from. The page takes
// nothing else: no bearer token, no signature.
//
// A bulk purge without a filter removes every dead letter: as the API
// asks for all=true, the form asks for its "every dead letter" box to be
// ticked, and the mailbox refuses it otherwise.
package ui

import (
	"context"
	"embed"
	"errors"
	"fmt"
	"html/template"
	"io/fs"
	"log/slog"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/openfaas/mailbox/internal/auth"
	"github.com/openfaas/mailbox/internal/deadletter"
	"github.com/openfaas/mailbox/internal/envelope"
	"github.com/openfaas/mailbox/internal/names"
	"github.com/openfaas/mailbox/internal/queue"
)

//go:embed assets
var assets embed.FS

var pages = template.Must(template.ParseFS(assets, "assets/pages.html"))

// Prefix is the path the page is served under.
const Prefix = "/ui"

// pageSize is how many dead letters one page lists.
const pageSize = 50

// callTimeout bounds the work behind one page.
const callTimeout = 15 * time.Second

// Options configure the page.
type Options struct {
	// Store serves the dead letters. Required.
	Store *deadletter.Store
	// Waiting counts the messages waiting, by function. Required.
	Waiting func(ctx context.Context) (map[string]int, error)
	// Token signs users in; Guard counts refusals. Required.
	Token *auth.Token
	Guard *auth.Guard
	// Sessions are the users' sessions. Defaults to Token's, lasting
	// auth.DefaultSessionTTL.
	Sessions *auth.Sessions
	// Throttle bounds sign-in attempts per client address. Defaults to
	// Guard's, so wrong bearer tokens and wrong sign-ins share a budget.
	Throttle *auth.Throttle
	// Logger defaults to discarding logs.
	Logger *slog.Logger
}

type handler struct {
	o      Options
	static http.Handler
	log    *slog.Logger
}

// New returns the handler of everything under Prefix.
func New(o Options) (http.Handler, error) {
	if o.Store == nil || o.Waiting == nil || o.Token == nil || o.Guard == nil {
		return nil, errors.New("ui: Store, Waiting, Token and Guard are required")
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.Sessions == nil {
		o.Sessions = o.Token.Sessions(0, nil)
	}
	if o.Throttle == nil {
		o.Throttle = auth.NewThrottle(nil)
	}
	static, err := fs.Sub(assets, "assets")
	if err != nil {
		return nil, err
	}
	return &handler{o: o, log: o.Logger, static: http.StripPrefix(Prefix+"/static/", http.FileServerFS(static))}, nil
}

// page is what every template gets.
type page struct {
	// Root is the relative URL of the page's root (/ui/) from this page.
	// Every link is relative: behind the gateway the page is at
	// /function/mailbox/ui/, of which the mailbox sees only /ui/.
	Root     string
	Title    string
	SignedIn bool
	Notice   string
	Error    string
	Refresh  bool
}

func (h *handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Content-Security-Policy", "default-src 'self'; frame-ancestors 'none'")
	w.Header().Set("X-Frame-Options", "DENY")
	w.Header().Set("Referrer-Policy", "same-origin")
	path := strings.TrimPrefix(r.URL.EscapedPath(), Prefix)
	switch {
	case path == "":
		// The page's root is /ui/, so that its relative links resolve
		// under it; "ui/" from /ui (or /function/mailbox/ui) is that.
		w.Header().Set("Location", "ui/")
		w.WriteHeader(http.StatusMovedPermanently)
		return
	case strings.HasPrefix(path, "/static/"):
		if path == "/static/ui.css" || path == "/static/ui.js" {
			h.static.ServeHTTP(w, r)
			return
		}
		http.NotFound(w, r)
		return
	case path == "/login":
		h.login(w, r)
		return
	}
	if r.Method == http.MethodPost && !sameOrigin(r) {
		h.render(w, r, http.StatusForbidden, "login", &loginPage{page: page{Title: "Sign in", Error: "The form was sent from another site."}})
		return
	}
	if err := h.o.Sessions.Check(r); err != nil {
		if r.Method == http.MethodGet || r.Method == http.MethodHead {
			// A browser is sent to sign in; the refusal is counted all
			// the same.
			h.o.Guard.Count(auth.UI)
			seeOther(w, r, "login")
			return
		}
		h.o.Guard.Unauthorized(w, auth.UI, err)
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), callTimeout)
	defer cancel()
	switch {
	case path == "/":
		h.overview(ctx, w, r)
	case path == "/logout" && r.Method == http.MethodPost:
		http.SetCookie(w, h.o.Sessions.End(r, secure(r)))
		seeOther(w, r, "login")
	case path == "/bulk" && r.Method == http.MethodPost:
		h.bulk(ctx, w, r)
	case strings.HasPrefix(path, "/jobs/"):
		h.job(w, r, strings.TrimPrefix(path, "/jobs/"))
	case strings.HasPrefix(path, "/deadletters/"):
		h.deadLetter(ctx, w, r, strings.TrimPrefix(path, "/deadletters/"))
	default:
		h.render(w, r, http.StatusNotFound, "job", &jobPage{page: page{Title: "Not found", SignedIn: true, Error: "No such page."}})
	}
}

// sameOrigin reports whether a POST came from this origin, as far as the
// browser says: Sec-Fetch-Site when it sends it, else Origin, which must
// name the host the browser asked. Behind the gateway that host is not
// r.Host (the gateway and the provider make a new request to the
// function) but the gateway's, which it passes as X-Forwarded-Host. A
// page on another site can set neither header, and a request with
// neither is not a browser's cross-site post.
func sameOrigin(r *http.Request) bool {
	switch r.Header.Get("Sec-Fetch-Site") {
	case "same-origin", "none":
		return true
	case "":
	default:
		return false
	}
	origin := r.Header.Get("Origin")
	if origin == "" {
		return true
	}
	u, err := url.Parse(origin)
	if err != nil {
		return false
	}
	forwarded, _, _ := strings.Cut(r.Header.Get("X-Forwarded-Host"), ",")
	return u.Host == r.Host || (forwarded != "" && u.Host == strings.TrimSpace(forwarded))
}

// secure reports whether the browser reached the page over HTTPS: directly,
// or through the gateway or an ingress that ends TLS and says so.
func secure(r *http.Request) bool {
	return r.TLS != nil || strings.EqualFold(r.Header.Get("X-Forwarded-Proto"), "https")
}

// pageData is a page's template data.
type pageData interface{ base() *page }

func (p *page) base() *page { return p }

// root is the relative URL of /ui/ from r's URL: "./" from /ui/ and the
// pages beside it, "../" from one level down, and so on.
func root(r *http.Request) string {
	depth := strings.Count(strings.TrimPrefix(r.URL.EscapedPath(), Prefix+"/"), "/")
	if depth == 0 {
		return "./"
	}
	return strings.Repeat("../", depth)
}

// seeOther redirects to to, a URL relative to /ui/, by a relative
// Location, which the browser resolves against the URL it asked for.
// (http.Redirect would make it absolute from the path the mailbox sees,
// without the gateway's /function/mailbox.)
func seeOther(w http.ResponseWriter, r *http.Request, to string) {
	w.Header().Set("Location", root(r)+to)
	w.WriteHeader(http.StatusSeeOther)
}

type loginPage struct{ page }

func (h *handler) login(w http.ResponseWriter, r *http.Request) {
	p := loginPage{page: page{Title: "Sign in"}}
	switch r.Method {
	case http.MethodGet, http.MethodHead:
		h.render(w, r, http.StatusOK, "login", &p)
	case http.MethodPost:
		if !sameOrigin(r) {
			p.Error = "The form was sent from another site."
			h.render(w, r, http.StatusForbidden, "login", &p)
			return
		}
		// The attempt is taken before the form is read, so connections
		// that send their forms slowly cannot all pass a check made before
		// any of them failed. Past the budget the guess is not even read.
		if wait := h.o.Throttle.Take(r); wait > 0 {
			secs := auth.RetryAfter(wait)
			w.Header().Set("Retry-After", strconv.Itoa(secs))
			p.Error = fmt.Sprintf("Too many failed sign-ins from your address; try again in %d s.", secs)
			h.render(w, r, http.StatusTooManyRequests, "login", &p)
			return
		}
		r.Body = http.MaxBytesReader(w, r.Body, 4096)
		if err := r.ParseForm(); err != nil || !h.o.Token.Matches(r.PostForm.Get("token")) {
			h.o.Guard.Count(auth.UI)
			p.Error = "That is not the mailbox's token."
			h.render(w, r, http.StatusUnauthorized, "login", &p)
			return
		}
		c, err := h.o.Sessions.Start(secure(r))
		if err != nil {
			h.log.Error("ui: starting a session", "error", err)
			p.Error = "A session cannot be started now; try again."
			h.render(w, r, http.StatusInternalServerError, "login", &p)
			return
		}
		http.SetCookie(w, c)
		seeOther(w, r, "")
	default:
		w.Header().Set("Allow", "GET, HEAD, POST")
		http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
	}
}

type functionCount struct {
	Function string
	Count    int
}

type overviewPage struct {
	page
	Waiting      []functionCount
	WaitingError string
	Counts       []deadletter.Count
	Filter       deadletter.Filter
	Reasons      []string
	Items        []deadletter.Entry
	Total        int
	Next         string
}

func (h *handler) overview(ctx context.Context, w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	p := overviewPage{
		page:    page{Title: "Dead letters", SignedIn: true, Notice: q.Get("notice")},
		Filter:  deadletter.Filter{Function: q.Get("function"), Reason: q.Get("reason"), Query: q.Get("q")},
		Reasons: envelope.Reasons,
	}
	if p.Filter.Function != "" && !names.Valid(p.Filter.Function) {
		p.Error = fmt.Sprintf("%q is not a function name.", p.Filter.Function)
		p.Filter.Function = ""
	}
	before, _ := strconv.ParseUint(q.Get("cursor"), 10, 64)
	list, err := h.o.Store.List(ctx, p.Filter, before, pageSize)
	if err != nil {
		h.log.Warn("ui: listing dead letters", "error", err)
		p.Error = "The dead letters cannot be read now; try again shortly."
	}
	p.Items, p.Total, p.Counts = list.Items, list.Total, list.Counts
	if list.Next != 0 {
		next := url.Values{"cursor": {strconv.FormatUint(list.Next, 10)}}
		for k, v := range map[string]string{"function": p.Filter.Function, "reason": p.Filter.Reason, "q": p.Filter.Query} {
			if v != "" {
				next.Set(k, v)
			}
		}
		p.Next = "?" + next.Encode()
	}
	waiting, err := h.o.Waiting(ctx)
	switch {
	case errors.Is(err, queue.ErrStatusesOff):
		p.WaitingError = "this mailbox records no statuses (statuses=false)"
	case err != nil:
		p.WaitingError = "the queue cannot be read now"
	}
	for fn, n := range waiting {
		p.Waiting = append(p.Waiting, functionCount{fn, n})
	}
	slices.SortFunc(p.Waiting, func(a, b functionCount) int {
		if a.Count != b.Count {
			return b.Count - a.Count
		}
		return strings.Compare(a.Function, b.Function)
	})
	h.render(w, r, http.StatusOK, "overview", &p)
}

type header struct{ Name, Value string }

type detailPage struct {
	page
	Letter  deadletter.Entry
	Message *envelope.Envelope
	Headers []header
	Text    bool
	Body    string
}

func (h *handler) deadLetter(ctx context.Context, w http.ResponseWriter, r *http.Request, rest string) {
	id, action, _ := strings.Cut(rest, "/")
	switch {
	case action == "" && (r.Method == http.MethodGet || r.Method == http.MethodHead):
		entry, e, err := h.o.Store.Get(ctx, id)
		if err != nil {
			h.fail(w, r, err)
			return
		}
		p := detailPage{page: page{Title: "Dead letter " + id, SignedIn: true}, Letter: entry, Message: e}
		for _, name := range slices.Sorted(func(yield func(string) bool) {
			for k := range e.Header {
				if !yield(k) {
					return
				}
			}
		}) {
			for _, v := range e.Header[name] {
				p.Headers = append(p.Headers, header{name, v})
			}
		}
		if p.Text = utf8.Valid(e.Body); p.Text {
			p.Body = string(e.Body)
		}
		h.render(w, r, http.StatusOK, "detail", &p)
	case action == "replay" && r.Method == http.MethodPost:
		out, err := h.o.Store.Replay(ctx, id, 0)
		if err != nil {
			h.fail(w, r, err)
			return
		}
		done(w, r, fmt.Sprintf("Replayed %s to %s.", id, out.Function))
	case action == "purge" && r.Method == http.MethodPost:
		if _, err := h.o.Store.Remove(ctx, id); err != nil {
			h.fail(w, r, err)
			return
		}
		done(w, r, fmt.Sprintf("Purged %s.", id))
	default:
		http.Error(w, "not found", http.StatusNotFound)
	}
}

// done sends the browser to the overview with a notice.
func done(w http.ResponseWriter, r *http.Request, notice string) {
	seeOther(w, r, "?"+url.Values{"notice": {notice}}.Encode())
}

// fail shows what went wrong with err, with the status the API would
// answer.
func (h *handler) fail(w http.ResponseWriter, r *http.Request, err error) {
	code, msg := http.StatusServiceUnavailable, "The queue cannot be reached now; try again shortly."
	switch {
	case errors.Is(err, deadletter.ErrNotFound):
		code, msg = http.StatusNotFound, err.Error()
	case errors.Is(err, deadletter.ErrRefused):
		code, msg = http.StatusForbidden, err.Error()
	case errors.Is(err, deadletter.ErrNotReplayable), errors.Is(err, deadletter.ErrBusy):
		code, msg = http.StatusConflict, err.Error()
	default:
		h.log.Warn("ui: dead-letter operation failed", "error", err)
	}
	h.render(w, r, code, "job", &jobPage{page: page{Title: "Not done", SignedIn: true, Error: msg}})
}

type jobPage struct {
	page
	Job *deadletter.Job
}

func (h *handler) bulk(ctx context.Context, w http.ResponseWriter, r *http.Request) {
	r.Body = http.MaxBytesReader(w, r.Body, 4096)
	if err := r.ParseForm(); err != nil {
		h.render(w, r, http.StatusBadRequest, "job", &jobPage{page: page{Title: "Not done", SignedIn: true, Error: "The form could not be read."}})
		return
	}
	action := r.PostForm.Get("action")
	if action != deadletter.ActionReplay && action != deadletter.ActionPurge {
		h.render(w, r, http.StatusBadRequest, "job", &jobPage{page: page{Title: "Not done", SignedIn: true, Error: fmt.Sprintf("%q is neither replay nor purge.", action)}})
		return
	}
	f := deadletter.Filter{Function: r.PostForm.Get("function"), Reason: r.PostForm.Get("reason"), Query: r.PostForm.Get("q")}
	if action == deadletter.ActionPurge && f == (deadletter.Filter{}) && r.PostForm.Get("all") != "true" {
		// As the API's all=true: a purge of everything is meant, not
		// a filter lost on the way.
		h.render(w, r, http.StatusBadRequest, "job", &jobPage{page: page{Title: "Not done", SignedIn: true, Error: "A purge without a filter removes every dead letter: tick \"every dead letter\" to mean it."}})
		return
	}
	job, err := h.o.Store.Start(ctx, action, f, 0)
	if err != nil {
		h.fail(w, r, err)
		return
	}
	seeOther(w, r, "jobs/"+job.ID)
}

func (h *handler) job(w http.ResponseWriter, r *http.Request, id string) {
	job, err := h.o.Store.Job(id)
	if err != nil {
		h.render(w, r, http.StatusNotFound, "job", &jobPage{page: page{Title: "No such job", SignedIn: true, Error: err.Error()}})
		return
	}
	h.render(w, r, http.StatusOK, "job", &jobPage{
		page: page{Title: "Bulk " + job.Action, SignedIn: true, Refresh: job.State == deadletter.JobRunning},
		Job:  &job,
	})
}

func (h *handler) render(w http.ResponseWriter, r *http.Request, code int, name string, data pageData) {
	data.base().Root = root(r)
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(code)
	if err := pages.ExecuteTemplate(w, name, data); err != nil {
		h.log.Warn("ui: rendering", "page", name, "error", err)
	}
}
