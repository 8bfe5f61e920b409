package api

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/openfaas/mailbox/internal/callback"
	"github.com/openfaas/mailbox/internal/deadletter"
	"github.com/openfaas/mailbox/internal/envelope"
	"github.com/openfaas/mailbox/internal/names"
	"github.com/openfaas/mailbox/internal/queue"
)

// The management API: /deadletters lists, reads, replays and purges the
// dead letters (internal/deadletter does the work).
const (
	deadLettersPath   = "/deadletters"
	deadLettersPrefix = deadLettersPath + "/"
	jobsPrefix        = deadLettersPrefix + "jobs/"
)

// managementTimeout bounds one management call; a first call waits for
// the process's dead-letter index to read the log.
const managementTimeout = 15 * time.Second

// List page sizes.
const (
	defaultPageSize = 50
	maxPageSize     = 500
)

// DeadLetterPage is the answer of GET /deadletters.
type DeadLetterPage struct {
	Items []deadletter.Entry `json:"items"`
	// NextCursor, when not empty, is the cursor of the next page.
	NextCursor string             `json:"next_cursor,omitempty"`
	Total      int                `json:"total"`
	Counts     []deadletter.Count `json:"counts"`
}

// DeadLetterDetail is the answer of GET /deadletters/<id>.
type DeadLetterDetail struct {
	deadletter.Entry
	Header         http.Header      `json:"header,omitempty"`
	Body           *string          `json:"body,omitempty"`
	BodyBase64     *string          `json:"body_base64,omitempty"`
	Policy         envelope.Policy  `json:"policy"`
	DueAt          time.Time        `json:"due_at,omitzero"`
	FirstAttemptAt time.Time        `json:"first_attempt_at,omitzero"`
	LastAttemptAt  time.Time        `json:"last_attempt_at,omitzero"`
	LastError      string           `json:"last_error,omitempty"`
	LastResponse   string           `json:"last_response,omitempty"`
	Deaths         []envelope.Death `json:"deaths,omitempty"`
}

// jobResponse is a bulk job, with where to follow it.
type jobResponse struct {
	deadletter.Job
	Location string `json:"location"`
}

// deadLetters routes /deadletters and below.
func (h *handler) deadLetters(w http.ResponseWriter, r *http.Request, path string) int {
	ctx, cancel := context.WithTimeout(r.Context(), managementTimeout)
	defer cancel()
	rest, _ := strings.CutPrefix(path, deadLettersPath)
	rest = strings.TrimPrefix(rest, "/")
	switch {
	case rest == "":
		switch r.Method {
		case http.MethodGet, http.MethodHead:
			return h.listDeadLetters(ctx, w, r)
		case http.MethodDelete:
			return h.startJob(ctx, w, r, deadletter.ActionPurge)
		}
		return notAllowed(w, r, "GET, HEAD, DELETE")
	case rest == "replay":
		if r.Method != http.MethodPost {
			return notAllowed(w, r, "POST")
		}
		return h.startJob(ctx, w, r, deadletter.ActionReplay)
	case strings.HasPrefix(path, jobsPrefix):
		if !allowRead(w, r) {
			return http.StatusMethodNotAllowed
		}
		job, err := h.deadLetterStore.Job(strings.TrimPrefix(path, jobsPrefix))
		if err != nil {
			return writeError(w, http.StatusNotFound, "job", err.Error())
		}
		return writeJSON(w, http.StatusOK, jobResponse{Job: job, Location: jobsPrefix + job.ID})
	}
	id, action, _ := strings.Cut(rest, "/")
	if err := checkMessageID(id); err != nil {
		return writeFieldError(w, http.StatusBadRequest, err)
	}
	switch {
	case action == "" && (r.Method == http.MethodGet || r.Method == http.MethodHead):
		return h.showDeadLetter(ctx, w, id)
	case action == "" && r.Method == http.MethodDelete:
		out, err := h.deadLetterStore.Remove(ctx, id)
		return h.outcome(w, out, err)
	case action == "":
		return notAllowed(w, r, "GET, HEAD, DELETE")
	case action == "replay" && r.Method == http.MethodPost:
		retries, err := retriesParam(r.URL.Query())
		if err != nil {
			return writeFieldError(w, http.StatusBadRequest, err)
		}
		out, err := h.deadLetterStore.Replay(ctx, id, retries)
		return h.outcome(w, out, err)
	case action == "replay":
		return notAllowed(w, r, "POST")
	}
	return writeError(w, http.StatusNotFound, "", "not found")
}

