package cli

import (
	"encoding/json"
	"errors"
	"flag"
	"net/http"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

// wantRequests fails unless the CLI sent exactly want ("GET
// /deadletters?limit=1"), each with the token.
func wantRequests(t *testing.T, f *fakeAPI, want ...string) {
	t.Helper()
	got := f.sent()
	var lines []string
	for _, r := range got {
		lines = append(lines, r.String())
		if r.Auth != "Bearer secret" {
			t.Errorf("%s sent Authorization %q, want %q", r, r.Auth, "Bearer secret")
		}
	}
	if !reflect.DeepEqual(lines, want) {
		t.Errorf("requests:\n%s\nwant:\n%s", strings.Join(lines, "\n"), strings.Join(want, "\n"))
	}
}

func wantOK(t *testing.T, r result) {
	t.Helper()
	if r.err != nil {
		t.Fatalf("err = %v, want none; stderr:\n%s", r.err, r.stderr)
	}
}

func wantText(t *testing.T, name, got, want string) {
	t.Helper()
	if got != want {
		t.Errorf("%s:\n%s\nwant:\n%s", name, got, want)
	}
}

func TestListTable(t *testing.T) {
	t.Parallel()
	f, srv := newFakeAPI(t)
	r := runCLI(t, srv, "", "list")
	wantOK(t, r)
	wantRequests(t, f, "GET /deadletters")
	// Control characters in what a dead letter carries are escaped;
	// times are UTC to the second.
	wantText(t, "stdout", r.stdout, `ID  FUNCTION  REASON       RETRIES  LAST STATUS  DEAD AT
c3  fn1       expired      2        -            2026-01-02T14:30:00Z
b2  fn2       rejected     0        400          2026-01-02T14:00:00Z
a1  fn1       max-retries  5        500          2026-01-02T13:30:00Z
3 dead letters match. All dead letters by function/reason: fn1/expired 1, fn1/max-retries 1, fn2/rejected 1.
`)
}

func TestListFilters(t *testing.T) {
	t.Parallel()
	f, srv := newFakeAPI(t)
	r := runCLI(t, srv, "", "list", "--function", "fn1", "--reason", "max-retries",
		"--since", "2h", "--until", "2026-01-02T14:00:00Z", "-q", "bo om", "--limit", "2", "--cursor", "9")
	wantOK(t, r)
	wantRequests(t, f, "GET /deadletters?cursor=9&function=fn1&limit=2&q=bo+om&reason=max-retries&since=2026-01-02T13%3A00%3A00Z&until=2026-01-02T14%3A00%3A00Z")
	wantText(t, "stdout", r.stdout, "ID  FUNCTION  REASON  RETRIES  LAST STATUS  DEAD AT\n0 dead letters match. All dead letters by function/reason: fn1/expired 1, fn1/max-retries 1, fn2/rejected 1.\n")
}

func TestListNextPageHint(t *testing.T) {
	t.Parallel()
	f, srv := newFakeAPI(t)
	r := runCLI(t, srv, "", "list", "--limit", "1", "--function", "fn1")
	wantOK(t, r)
	wantRequests(t, f, "GET /deadletters?function=fn1&limit=1")
	if !strings.Contains(r.stdout, "Showing 1 of 2 matching. More: --all, or --cursor 3.") {
		t.Errorf("stdout:\n%s\nwant a summary pointing to the next page", r.stdout)
	}
}

func TestListJSONPrintsTheAnswer(t *testing.T) {
	t.Parallel()
	f, srv := newFakeAPI(t)
	r := runCLI(t, srv, "", "list", "-o", "json", "--limit", "2")
	wantOK(t, r)
	wantRequests(t, f, "GET /deadletters?limit=2")
	var got map[string]any
	if err := json.Unmarshal([]byte(r.stdout), &got); err != nil {
		t.Fatalf("stdout is not JSON: %v\n%s", err, r.stdout)
	}
	items := got["items"].([]any)
	if len(items) != 2 || items[0].(map[string]any)["id"] != "c3" || got["next_cursor"] != "2" || got["total"] != 3.0 {
		t.Errorf("stdout = %s, want the API's page of c3, b2 with next_cursor 2 and total 3", r.stdout)
	}
	if len(got["counts"].([]any)) != 3 {
		t.Errorf("counts = %v, want 3", got["counts"])
	}
}

func TestListAllFollowsCursors(t *testing.T) {
	t.Parallel()
	f, srv := newFakeAPI(t)
	r := runCLI(t, srv, "", "list", "--all", "--limit", "1")
	wantOK(t, r)
	wantRequests(t, f, "GET /deadletters?limit=1", "GET /deadletters?cursor=3&limit=1", "GET /deadletters?cursor=2&limit=1")
	for _, id := range []string{"c3", "b2", "a1"} {
		if !strings.Contains(r.stdout, "\n"+id+" ") {
			t.Errorf("stdout lacks %s:\n%s", id, r.stdout)
		}
	}
	if !strings.Contains(r.stdout, "3 dead letters match.") || strings.Contains(r.stdout, "More:") {
		t.Errorf("stdout:\n%s\nwant every dead letter and no next page", r.stdout)
	}

	// JSON: one object with every item, no cursor. Without --limit, the
	// pages are as large as the API gives.
	r = runCLI(t, srv, "", "list", "--all", "-o", "json")
	wantOK(t, r)
	wantRequests(t, f, "GET /deadletters?limit=500")
	var got struct {
		Items      []entry         `json:"items"`
		NextCursor *string         `json:"next_cursor"`
		Total      int             `json:"total"`
		Counts     json.RawMessage `json:"counts"`
	}
	if err := json.Unmarshal([]byte(r.stdout), &got); err != nil {
		t.Fatal(err)
	}
	if len(got.Items) != 3 || got.NextCursor != nil || got.Total != 3 || len(got.Counts) == 0 {
		t.Errorf("stdout = %s, want 3 items, a total and counts, no next_cursor", r.stdout)
	}

	r = runCLI(t, srv, "", "list", "--all", "--limit", "2", "-o", "json")
	wantOK(t, r)
	wantRequests(t, f, "GET /deadletters?limit=2", "GET /deadletters?cursor=2&limit=2")
	if err := json.Unmarshal([]byte(r.stdout), &got); err != nil || len(got.Items) != 3 || got.Items[2].ID != "a1" {
		t.Errorf("stdout = %s (%v), want the 3 items of both pages in order", r.stdout, err)
	}
}

func TestShowText(t *testing.T) {
	t.Parallel()
	f, srv := newFakeAPI(t)
	r := runCLI(t, srv, "", "show", "a1")
	wantOK(t, r)
	wantRequests(t, f, "GET /deadletters/a1")
	wantText(t, "stdout", r.stdout, `ID:                a1
Function:          fn1
Reason:            max-retries
Retries:           5
Last status:       500
Last error:        boom
Accepted at:       2026-01-02T13:00:00Z
First attempt at:  2026-01-02T13:00:00Z
Last attempt at:   -
Dead at:           2026-01-02T13:30:00Z
Policy:            max_retries 5, delay 10s, backoff exponential

Headers:
  Content-Type: text/plain
  X-Trace: t1

Body (11 bytes):
hello
world

Earlier deaths:
  DEAD AT               REASON    RETRIES  LAST STATUS  LAST ERROR
  2026-01-02T12:00:00Z  rejected  0        400          bad\trequest
`)
}

func TestShowBinaryBody(t *testing.T) {
	t.Parallel()
	f, srv := newFakeAPI(t)
	r := runCLI(t, srv, "", "show", "b2")
	wantOK(t, r)
	wantRequests(t, f, "GET /deadletters/b2")
	for _, want := range []string{"Last error:        no\\x1b[31m\n", "Body: binary, 3 bytes (-o json has it in body_base64)\n"} {
		if !strings.Contains(r.stdout, want) {
			t.Errorf("stdout:\n%s\nwant %q", r.stdout, want)
		}
	}
	if strings.Contains(r.stdout, "\x1b") {
		t.Errorf("stdout has a raw escape character:\n%q", r.stdout)
	}

	r = runCLI(t, srv, "", "show", "c3")
	wantOK(t, r)
	if !strings.Contains(r.stdout, "Body: empty\n") {
		t.Errorf("stdout:\n%s\nwant an empty body", r.stdout)
	}
}

func TestShowJSON(t *testing.T) {
	t.Parallel()
	_, srv := newFakeAPI(t)
	r := runCLI(t, srv, "", "show", "b2", "-o", "json")
	wantOK(t, r)
	var got map[string]any
	if err := json.Unmarshal([]byte(r.stdout), &got); err != nil {
		t.Fatal(err)
	}
	if got["body_base64"] != "/wAB" || got["id"] != "b2" {
		t.Errorf("stdout = %s, want the API's answer with body_base64", r.stdout)
	}
}

func TestShowWantsOneID(t *testing.T) {
	t.Parallel()
	f, srv := newFakeAPI(t)
	for _, args := range [][]string{{"show"}, {"show", "a1", "b2"}} {
		r := runCLI(t, srv, "", args...)
		if _, ok := errors.AsType[*UsageError](r.err); !ok {
			t.Errorf("%q: err = %v, want a usage error", args, r.err)
		}
	}
	wantRequests(t, f)
}

func TestReplayOne(t *testing.T) {
	t.Parallel()
	f, srv := newFakeAPI(t)
	r := runCLI(t, srv, "", "replay", "a1", "--retries", "2")
	wantOK(t, r)
	wantRequests(t, f, "POST /deadletters/a1/replay?retries=2")
	wantText(t, "stdout", r.stdout, `ID  FUNCTION  STATUS    RETRIES  DUE AT
a1  fn1       replayed  2        2026-01-02T15:00:00Z
`)

	// Repeated: the API answers 200 with repeated.
	r = runCLI(t, srv, "", "replay", "a1")
	wantOK(t, r)
	wantRequests(t, f, "POST /deadletters/a1/replay")
	wantText(t, "stdout", r.stdout, `ID  FUNCTION  STATUS              RETRIES  DUE AT
a1  -         replayed (already)  0        -
`)
}

func TestReplaySeveralOneMissing(t *testing.T) {
	t.Parallel()
	f, srv := newFakeAPI(t)
	r := runCLI(t, srv, "", "replay", "a1", "nope", "c3", "-o", "json")
	wantRequests(t, f, "POST /deadletters/a1/replay", "POST /deadletters/nope/replay", "POST /deadletters/c3/replay")
	if r.err == nil || r.err.Error() != "1 of 3 replays failed" {
		t.Errorf("err = %v, want 1 of 3 replays failed", r.err)
	}
	wantText(t, "stderr", r.stderr, "mailbox: nope: 404 Not Found: deadletter: not found: nope (field id)\n")
	var got []outcome
	if err := json.Unmarshal([]byte(r.stdout), &got); err != nil || len(got) != 2 || got[0].ID != "a1" || got[1].ID != "c3" {
		t.Errorf("stdout = %s (%v), want a JSON array of the two outcomes", r.stdout, err)
	}
}

func TestReplayBulkWaits(t *testing.T) {
	t.Parallel()
	f, srv := newFakeAPI(t)
	r := runCLI(t, srv, "", "replay", "--function", "fn1", "--retries", "3")
	wantOK(t, r)
	wantRequests(t, f, "POST /deadletters/replay?function=fn1&retries=3",
		"GET /deadletters/jobs/job1", "GET /deadletters/jobs/job1")
	wantText(t, "stderr", r.stderr, `replay job job1: running, 0 of 2 taken (done 0, skipped 0, failed 0)
replay job job1: running, 1 of 2 taken (done 1, skipped 0, failed 0)
replay job job1: finished, 2 of 2 taken (done 2, skipped 0, failed 0)
`)
	wantText(t, "stdout", r.stdout, `Job job1: replay finished, matched 2, done 2, skipped 0, failed 0
Started at 2026-01-02T15:00:00Z, finished at 2026-01-02T15:00:01Z
`)
}

func TestReplayBulkFailures(t *testing.T) {
	t.Parallel()
	f, srv := newFakeAPI(t)
	f.failIDs["b2"] = true
	r := runCLI(t, srv, "", "replay", "--all-dead-letters", "-o", "json")
	wantRequests(t, f, "POST /deadletters/replay",
		"GET /deadletters/jobs/job1", "GET /deadletters/jobs/job1", "GET /deadletters/jobs/job1")
	if r.err == nil || r.err.Error() != "replay job job1: 1 of 3 failed" {
		t.Errorf("err = %v, want replay job job1: 1 of 3 failed", r.err)
	}
	var got job
	if err := json.Unmarshal([]byte(r.stdout), &got); err != nil || got.State != "finished" || got.Failed != 1 || len(got.Errors) != 1 {
		t.Errorf("stdout = %s (%v), want the finished job as JSON", r.stdout, err)
	}
}

func TestReplayBulkNoWait(t *testing.T) {
	t.Parallel()
	f, srv := newFakeAPI(t)
	r := runCLI(t, srv, "", "replay", "--reason", "expired", "--wait=false")
	wantOK(t, r)
	wantRequests(t, f, "POST /deadletters/replay?reason=expired")
	wantText(t, "stdout", r.stdout, `Job job1: replay running, matched 1, done 0, skipped 0, failed 0
Started at 2026-01-02T15:00:00Z
Follow it at `+srv.URL+`/deadletters/jobs/job1
`)
	if r.stderr != "" {
		t.Errorf("stderr = %q, want nothing without --wait", r.stderr)
	}
}

func TestPurgeIDs(t *testing.T) {
	t.Parallel()
	f, srv := newFakeAPI(t)
	r := runCLI(t, srv, "", "purge", "a1", "b2")
	wantOK(t, r)
	wantRequests(t, f, "DELETE /deadletters/a1", "DELETE /deadletters/b2")
	wantText(t, "stdout", r.stdout, "ID  FUNCTION  STATUS\na1  fn1       purged\nb2  fn2       purged\n")
}

func TestPurgeConfirmation(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name, stdin string
		args        []string
		wantErr     string
		want        []string
		prompt      string
	}{
		{
			name: "yes", stdin: "y\n", args: []string{"--function", "fn1"},
			want:   []string{"GET /deadletters?function=fn1&limit=1", "DELETE /deadletters?function=fn1", "GET /deadletters/jobs/job1", "GET /deadletters/jobs/job1"},
			prompt: "Purge 2 dead letters matching function=fn1? [y/N] ",
		},
		{
			name: "yes without newline", stdin: "YES", args: []string{"--all-dead-letters", "--wait=false"},
			want:   []string{"GET /deadletters?limit=1", "DELETE /deadletters?all=true"},
			prompt: "Purge all 3 dead letters? [y/N] ",
		},
		{
			name: "no", stdin: "n\n", args: []string{"--function", "fn1", "--reason", "expired"},
			want:    []string{"GET /deadletters?function=fn1&limit=1&reason=expired"},
			prompt:  "Purge 1 dead letter matching function=fn1 reason=expired? [y/N] ",
			wantErr: "purge aborted: nothing deleted",
		},
		{
			name: "enter", stdin: "\n", args: []string{"-q", "b"},
			want:    []string{"GET /deadletters?limit=1&q=b"},
			prompt:  "Purge 2 dead letters matching q=b? [y/N] ",
			wantErr: "purge aborted: nothing deleted",
		},
		{
			name: "end of input", stdin: "", args: []string{"--all-dead-letters"},
			want:    []string{"GET /deadletters?limit=1"},
			prompt:  "Purge all 3 dead letters? [y/N] \n",
			wantErr: "purge aborted: nothing deleted (no answer on stdin; --yes purges without asking)",
		},
		{
			name: "--yes", stdin: "", args: []string{"--yes", "--function", "fn2", "--wait=false"},
			want: []string{"DELETE /deadletters?function=fn2"},
		},
		{
			name: "none match", stdin: "", args: []string{"--function", "fn9"},
			want:   []string{"GET /deadletters?function=fn9&limit=1"},
			prompt: "No dead letters match function=fn9: nothing to purge.\n",
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			f, srv := newFakeAPI(t)
			r := runCLI(t, srv, tc.stdin, append([]string{"purge"}, tc.args...)...)
			wantRequests(t, f, tc.want...)
			if tc.wantErr == "" {
				wantOK(t, r)
			} else if r.err == nil || r.err.Error() != tc.wantErr {
				t.Errorf("err = %v, want %q", r.err, tc.wantErr)
			}
			if !strings.HasPrefix(r.stderr, tc.prompt) {
				t.Errorf("stderr = %q, want it to start with %q", r.stderr, tc.prompt)
			}
			if tc.wantErr != "" && len(f.letters) != 3 {
				t.Errorf("%d dead letters left, want all 3", len(f.letters))
			}
		})
	}
}

