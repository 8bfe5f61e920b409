// Package function is an example OpenFaaS function that calls a
// rate-limited API and, when the API answers 429, asks the mailbox to call
// it again later with the same request (package requeue). It is built with
// the mailbox-go template, whose main calls New once at start-up.
//
// It answers:
//   - 200 {"status":"done",...} when the API took the work
//   - 202 {"status":"requeued",...} when the API was rate limited and the
//     mailbox scheduled a retry
//   - 200 {"status":"dead-lettered","error":...} when the API was rate
//     limited and the retries are spent: the mailbox kept the request as a
//     dead letter. This is 2xx on purpose: when the mailbox delivered the
//     request, a non-2xx answer would count as a failed attempt and the
//     mailbox would dead-letter it a second time.
//   - 502 {"error":...} when the API failed otherwise, or the mailbox did
//     not take the request: nothing is stored, so the caller (or the
//     mailbox, for a delivery) must try again.
package function

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/openfaas/mailbox/requeue"
)

// apiTimeout bounds the call to the API, and mailboxTimeout the requeue:
// the mailbox answers within about 5 s (its wait for NATS). Together they
// stay under the write_timeout of stack.yml (20s).
const (
	apiTimeout     = 10 * time.Second
	mailboxTimeout = 8 * time.Second
)

// maxBodyBytes is the largest request accepted, the mailbox's default
// limit.
const maxBodyBytes = 1 << 20

// Config is the function's environment.
type Config struct {
	// APIURL is the rate-limited API the work is POSTed to (api_url).
	// Required.
	APIURL string
	// MailboxURL is the mailbox's requeue API without /deadletter
	// (mailbox_url), e.g. http://gateway.openfaas:8080/function/mailbox.
	// Required.
	MailboxURL string
	// FunctionName is this function's name as the gateway knows it
	// (function_name): "name" or "name.namespace". The mailbox calls it
	// back at /function/<it>. Required.
	FunctionName string
	// MaxRetries is X-Max-Retries on the first requeue
	// (requeue_max_retries). Defaults to the mailbox's default_max_retries.
	MaxRetries *int
	// Delay is X-Delay-Duration when the API's 429 has no Retry-After and
	// the request carries none (requeue_delay: seconds, or a duration like
	// 1500ms). Defaults to the mailbox's default_delay.
	Delay *time.Duration
	// Token is the mailbox's API token, read from the file
	// mailbox_token_file (e.g. /var/openfaas/secrets/mailbox-token) when
	// set. With it, requeues are signed, and a delivery's retries and id
	// carry over only when the mailbox signed it (requeue.Verify), so a
	// caller of this public function cannot set them. Without it (a
	// mailbox without auth_token_secret, whose deliveries are unsigned),
	// the incoming headers are trusted as they are: deploy the function
	// where only the mailbox can call it.
	Token string
}

// LoadConfig reads the settings from environ ("key=value" pairs). A bad or
// missing required value is an error naming the setting.
func LoadConfig(environ []string) (Config, error) {
	env := map[string]string{}
	for _, kv := range environ {
		if k, v, ok := strings.Cut(kv, "="); ok {
			env[k] = v
		}
	}
	var c Config
	var errs []error
	for _, s := range []struct {
		name string
		dst  *string
	}{{"api_url", &c.APIURL}, {"mailbox_url", &c.MailboxURL}} {
		v := env[s.name]
		u, err := url.Parse(v)
		if v == "" || err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			errs = append(errs, fmt.Errorf("%s: %q must be an http:// or https:// URL", s.name, v))
		}
		*s.dst = v
	}
	c.FunctionName = env["function_name"]
	if c.FunctionName == "" {
		errs = append(errs, errors.New("function_name: required: this function's name, for the mailbox to call it back"))
	}
	if v := env["requeue_max_retries"]; v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 0 {
			errs = append(errs, fmt.Errorf("requeue_max_retries: %q is not a non-negative integer", v))
		}
		c.MaxRetries = &n
	}
	if path := env["mailbox_token_file"]; path != "" {
		b, err := os.ReadFile(path)
		switch {
		case err != nil:
			errs = append(errs, fmt.Errorf("mailbox_token_file: %w", err))
		case strings.TrimSpace(string(b)) == "":
			errs = append(errs, fmt.Errorf("mailbox_token_file: %s is empty", path))
		}
		c.Token = strings.TrimSpace(string(b))
	}
	if v := env["requeue_delay"]; v != "" {
		d, err := requeue.ParseDelay(v)
		if err != nil {
			errs = append(errs, fmt.Errorf("requeue_delay: %w", err))
		}
		c.Delay = &d
	}
	return c, errors.Join(errs...)
}

// New builds the function from its environment. close has nothing to
// release and always returns nil.
func New(environ []string, logs io.Writer) (h http.Handler, close func() error, err error) {
	cfg, err := LoadConfig(environ)
	if err != nil {
		return nil, nil, err
	}
	var defaults []requeue.Option
	if cfg.MaxRetries != nil {
		defaults = append(defaults, requeue.WithDefaultMaxRetries(*cfg.MaxRetries))
	}
	if cfg.Delay != nil {
		defaults = append(defaults, requeue.WithDefaultDelay(*cfg.Delay))
	}
	if cfg.Token != "" {
		defaults = append(defaults, requeue.WithToken(cfg.Token))
	} else {
		defaults = append(defaults, requeue.TrustIncoming())
	}
	return &handler{
		cfg:      cfg,
		defaults: defaults,
		client:   &http.Client{Timeout: apiTimeout},
		log:      slog.New(slog.NewJSONHandler(logs, nil)),
	}, func() error { return nil }, nil
}