func notAllowed(w http.ResponseWriter, r *http.Request, allow string) int {
	w.Header().Set("Allow", allow)
	return writeError(w, http.StatusMethodNotAllowed, "", "method "+r.Method+" not allowed: use "+allow)
}

func (h *handler) listDeadLetters(ctx context.Context, w http.ResponseWriter, r *http.Request) int {
	q := r.URL.Query()
	f, err := filterParams(q)
	if err != nil {
		return writeFieldError(w, http.StatusBadRequest, err)
	}
	size := defaultPageSize
	if v := q.Get("limit"); v != "" {
		if size, err = strconv.Atoi(v); err != nil || size < 1 || size > maxPageSize {
			return writeError(w, http.StatusBadRequest, "limit", fmt.Sprintf("limit %s must be a whole number from 1 to %d", echo(v), maxPageSize))
		}
	}
	var before uint64
	if v := q.Get("cursor"); v != "" {
		if before, err = strconv.ParseUint(v, 10, 64); err != nil || before == 0 {
			return writeError(w, http.StatusBadRequest, "cursor", fmt.Sprintf("cursor %s is not one this API returned in next_cursor", echo(v)))
		}
	}
	page, err := h.deadLetterStore.List(ctx, f, before, size)
	if err != nil {
		return h.managementError(w, err)
	}
	out := DeadLetterPage{Items: page.Items, Total: page.Total, Counts: page.Counts}
	if out.Items == nil {
		out.Items = []deadletter.Entry{}
	}
	if page.Next != 0 {
		out.NextCursor = strconv.FormatUint(page.Next, 10)
	}
	return writeJSON(w, http.StatusOK, out)
}

func (h *handler) showDeadLetter(ctx context.Context, w http.ResponseWriter, id string) int {
	entry, e, err := h.deadLetterStore.Get(ctx, id)
	if err != nil {
		return h.managementError(w, err)
	}
	policy := e.Policy
	// Its query may hold a secret; the stored message keeps it whole.
	policy.CallbackURL = callback.Redact(policy.CallbackURL)
	out := DeadLetterDetail{
		Entry: entry, Header: e.Header, Policy: policy, DueAt: e.DueAt,
		FirstAttemptAt: e.FirstAttemptAt, LastAttemptAt: e.LastAttemptAt,
		LastError: e.LastError, LastResponse: e.LastResponse, Deaths: e.Deaths,
	}
	if utf8.Valid(e.Body) {
		body := string(e.Body)
		out.Body = &body
	} else {
		body := base64.StdEncoding.EncodeToString(e.Body)
		out.BodyBase64 = &body
	}
	return writeJSON(w, http.StatusOK, out)
}

// outcome answers a replay or removal of one dead letter: 202 when a
// replay was scheduled, 200 otherwise.
func (h *handler) outcome(w http.ResponseWriter, out deadletter.Outcome, err error) int {
	if err != nil {
		return h.managementError(w, err)
	}
	if out.Status == queue.RemovedReplayed && !out.Repeated {
		return writeJSON(w, http.StatusAccepted, out)
	}
	return writeJSON(w, http.StatusOK, out)
}