func TestBadCommandLines(t *testing.T) {
	t.Parallel()
	f, srv := newFakeAPI(t)
	for _, tc := range []struct {
		args []string
		want string
	}{
		{nil, "missing command"},
		{[]string{"frob"}, `unknown command "frob"`},
		{[]string{"list", "--bogus"}, "flag provided but not defined: -bogus"},
		{[]string{"list", "x"}, "list takes no arguments"},
		{[]string{"list", "--limit", "501"}, "--limit 501: want 1 to 500"},
		{[]string{"list", "--since", "yesterday"}, `--since "yesterday": want an RFC 3339 time`},
		{[]string{"list", "-o", "yaml"}, `-o "yaml": want table or json`},
		{[]string{"--timeout", "0s", "list"}, `--timeout "0s": want a duration above 0`},
		{[]string{"list", "--url", "ftp://x"}, `--url "ftp://x": want an http or https URL`},
		{[]string{"replay"}, "replay needs ids, a filter"},
		{[]string{"replay", "a1", "--function", "fn1"}, "replay takes ids or filters"},
		{[]string{"replay", "a1", "--retries", "-1"}, `--retries "-1": want a whole number from 0 to 10000`},
		{[]string{"purge"}, "purge needs ids, a filter"},
		{[]string{"purge", "--all-dead-letters", "--function", "fn1"}, "--all-dead-letters takes every dead letter"},
		{[]string{"list", "--token", "a", "--token-file", "f"}, "give --token or --token-file, not both"},
		{[]string{"list", "--token", "a b"}, "the token of --token has spaces"},
	} {
		r := runCLI(t, srv, "", tc.args...)
		if _, ok := errors.AsType[*UsageError](r.err); !ok || !strings.Contains(r.err.Error(), tc.want) {
			t.Errorf("%q: err = %v, want a usage error with %q", tc.args, r.err, tc.want)
		}
	}
	wantRequests(t, f)

	r := runEnv(t, []string{"mailbox_token=hunter2"}, "", "list", "-h")
	if !errors.Is(r.err, flag.ErrHelp) || !strings.Contains(r.stderr, "usage: mailbox deadletters list") {
		t.Errorf("list -h: err = %v, stderr %q, want ErrHelp and the usage", r.err, r.stderr)
	}
	if strings.Contains(r.stderr, "hunter2") {
		t.Errorf("the usage shows the token: %s", r.stderr)
	}
}

