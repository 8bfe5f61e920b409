package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"time"
)

// APIError is an answer of the management API other than 2xx.
type APIError struct {
	// StatusCode is the HTTP status code; Status is the status line's
	// text, "404 Not Found".
	StatusCode int
	Status     string
	// Message and Field are the error's JSON body ({"error","field"}), or
	// Message the start of a body that is not JSON (a gateway's own
	// answer).
	Message string
	Field   string
	// RetryAfter is the Retry-After header of a 503, as sent.
	RetryAfter string
	// Hint, when not empty, says what the CLI can tell about the cause.
	Hint string
}

// Error reads "<status>: <error> (field <field>)".
func (e *APIError) Error() string {
	var b strings.Builder
	b.WriteString(e.Status)
	if e.Message != "" {
		b.WriteString(": " + e.Message)
	}
	if e.Field != "" {
		b.WriteString(" (field " + e.Field + ")")
	}
	if e.RetryAfter != "" {
		b.WriteString(" (retry after " + e.RetryAfter + ")")
	}
	if e.Hint != "" {
		b.WriteString(": " + e.Hint)
	}
	return b.String()
}

// maxAnswer bounds the answer read: a page of 500 entries, or one dead
// letter with its body, is far smaller.
const maxAnswer = 64 << 20

// maxErrorText bounds the text of a non-JSON error answer shown.
const maxErrorText = 200

// client calls the management API at base (no trailing slash).
type client struct {
	base  string
	token string
	http  *http.Client
}

// do sends method to base+path?query, answers an APIError unless the
// status is 2xx, decodes the JSON answer into out (when not nil) and
// returns the answer as received.
func (c *client) do(ctx context.Context, method, path string, query url.Values, out any) ([]byte, error) {
	u := c.base + path
	if len(query) > 0 {
		u += "?" + query.Encode()
	}
	req, err := http.NewRequestWithContext(ctx, method, u, nil)
	if err != nil {
		return nil, fmt.Errorf("%s %s: %w", method, redact(u), err)
	}
	req.Header.Set("Accept", "application/json")
	req.Header.Set("User-Agent", "mailbox-cli")
	if c.token != "" {
		req.Header.Set("Authorization", "Bearer "+c.token)
	}
	resp, err := c.http.Do(req)
	if err != nil {
		if ue, ok := errors.AsType[*url.Error](err); ok {
			err = ue.Err
		}
		return nil, fmt.Errorf("%s %s: %w", method, redact(u), err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxAnswer+1))
	if err != nil {
		return nil, fmt.Errorf("%s %s: reading the answer: %w", method, redact(u), err)
	}
	if len(body) > maxAnswer {
		return nil, fmt.Errorf("%s %s: answer larger than %d bytes", method, redact(u), maxAnswer)
	}
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		return nil, c.apiError(resp, body)
	}
	if out != nil {
		if err := json.Unmarshal(body, out); err != nil {
			return nil, fmt.Errorf("%s %s: answer is not the JSON expected (%v): is --url the mailbox?", method, redact(u), err)
		}
	}
	return body, nil
}

func (c *client) apiError(resp *http.Response, body []byte) *APIError {
	e := &APIError{StatusCode: resp.StatusCode, Status: resp.Status, RetryAfter: resp.Header.Get("Retry-After")}
	var answer struct {
		Error string `json:"error"`
		Field string `json:"field"`
	}
	if json.Unmarshal(body, &answer) == nil && answer.Error != "" {
		e.Message, e.Field = answer.Error, answer.Field
	} else {
		text := string(bytes.TrimSpace(body))
		if len(text) > maxErrorText {
			text = clip(text, maxErrorText) + "..."
		}
		e.Message = oneLine(text)
	}
	if resp.StatusCode == http.StatusUnauthorized && c.token == "" {
		e.Hint = "no token was given (--token, --token-file, mailbox_token or mailbox_token_file)"
	}
	return e
}

// redact hides a password in u.
func redact(u string) string {
	p, err := url.Parse(u)
	if err != nil {
		return u
	}
	return p.Redacted()
}

// newHTTPClient bounds each request by timeout.
func newHTTPClient(timeout time.Duration) *http.Client {
	return &http.Client{Timeout: timeout}
}