func (h *handler) startJob(ctx context.Context, w http.ResponseWriter, r *http.Request, action string) int {
	q := r.URL.Query()
	f, err := filterParams(q)
	if err != nil {
		return writeFieldError(w, http.StatusBadRequest, err)
	}
	retries, err := retriesParam(q)
	if err != nil {
		return writeFieldError(w, http.StatusBadRequest, err)
	}
	if action == deadletter.ActionPurge && f == (deadletter.Filter{}) && q.Get("all") != "true" {
		return writeError(w, http.StatusBadRequest, "all", "a purge without function, reason, since, until or q removes every dead letter: add all=true to mean it")
	}
	job, err := h.deadLetterStore.Start(ctx, action, f, retries)
	if err != nil {
		return h.managementError(w, err)
	}
	// Relative, as the API may be served under a prefix (the gateway's
	// /function/mailbox): from /deadletters/replay it is jobs/<id>, from
	// /deadletters deadletters/jobs/<id>.
	location := "jobs/" + job.ID
	if action == deadletter.ActionPurge {
		location = "deadletters/jobs/" + job.ID
	}
	w.Header().Set("Location", location)
	return writeJSON(w, http.StatusAccepted, jobResponse{Job: job, Location: jobsPrefix + job.ID})
}

// filterParams reads function, reason, since, until and q.
func filterParams(q url.Values) (deadletter.Filter, error) {
	f := deadletter.Filter{Function: q.Get("function"), Reason: q.Get("reason"), Query: q.Get("q")}
	if f.Function != "" && !names.Valid(f.Function) {
		return f, &fieldError{field: "function", msg: fmt.Sprintf("function %s is not a function name (name or name.namespace)", echo(f.Function))}
	}
	if f.Reason != "" && !slices.Contains(envelope.Reasons, f.Reason) {
		return f, &fieldError{field: "reason", msg: fmt.Sprintf("reason %s is not one of %s", echo(f.Reason), strings.Join(envelope.Reasons, ", "))}
	}
	for _, p := range []struct {
		name string
		to   *time.Time
	}{{"since", &f.Since}, {"until", &f.Until}} {
		v := q.Get(p.name)
		if v == "" {
			continue
		}
		t, err := time.Parse(time.RFC3339, v)
		if err != nil {
			return f, &fieldError{field: p.name, msg: fmt.Sprintf("%s %s is not an RFC 3339 time such as 2026-01-02T15:04:05Z", p.name, echo(v))}
		}
		*p.to = t
	}
	return f, nil
}

// retriesParam reads retries, the attempts a replayed message counts as
// made: 0 unless given.
func retriesParam(q url.Values) (int, error) {
	v := q.Get("retries")
	if v == "" {
		return 0, nil
	}
	n, err := strconv.Atoi(v)
	if err != nil || n < 0 || n > maxRetriesParam {
		return 0, &fieldError{field: "retries", msg: fmt.Sprintf("retries %s must be a whole number from 0 to %d", echo(v), maxRetriesParam)}
	}
	return n, nil
}

// maxRetriesParam bounds retries; the message's own max_retries decides
// whether it is delivered at all.
const maxRetriesParam = 10000

// managementError answers a failed management call.
func (h *handler) managementError(w http.ResponseWriter, err error) int {
	switch {
	case errors.Is(err, deadletter.ErrNotFound):
		return writeError(w, http.StatusNotFound, "id", err.Error())
	case errors.Is(err, deadletter.ErrNotReplayable):
		return writeError(w, http.StatusConflict, "id", err.Error())
	case errors.Is(err, deadletter.ErrBusy):
		return writeError(w, http.StatusConflict, "", err.Error())
	case errors.Is(err, deadletter.ErrRefused):
		return writeError(w, http.StatusForbidden, "function", err.Error())
	case errors.Is(err, queue.ErrTooLarge):
		return writeError(w, http.StatusRequestEntityTooLarge, "", "message is larger than the broker accepts")
	}
	h.log.Warn("management call failed", "error", err)
	w.Header().Set("Retry-After", retryAfterSeconds)
	return writeError(w, http.StatusServiceUnavailable, "", "queue unavailable, retry later")
}