func TestGlobalFlagsBeforeOrAfterCommand(t *testing.T) {
	t.Parallel()
	f, srv := newFakeAPI(t)
	env := []string{"mailbox_url=http://127.0.0.1:1", "mailbox_token=wrong", "mailbox_output=json"}
	r := runEnv(t, env, "", "--url", srv.URL, "-o", "table", "show", "c3", "--token", "secret")
	wantOK(t, r)
	wantRequests(t, f, "GET /deadletters/c3")
	if !strings.HasPrefix(r.stdout, "ID:") {
		t.Errorf("stdout = %q, want a table", r.stdout)
	}
}

func TestAPIErrors(t *testing.T) {
	t.Parallel()
	f, srv := newFakeAPI(t)
	for _, tc := range []struct {
		name    string
		handler http.HandlerFunc
		want    string
	}{
		{"field", func(w http.ResponseWriter, r *http.Request) {
			writeErr(w, http.StatusBadRequest, "function", `function "A" is not a function name`)
		}, `400 Bad Request: function "A" is not a function name (field function)`},
		{"retry after", func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Retry-After", "5")
			writeErr(w, http.StatusServiceUnavailable, "", "queue unavailable, retry later")
		}, `503 Service Unavailable: queue unavailable, retry later (retry after 5)`},
		{"not JSON", func(w http.ResponseWriter, r *http.Request) {
			http.Error(w, "Cannot find service: mailbox.\n", http.StatusBadGateway)
		}, `502 Bad Gateway: Cannot find service: mailbox.`},
		{"not the API", func(w http.ResponseWriter, r *http.Request) {
			w.Write([]byte("<html>"))
		}, `answer is not the JSON expected`},
	} {
		f.mu.Lock()
		f.override = tc.handler
		f.mu.Unlock()
		r := runCLI(t, srv, "", "list")
		if r.err == nil || !strings.Contains(r.err.Error(), tc.want) {
			t.Errorf("%s: err = %v, want %q", tc.name, r.err, tc.want)
		}
		if _, ok := errors.AsType[*UsageError](r.err); ok {
			t.Errorf("%s: err = %v is a usage error", tc.name, r.err)
		}
	}

	// A 404 of one id is the API's error as it is.
	f.mu.Lock()
	f.override = nil
	f.mu.Unlock()
	r := runCLI(t, srv, "", "show", "zz")
	apiErr, ok := errors.AsType[*APIError](r.err)
	if !ok || apiErr.Error() != "404 Not Found: deadletter: not found: zz (field id)" || apiErr.StatusCode != 404 {
		t.Errorf("err = %v, want the API's 404", r.err)
	}

	// 401 without a token says so.
	r = runEnv(t, []string{"mailbox_url=" + srv.URL}, "", "list")
	if r.err == nil || r.err.Error() != "401 Unauthorized: missing or wrong bearer token: no token was given (--token, --token-file, mailbox_token or mailbox_token_file)" {
		t.Errorf("err = %v, want a 401 saying no token was given", r.err)
	}
}

