package cli

import (
	"encoding/json"
	"net/http"
	"time"
)

// The management API's answers, as far as the CLI reads them (the
// server's types are in internal/api and internal/deadletter). JSON
// output prints the answers as received, so fields the CLI does not know
// are kept there.

// entry is one dead letter in a list.
type entry struct {
	Seq        uint64    `json:"seq"`
	ID         string    `json:"id"`
	Function   string    `json:"function"`
	Kind       string    `json:"kind"`
	Reason     string    `json:"reason"`
	Retries    int       `json:"retries"`
	Replays    int       `json:"replays"`
	LastStatus int       `json:"last_status"`
	LastError  string    `json:"last_error"`
	AcceptedAt time.Time `json:"accepted_at"`
	DeadAt     time.Time `json:"dead_at"`
	BodyBytes  int       `json:"body_bytes"`
}

type count struct {
	Function string `json:"function"`
	Reason   string `json:"reason"`
	Count    int    `json:"count"`
}

// page is the answer of GET /deadletters.
type page struct {
	Items      []entry `json:"items"`
	NextCursor string  `json:"next_cursor"`
	Total      int     `json:"total"`
	Counts     []count `json:"counts"`
}

// rawPage is a page with its items as received, to print them as JSON.
type rawPage struct {
	Items      []json.RawMessage `json:"items"`
	NextCursor string            `json:"next_cursor,omitempty"`
	Total      int               `json:"total"`
	Counts     json.RawMessage   `json:"counts"`
}

// detail is the answer of GET /deadletters/<id>.
type detail struct {
	entry
	Header         http.Header `json:"header"`
	Body           *string     `json:"body"`
	BodyBase64     *string     `json:"body_base64"`
	Policy         policy      `json:"policy"`
	DueAt          time.Time   `json:"due_at"`
	FirstAttemptAt time.Time   `json:"first_attempt_at"`
	LastAttemptAt  time.Time   `json:"last_attempt_at"`
	LastResponse   string      `json:"last_response"`
	Deaths         []death     `json:"deaths"`
}

// policy is a message's delivery settings as far as they are set;
// durations are in nanoseconds.
type policy struct {
	MaxRetries         *int           `json:"max_retries"`
	Delay              *time.Duration `json:"delay"`
	Backoff            string         `json:"backoff"`
	MaxDelay           *time.Duration `json:"max_delay"`
	TTL                *time.Duration `json:"ttl"`
	DeadLetterFunction string         `json:"dead_letter_function"`
	CallbackURL        string         `json:"callback_url"`
}

// death is an earlier death of a replayed message.
type death struct {
	Reason     string    `json:"reason"`
	DeadAt     time.Time `json:"dead_at"`
	Retries    int       `json:"retries"`
	LastStatus int       `json:"last_status"`
	LastError  string    `json:"last_error"`
}

// outcome is the answer of a replay or purge of one dead letter.
type outcome struct {
	ID       string    `json:"id"`
	Function string    `json:"function"`
	Status   string    `json:"status"`
	Repeated bool      `json:"repeated"`
	Retries  int       `json:"retries"`
	DueAt    time.Time `json:"due_at"`
}

// Job states.
const (
	jobRunning = "running"
	jobStopped = "stopped"
)

// job is a bulk replay or purge.
type job struct {
	ID         string    `json:"id"`
	Action     string    `json:"action"`
	Retries    int       `json:"retries"`
	State      string    `json:"state"`
	Matched    int       `json:"matched"`
	Done       int       `json:"done"`
	Skipped    int       `json:"skipped"`
	Failed     int       `json:"failed"`
	Errors     []string  `json:"errors"`
	StartedAt  time.Time `json:"started_at"`
	FinishedAt time.Time `json:"finished_at"`
	Location   string    `json:"location"`
}
