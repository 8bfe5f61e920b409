package main

// End-to-end test of mailbox deadletters against a real mailbox serve
// with a token, on each backend: both run in this process, the CLI
// through command, as main runs it, with its own stdin, stdout and
// stderr.

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/openfaas/mailbox/internal/gatewaytest"
	"github.com/openfaas/mailbox/internal/logtest"
	"github.com/openfaas/mailbox/internal/poll"
)

// cliToken is the management token the mailbox reads from its secret.
const cliToken = "cli-e2e-token-7c41"

// cliMailbox is a mailbox serve with a token, running in this process,
// and the stand-in gateway it delivers to.
type cliMailbox struct {
	url          string
	alpha, beta  *gatewaytest.Recorder
	dir          string // a temporary directory of the test's own
	logs         *logtest.Buffer
	environToken []string // the CLI's environment: the URL and the token
}

// serveWithToken runs mailbox serve on backend in this process, with the
// token in <secret_mount_path>/<auth_token_secret>, until the test ends.
// Functions alpha and beta are deployed on its gateway.
func serveWithToken(t *testing.T, backend string) *cliMailbox {
	t.Helper()
	gw := startGateway(t)
	m := &cliMailbox{
		alpha: gatewaytest.Record(nil),
		beta:  gatewaytest.Record(nil),
		dir:   t.TempDir(),
		logs:  &logtest.Buffer{},
	}
	gw.Deploy("alpha", m.alpha, nil)
	gw.Deploy("beta", m.beta, nil)
	secrets := filepath.Join(m.dir, "secrets")
	if err := os.Mkdir(secrets, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(secrets, "mailbox-token"), []byte(cliToken+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	args := []string{"serve",
		"--backend", backend,
		"--listen", "127.0.0.1:0",
		"--data-dir", filepath.Join(m.dir, "data"),
		"--gateway-url", gw.URL(),
		"--nats-url=",
	}
	environ := []string{
		"secret_mount_path=" + secrets,
		"auth_token_secret=mailbox-token",
		"log_format=json",
		"upstream_timeout=10s",
	}
	ctx, cancel := context.WithCancel(context.Background())
	addrs := make(chan string, 1)
	done := make(chan error, 1)
	go func() { done <- run(ctx, args, environ, m.logs, func(addr string) { addrs <- addr }) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("mailbox serve returned %v", err)
			}
		case <-time.After(30 * time.Second):
			t.Error("mailbox serve did not return within 30s of its context ending")
		}
		if t.Failed() {
			t.Logf("mailbox serve log:\n%s", m.logs.String())
		}
	})
	select {
	case addr := <-addrs:
		m.url = "http://" + addr
	case err := <-done:
		t.Fatalf("mailbox serve returned before serving: %v\n%s", err, m.logs.String())
	case <-time.After(30 * time.Second):
		t.Fatal("mailbox serve did not listen within 30s")
	}
	// The API listens before the queue is ready, answering 503 until then.
	poll.Until(t, 30*time.Second, "mailbox /healthz answers 200", func() bool {
		res, err := http.Get(m.url + "/healthz")
		if err != nil {
			return false
		}
		res.Body.Close()
		return res.StatusCode == http.StatusOK
	})
	m.environToken = []string{"mailbox_url=" + m.url, "mailbox_token=" + cliToken}
	return m
}

// bury stores a dead letter for fn through the requeue API: a message
// requeued with its retries spent is dead-lettered at once.
func (m *cliMailbox) bury(t *testing.T, fn, id, body string) {
	t.Helper()
	req, err := http.NewRequest(http.MethodPost, m.url+"/deadletter/"+fn, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+cliToken)
	req.Header.Set("X-Mailbox-Message-Id", id)
	req.Header.Set("X-Retries", "3")
	req.Header.Set("X-Max-Retries", "2")
	req.Header.Set("X-Trace", "trace-"+id)
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	raw, _ := io.ReadAll(res.Body)
	var a struct {
		Status string `json:"status"`
		ID     string `json:"id"`
	}
	if err := json.Unmarshal(raw, &a); err != nil || res.StatusCode != http.StatusOK || a.Status != "dead-lettered" || a.ID != id {
		t.Fatalf("requeue of %s for %s answered %d %s; want 200 dead-lettered with its id", id, fn, res.StatusCode, raw)
	}
}

