package cli

import (
	"encoding/json"

	"github.com/openfaas/mailbox/internal/api"
	"github.com/openfaas/mailbox/internal/deadletter"
	"github.com/openfaas/mailbox/internal/envelope"
)

// The management API's answers are the server's own types; rawPage keeps
// a page's items as received, so that JSON output prints fields the CLI
// does not know.
type (
	entry   = deadletter.Entry
	count   = deadletter.Count
	page    = api.DeadLetterPage
	detail  = api.DeadLetterDetail
	death   = envelope.Death
	outcome = deadletter.Outcome
	job     = deadletter.Job
)

// Job states.
const (
	jobRunning = deadletter.JobRunning
	jobStopped = deadletter.JobStopped
)

// rawPage is a page with its items as received, to print them as JSON.
type rawPage struct {
	Items      []json.RawMessage `json:"items"`
	NextCursor string            `json:"next_cursor,omitempty"`
	Total      int               `json:"total"`
	Counts     json.RawMessage   `json:"counts"`
}