type handler struct {
	cfg      Config
	defaults []requeue.Option
	client   *http.Client
	log      *slog.Logger
}

// answer is the function's JSON answer.
type answer struct {
	Status     string `json:"status,omitempty"`
	APIStatus  int    `json:"api_status,omitempty"`
	APIAnswer  string `json:"api_answer,omitempty"`
	ID         string `json:"id,omitempty"`
	Retries    int    `json:"retries,omitempty"`
	MaxRetries int    `json:"max_retries,omitempty"`
	DueAt      string `json:"due_at,omitempty"`
	Error      string `json:"error,omitempty"`
}

func (h *handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodPost {
		w.Header().Set("Allow", http.MethodPost)
		reply(w, http.StatusMethodNotAllowed, answer{Error: "use POST with the work as the body"})
		return
	}
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, maxBodyBytes))
	if err != nil {
		reply(w, http.StatusRequestEntityTooLarge, answer{Error: err.Error()})
		return
	}

	status, apiAnswer, retryAfter, err := h.callAPI(r.Context(), r.Header.Get("Content-Type"), body)
	switch {
	case err != nil:
		h.log.Warn("API call failed", "error", err)
		reply(w, http.StatusBadGateway, answer{Error: "calling the API: " + err.Error()})
	case status == http.StatusTooManyRequests:
		h.requeue(w, r, body, retryAfter)
	case status >= 200 && status < 300:
		reply(w, http.StatusOK, answer{Status: "done", APIStatus: status, APIAnswer: apiAnswer})
	default:
		h.log.Warn("API answered an error", "status", status)
		reply(w, http.StatusBadGateway, answer{APIStatus: status, APIAnswer: apiAnswer, Error: fmt.Sprintf("the API answered %d", status)})
	}
}

// callAPI POSTs the work to the API and returns its status, the start of
// its answer and, for a 429, its Retry-After (0 if none).
func (h *handler) callAPI(ctx context.Context, contentType string, body []byte) (int, string, time.Duration, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, h.cfg.APIURL, bytes.NewReader(body))
	if err != nil {
		return 0, "", 0, err
	}
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	res, err := h.client.Do(req)
	if err != nil {
		return 0, "", 0, err
	}
	defer res.Body.Close()
	b, _ := io.ReadAll(io.LimitReader(res.Body, 4096))
	var wait time.Duration
	if res.StatusCode == http.StatusTooManyRequests {
		wait = requeue.RetryAfter(res.Header.Get("Retry-After"), time.Now())
	}
	return res.StatusCode, string(b), wait, nil
}

// requeue hands the request to the mailbox and answers with the outcome.
func (h *handler) requeue(w http.ResponseWriter, r *http.Request, body []byte, wait time.Duration) {
	opts := h.defaults
	if wait > 0 {
		// The API said how long to wait: that beats any carried delay.
		opts = append(append([]requeue.Option(nil), h.defaults...), requeue.WithDelay(wait))
	}
	ctx, cancel := context.WithTimeout(r.Context(), mailboxTimeout)
	defer cancel()
	res, err := requeue.Request(ctx, h.client, h.cfg.MailboxURL, h.cfg.FunctionName, r, body, opts...)
	if res.ID != "" {
		w.Header().Set(requeue.HeaderMessageID, res.ID)
	}
	switch {
	case err == nil:
		h.log.Info("rate limited: requeued", "id", res.ID, "retries", res.Retries, "max_retries", res.MaxRetries, "due_at", res.DueAt)
		reply(w, http.StatusAccepted, answer{
			Status: "requeued", ID: res.ID, Retries: res.Retries, MaxRetries: res.MaxRetries,
			DueAt: res.DueAt.Format(time.RFC3339Nano),
		})
	case errors.Is(err, requeue.ErrMaxRetries):
		h.log.Error("rate limited and retries spent: kept as a dead letter", "id", res.ID, "retries", res.Retries, "max_retries", res.MaxRetries)
		reply(w, http.StatusOK, answer{
			Status: "dead-lettered", ID: res.ID, Retries: res.Retries, MaxRetries: res.MaxRetries,
			Error: "rate limited and retries spent: the mailbox kept the request as a dead letter and will not retry it",
		})
	default:
		h.log.Error("rate limited and the mailbox did not take the request", "error", err)
		if rerr, ok := errors.AsType[*requeue.Error](err); ok && rerr.RetryAfter > 0 {
			w.Header().Set("Retry-After", strconv.Itoa(int(rerr.RetryAfter/time.Second)))
		}
		reply(w, http.StatusBadGateway, answer{Error: "rate limited, and the mailbox did not take the request: " + err.Error()})
	}
}

func reply(w http.ResponseWriter, code int, a answer) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(a)
}