// cliRun is one run of the CLI.
type cliRun struct {
	args           []string
	stdout, stderr string
	err            error
	code           int // the exit code main would give
}

func (r cliRun) String() string {
	return fmt.Sprintf("mailbox %q: exit %d, err %v\nstdout:\n%s\nstderr:\n%s", r.args, r.code, r.err, r.stdout, r.stderr)
}

// dl runs mailbox args through command, as main does, with environ and
// stdin.
func dl(t *testing.T, environ []string, stdin string, args ...string) cliRun {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	var stdout, stderr bytes.Buffer
	err := command(ctx, args, environ, strings.NewReader(stdin), &stdout, &stderr)
	return cliRun{args: args, stdout: stdout.String(), stderr: stderr.String(), err: err, code: exitCode(args, err)}
}

// ok runs mailbox args and requires it to succeed.
func (m *cliMailbox) ok(t *testing.T, args ...string) cliRun {
	t.Helper()
	r := dl(t, m.environToken, "", args...)
	if r.code != 0 {
		t.Fatalf("want success:\n%s", r)
	}
	return r
}

// tableIDs are the first column of a list table's rows, the header and
// the summary left out.
func tableIDs(t *testing.T, r cliRun) []string {
	t.Helper()
	lines := strings.Split(strings.TrimSuffix(r.stdout, "\n"), "\n")
	if len(lines) < 2 || !regexp.MustCompile(`^ID\s+FUNCTION\s+REASON\s+RETRIES\s+LAST STATUS\s+DEAD AT$`).MatchString(lines[0]) {
		t.Fatalf("not a list table:\n%s", r)
	}
	ids := []string{}
	for _, l := range lines[1 : len(lines)-1] {
		ids = append(ids, strings.Fields(l)[0])
	}
	return ids
}

// summaryLine is the last line of a list table.
func summaryLine(r cliRun) string {
	lines := strings.Split(strings.TrimSuffix(r.stdout, "\n"), "\n")
	return lines[len(lines)-1]
}

// cliList is list -o json.
type cliList struct {
	Items []struct {
		ID       string `json:"id"`
		Function string `json:"function"`
		Reason   string `json:"reason"`
		Retries  int    `json:"retries"`
	} `json:"items"`
	NextCursor string `json:"next_cursor"`
	Total      int    `json:"total"`
	Counts     []struct {
		Function string `json:"function"`
		Reason   string `json:"reason"`
		Count    int    `json:"count"`
	} `json:"counts"`
}

func (l cliList) ids() []string {
	ids := []string{}
	for _, e := range l.Items {
		ids = append(ids, e.ID)
	}
	return ids
}

// cliDetail is show -o json.
type cliDetail struct {
	ID       string      `json:"id"`
	Function string      `json:"function"`
	Reason   string      `json:"reason"`
	Retries  int         `json:"retries"`
	Header   http.Header `json:"header"`
	Body     *string     `json:"body"`
}

func decode[T any](t *testing.T, r cliRun) T {
	t.Helper()
	var v T
	if err := json.Unmarshal([]byte(r.stdout), &v); err != nil {
		t.Fatalf("stdout is not the JSON expected (%v):\n%s", err, r)
	}
	return v
}

// callsWithID are the calls rec received for message id.
func callsWithID(rec *gatewaytest.Recorder, id string) []gatewaytest.Call {
	var out []gatewaytest.Call
	for _, c := range rec.Calls() {
		if c.ID() == id {
			out = append(out, c)
		}
	}
	return out
}

func TestDeadLettersCLIAgainstServe(t *testing.T) {
	t.Parallel()
	restoreLogging(t) // serve sets the default logger; restored once both subtests end
	for _, backend := range backends {
		t.Run(backend, func(t *testing.T) {
			t.Parallel()
			testDeadLettersCLIAgainstServe(t, backend)
		})
	}
}

