package api

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"time"

	"github.com/openfaas/mailbox/internal/envelope"
	"github.com/openfaas/mailbox/internal/queue"
)

const messagesPrefix = "/messages/"

// statusTimeout bounds a status lookup; on NATS Streaming the first one
// waits for the process's index to read the status channel.
const statusTimeout = 5 * time.Second

// statusResponse is the 200 answer of GET /messages/<id>.
type statusResponse struct {
	ID       string `json:"id"`
	Function string `json:"function"`
	Kind     string `json:"kind,omitempty"`
	// Status is waiting, in-flight, delivered or dead-lettered.
	Status     string    `json:"status"`
	DueAt      time.Time `json:"due_at,omitzero"`
	Retries    int       `json:"retries"`
	Reason     string    `json:"reason,omitempty"`
	LastStatus int       `json:"last_status,omitempty"`
	Route      string    `json:"route,omitempty"`
	Callback   string    `json:"callback,omitempty"`
	AcceptedAt time.Time `json:"accepted_at,omitzero"`
	UpdatedAt  time.Time `json:"updated_at"`
	ExpiresAt  time.Time `json:"expires_at,omitzero"`
}

// messageStatus answers GET /messages/<id> with the latest status kept
// for the message.
func (h *handler) messageStatus(w http.ResponseWriter, r *http.Request, path string) int {
	if !allowRead(w, r) {
		return http.StatusMethodNotAllowed
	}
	id, err := statusID(path)
	if err != nil {
		return writeFieldError(w, http.StatusBadRequest, err)
	}
	ctx, cancel := context.WithTimeout(r.Context(), statusTimeout)
	defer cancel()
	s, err := h.queue.Status(ctx, id)
	switch {
	case errors.Is(err, queue.ErrStatusesOff):
		return writeError(w, http.StatusNotFound, "", fmt.Sprintf("no status for message %s: this mailbox records no statuses (statuses=false)", id))
	case errors.Is(err, queue.ErrNoStatus):
		return writeError(w, http.StatusNotFound, "", fmt.Sprintf("no status for message %s: unknown, or ended more than %s ago", id, h.retention))
	case err != nil:
		h.log.Warn("status lookup failed", "id", id, "error", err)
		w.Header().Set("Retry-After", retryAfterSeconds)
		return writeError(w, http.StatusServiceUnavailable, "", "queue unavailable, retry later")
	}
	if s.Kind == envelope.KindCallback {
		// A callback's endpoint is the caller's choice: its status code and
		// the reason it was given up (rejected or out of retries) would
		// tell the caller whether something answered there. Where the
		// callback is (waiting, in flight, delivered, dead-lettered) is
		// all that is shown.
		s.LastStatus, s.Reason = 0, ""
	}
	return writeJSON(w, http.StatusOK, statusResponse{
		ID:         s.ID,
		Function:   s.Function,
		Kind:       s.Kind,
		Status:     s.State,
		DueAt:      s.DueAt,
		Retries:    s.Retries,
		Reason:     s.Reason,
		LastStatus: s.LastStatus,
		Route:      s.Route,
		Callback:   s.Callback,
		AcceptedAt: s.AcceptedAt,
		UpdatedAt:  s.UpdatedAt,
		ExpiresAt:  s.ExpiresAt,
	})
}

// statusID returns the message id of a /messages/<id> path.
func statusID(escapedPath string) (string, error) {
	id, _ := strings.CutPrefix(escapedPath, messagesPrefix)
	if escapedPath == "/messages" {
		id = ""
	}
	return id, checkMessageID(id)
}

// checkMessageID accepts an id as X-Mailbox-Message-Id takes it, or such
// an id with -dl (its routed dead letter) or -cb (its callback) after it.
func checkMessageID(id string) error {
	if id == "" {
		return &fieldError{field: "id", msg: "missing message id: use /messages/<id> or /deadletters/<id>"}
	}
	base := id
	if b, ok := strings.CutSuffix(id, "-dl"); ok {
		base = b
	} else if b, ok := strings.CutSuffix(id, "-cb"); ok {
		base = b
	}
	if !isMessageID(id) && !isMessageID(base) {
		return &fieldError{field: "id", msg: fmt.Sprintf("%s must be 1 to %d of A-Z, a-z, 0-9, '_' or '-' (as %s)", echo(id), maxMessageIDLen, envelope.HeaderMessageID)}
	}
	return nil
}