func TestNetworkErrorNamesURL(t *testing.T) {
	t.Parallel()
	_, srv := newFakeAPI(t)
	url := srv.URL
	srv.Close()
	r := runEnv(t, []string{"mailbox_url=" + url + "/function/mailbox/"}, "", "list", "--function", "fn1")
	want := "GET " + url + "/function/mailbox/deadletters?function=fn1: "
	if r.err == nil || !strings.HasPrefix(r.err.Error(), want) {
		t.Errorf("err = %v, want it to start with %q", r.err, want)
	}
}

func TestTokenFromFile(t *testing.T) {
	t.Parallel()
	f, srv := newFakeAPI(t)
	dir := t.TempDir()
	file := filepath.Join(dir, "token")
	if err := os.WriteFile(file, []byte("  secret\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	empty := filepath.Join(dir, "empty")
	if err := os.WriteFile(empty, []byte("\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	url := "mailbox_url=" + srv.URL

	r := runEnv(t, []string{url}, "", "list", "--token-file", file)
	wantOK(t, r)
	r = runEnv(t, []string{url, "mailbox_token_file=" + file}, "", "list")
	wantOK(t, r)
	// A flag beats the environment.
	r = runEnv(t, []string{url, "mailbox_token=wrong"}, "", "list", "--token-file", file)
	wantOK(t, r)
	wantRequests(t, f, "GET /deadletters", "GET /deadletters", "GET /deadletters")

	for _, tc := range []struct {
		env  []string
		args []string
		want string
	}{
		{[]string{url, "mailbox_token=a", "mailbox_token_file=" + file}, nil, "mailbox_token and mailbox_token_file are both set"},
		{[]string{url}, []string{"--token-file", filepath.Join(dir, "missing")}, "--token-file: open "},
		{[]string{url, "mailbox_token_file=" + empty}, nil, "mailbox_token_file: token file " + empty + " is empty"},
	} {
		r := runEnv(t, tc.env, "", append([]string{"list"}, tc.args...)...)
		if r.err == nil || !strings.Contains(r.err.Error(), tc.want) {
			t.Errorf("%v %q: err = %v, want %q", tc.env, tc.args, r.err, tc.want)
		}
	}
	wantRequests(t, f)
}