func testDeadLettersCLIAgainstServe(t *testing.T, backend string) {
	m := serveWithToken(t, backend)
	// Oldest first; lists show them newest first.
	m.bury(t, "alpha", "a1", "first")
	m.bury(t, "beta", "b1", "second")
	m.bury(t, "alpha", "a2", "third")
	m.bury(t, "beta", "b2", "fourth")
	m.bury(t, "alpha", "a3", "fifth")
	newestFirst := []string{"a3", "b2", "a2", "b1", "a1"}
	const counts = "All dead letters by function/reason: alpha/max-retries 3, beta/max-retries 2."

	if !t.Run("list", func(t *testing.T) {
		r := m.ok(t, "deadletters", "list")
		if got := tableIDs(t, r); !slices.Equal(got, newestFirst) {
			t.Errorf("list ids %v, want %v:\n%s", got, newestFirst, r)
		}
		row := regexp.MustCompile(`(?m)^b1\s+beta\s+max-retries\s+3\s+\S+\s+\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$`)
		if !row.MatchString(r.stdout) {
			t.Errorf("no row for b1 matching %s:\n%s", row, r)
		}
		if got, want := summaryLine(r), "5 dead letters match. "+counts; got != want {
			t.Errorf("summary %q, want %q", got, want)
		}

		l := decode[cliList](t, m.ok(t, "dl", "list", "-o", "json"))
		if !slices.Equal(l.ids(), newestFirst) || l.Total != 5 || l.NextCursor != "" {
			t.Errorf("list -o json: ids %v, total %d, cursor %q; want %v, 5, none", l.ids(), l.Total, l.NextCursor, newestFirst)
		}
		if len(l.Counts) != 2 || l.Counts[0].Function != "alpha" || l.Counts[0].Count != 3 || l.Counts[0].Reason != "max-retries" ||
			l.Counts[1].Function != "beta" || l.Counts[1].Count != 2 {
			t.Errorf("list -o json: counts %+v, want alpha/max-retries 3, beta/max-retries 2", l.Counts)
		}
		if e := l.Items[3]; e.Function != "beta" || e.Reason != "max-retries" || e.Retries != 3 {
			t.Errorf("list -o json: b1 is %+v", e)
		}

		r = m.ok(t, "dl", "list", "--function", "beta")
		if got := tableIDs(t, r); !slices.Equal(got, []string{"b2", "b1"}) {
			t.Errorf("list --function beta: ids %v, want [b2 b1]:\n%s", got, r)
		}
		if got, want := summaryLine(r), "2 dead letters match. "+counts; got != want {
			t.Errorf("list --function beta: summary %q, want %q", got, want)
		}
		l = decode[cliList](t, m.ok(t, "dl", "list", "--function", "alpha", "-o", "json"))
		if !slices.Equal(l.ids(), []string{"a3", "a2", "a1"}) || l.Total != 3 {
			t.Errorf("list --function alpha -o json: ids %v, total %d", l.ids(), l.Total)
		}

		r = m.ok(t, "dl", "list", "--limit", "2")
		if got := tableIDs(t, r); !slices.Equal(got, newestFirst[:2]) {
			t.Errorf("list --limit 2: ids %v, want %v", got, newestFirst[:2])
		}
		if got := summaryLine(r); !regexp.MustCompile(`^Showing 2 of 5 matching\. More: --all, or --cursor \d+\. `).MatchString(got) {
			t.Errorf("list --limit 2: summary %q, want it to show 2 of 5 and the next cursor", got)
		}

		// --all follows next_cursor through five pages of one.
		r = m.ok(t, "dl", "list", "--all", "--limit", "1")
		if got := tableIDs(t, r); !slices.Equal(got, newestFirst) {
			t.Errorf("list --all --limit 1: ids %v, want %v:\n%s", got, newestFirst, r)
		}
		if got, want := summaryLine(r), "5 dead letters match. "+counts; got != want {
			t.Errorf("list --all --limit 1: summary %q, want %q", got, want)
		}
		l = decode[cliList](t, m.ok(t, "dl", "list", "--all", "--limit", "1", "-o", "json"))
		if !slices.Equal(l.ids(), newestFirst) || l.Total != 5 || l.NextCursor != "" || len(l.Counts) != 2 {
			t.Errorf("list --all --limit 1 -o json: ids %v, total %d, cursor %q, counts %+v", l.ids(), l.Total, l.NextCursor, l.Counts)
		}
		l = decode[cliList](t, m.ok(t, "dl", "list", "--all", "--limit", "1", "--function", "beta", "-o", "json"))
		if !slices.Equal(l.ids(), []string{"b2", "b1"}) || l.Total != 2 {
			t.Errorf("list --all --limit 1 --function beta -o json: ids %v, total %d", l.ids(), l.Total)
		}
	}) {
		return
	}

	if !t.Run("show", func(t *testing.T) {
		r := m.ok(t, "dl", "show", "b1")
		for _, want := range []string{
			`(?m)^ID:\s+b1$`, `(?m)^Function:\s+beta$`, `(?m)^Reason:\s+max-retries$`, `(?m)^Retries:\s+3$`,
			`(?m)^Headers:$`, `(?m)^  X-Trace: trace-b1$`,
			`(?m)^Body \(6 bytes\):\nsecond$`,
		} {
			if !regexp.MustCompile(want).MatchString(r.stdout) {
				t.Errorf("show b1: no match for %s:\n%s", want, r)
			}
		}
		if strings.Contains(r.stdout, cliToken) {
			t.Errorf("show b1 shows the token: it must not be stored with the message:\n%s", r)
		}

		d := decode[cliDetail](t, m.ok(t, "dl", "show", "a2", "-o", "json"))
		if d.ID != "a2" || d.Function != "alpha" || d.Reason != "max-retries" || d.Retries != 3 ||
			d.Body == nil || *d.Body != "third" || d.Header.Get("X-Trace") != "trace-a2" || d.Header.Get("Authorization") != "" {
			t.Errorf("show a2 -o json: %+v", d)
		}

		r = dl(t, m.environToken, "", "dl", "show", "zz9")
		if r.code != 1 || r.err == nil || !strings.Contains(r.err.Error(), "404") {
			t.Errorf("show of an unknown id: want exit 1 and an error naming 404:\n%s", r)
		}
	}) {
		return
	}

	if !t.Run("replay one", func(t *testing.T) {
		r := m.ok(t, "dl", "replay", "a1")
		if !regexp.MustCompile(`(?m)^a1\s+alpha\s+replayed\s+0\s+\S+$`).MatchString(r.stdout) {
			t.Errorf("replay a1: want a row saying it was replayed:\n%s", r)
		}
		poll.Until(t, 30*time.Second, "replayed a1 delivered to alpha", func() bool { return len(callsWithID(m.alpha, "a1")) > 0 })
		call := callsWithID(m.alpha, "a1")[0]
		if string(call.Body) != "first" || call.Header.Get("X-Trace") != "trace-a1" || call.Header.Get("Authorization") != "" {
			t.Errorf("replayed call: body %q, headers %v", call.Body, call.Header)
		}
		want := []string{"a3", "b2", "a2", "b1"}
		if got := tableIDs(t, m.ok(t, "dl", "list")); !slices.Equal(got, want) {
			t.Errorf("list after replay a1: %v, want %v", got, want)
		}
		// Again: the dead letter is gone, the API says it was replayed already.
		r = m.ok(t, "dl", "replay", "a1", "-o", "json")
		if !strings.Contains(r.stdout, `"repeated": true`) {
			t.Errorf("replay a1 again: want repeated:\n%s", r)
		}
	}) {
		return
	}

	if !t.Run("replay bulk", func(t *testing.T) {
		r := m.ok(t, "dl", "replay", "--function", "alpha", "--wait")
		if !regexp.MustCompile(`(?m)^Job \S+: replay finished, matched 2, done 2, skipped 0, failed 0$`).MatchString(r.stdout) {
			t.Errorf("replay --function alpha: want a finished job of 2:\n%s", r)
		}
		if !strings.Contains(r.stderr, "replay job ") || !strings.Contains(r.stderr, ": finished, 2 of 2 taken") {
			t.Errorf("replay --function alpha: want its progress on stderr:\n%s", r)
		}
		poll.Until(t, 30*time.Second, "a2 and a3 delivered to alpha", func() bool {
			return len(callsWithID(m.alpha, "a2")) > 0 && len(callsWithID(m.alpha, "a3")) > 0
		})
		if got := decode[cliList](t, m.ok(t, "dl", "list", "--function", "alpha", "-o", "json")); got.Total != 0 || len(got.Items) != 0 {
			t.Errorf("list --function alpha after the bulk replay: %+v, want none", got)
		}
		if n := m.beta.Len(); n != 0 {
			t.Errorf("beta called %d times: the bulk replay of alpha replayed it", n)
		}
	}) {
		return
	}

	if !t.Run("purge bulk", func(t *testing.T) {
		r := dl(t, m.environToken, "n\n", "dl", "purge", "--function", "beta")
		if r.code == 0 || r.err == nil || !strings.Contains(r.err.Error(), "aborted") {
			t.Errorf("purge answered n: want a non-zero exit, aborted:\n%s", r)
		}
		if !strings.Contains(r.stderr, "Purge 2 dead letters matching function=beta? [y/N]") {
			t.Errorf("purge: want the question on stderr:\n%s", r)
		}
		if got := tableIDs(t, m.ok(t, "dl", "list")); !slices.Equal(got, []string{"b2", "b1"}) {
			t.Errorf("list after a purge answered n: %v, want [b2 b1]", got)
		}
		// No answer at all (stdin at its end) purges nothing either.
		r = dl(t, m.environToken, "", "dl", "purge", "--function", "beta")
		if r.code == 0 || r.err == nil || !strings.Contains(r.err.Error(), "--yes") {
			t.Errorf("purge with nothing on stdin: want a non-zero exit naming --yes:\n%s", r)
		}

		r = m.ok(t, "dl", "purge", "--function", "beta", "--yes")
		if !regexp.MustCompile(`(?m)^Job \S+: purge finished, matched 2, done 2, skipped 0, failed 0$`).MatchString(r.stdout) {
			t.Errorf("purge --yes: want a finished job of 2:\n%s", r)
		}
		r = m.ok(t, "dl", "list")
		if got := tableIDs(t, r); len(got) != 0 || summaryLine(r) != "0 dead letters match." {
			t.Errorf("list after purge --yes: want nothing left:\n%s", r)
		}
		if n := m.beta.Len(); n != 0 {
			t.Errorf("beta called %d times: purged dead letters were delivered", n)
		}
	}) {
		return
	}

	t.Run("token", func(t *testing.T) {
		url := "mailbox_url=" + m.url
		for _, r := range []cliRun{
			dl(t, []string{url}, "", "dl", "list", "--token", "wrong-token"),
			dl(t, []string{url, "mailbox_token=wrong-token"}, "", "dl", "list"),
			dl(t, []string{url}, "", "dl", "purge", "--all-dead-letters", "--yes", "--token", "wrong-token"),
		} {
			if r.code != 1 || r.err == nil || !strings.Contains(r.err.Error(), "401") || r.stdout != "" {
				t.Errorf("wrong token: want exit 1 and an error naming 401:\n%s", r)
			}
		}
		r := dl(t, []string{url}, "", "dl", "list")
		if r.code != 1 || r.err == nil || !strings.Contains(r.err.Error(), "401") || !strings.Contains(r.err.Error(), "no token was given") {
			t.Errorf("no token: want exit 1, 401 and a hint:\n%s", r)
		}

		file := filepath.Join(m.dir, "cli-token")
		if err := os.WriteFile(file, []byte(cliToken+"\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		for _, tc := range []struct {
			env  []string
			args []string
		}{
			{[]string{url, "mailbox_token=" + cliToken}, nil},
			{[]string{url, "mailbox_token_file=" + file}, nil},
			{[]string{url}, []string{"--token-file", file}},
			{[]string{url, "mailbox_token=wrong-token"}, []string{"--token-file", file}}, // the flag first
			{[]string{url, "mailbox_token_file=" + file}, []string{"--token", cliToken}},
		} {
			r := dl(t, tc.env, "", append([]string{"dl", "list", "-o", "json"}, tc.args...)...)
			if r.code != 0 {
				t.Errorf("environment %q: want success:\n%s", tc.env[1:], r)
				continue
			}
			if l := decode[cliList](t, r); l.Total != 0 || l.Items == nil {
				t.Errorf("environment %q: %+v, want the empty list", tc.env[1:], l)
			}
		}
		r = dl(t, []string{url}, "", "dl", "list", "--token-file", file)
		if r.code != 0 || summaryLine(r) != "0 dead letters match." {
			t.Errorf("--token-file: want success:\n%s", r)
		}
	})
}
