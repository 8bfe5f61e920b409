package cli

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
	"unicode/utf8"
)

// fakeAPI serves the management API's contract (internal/api
// deadletters.go) from dead letters in memory, and records the requests
// it gets. Bulk jobs take one dead letter per GET of the job, so that a
// test sees them progress without waiting on time.
type fakeAPI struct {
	t     *testing.T
	token string

	mu       sync.Mutex
	letters  []*fakeLetter // oldest first
	gone     map[string]string
	jobs     map[string]*fakeJob
	requests []request
	// failIDs makes a job fail on these ids.
	failIDs map[string]bool
	// override, when set, answers instead of the API.
	override http.HandlerFunc
}

type fakeLetter struct {
	entry
	header http.Header
	body   []byte
	deaths []death
}

type fakeJob struct {
	job
	todo []*fakeLetter
}

// request is what the CLI sent.
type request struct {
	Method, Path, Query, Auth string
}

func (r request) String() string {
	s := r.Method + " " + r.Path
	if r.Query != "" {
		s += "?" + r.Query
	}
	return s
}

var t0 = time.Date(2026, 1, 2, 15, 0, 0, 0, time.UTC)

// sampleLetters are three dead letters: fn1 twice (one binary), fn2 once.
func sampleLetters() []*fakeLetter {
	return []*fakeLetter{
		{
			entry: entry{
				Seq: 1, ID: "a1", Function: "fn1", Reason: "max-retries", Retries: 5, LastStatus: 500,
				LastError: "boom", AcceptedAt: t0.Add(-2 * time.Hour), DeadAt: t0.Add(-90 * time.Minute),
			},
			header: http.Header{"Content-Type": {"text/plain"}, "X-Trace": {"t1"}},
			body:   []byte("hello\nworld"),
			deaths: []death{{Reason: "rejected", DeadAt: t0.Add(-3 * time.Hour), Retries: 0, LastStatus: 400, LastError: "bad\trequest"}},
		},
		{
			entry: entry{
				Seq: 2, ID: "b2", Function: "fn2", Reason: "rejected", LastStatus: 400,
				LastError: "no\x1b[31m", DeadAt: t0.Add(-60 * time.Minute),
			},
			body: []byte{0xff, 0x00, 0x01},
		},
		{
			entry: entry{
				Seq: 3, ID: "c3", Function: "fn1", Reason: "expired", Retries: 2,
				DeadAt: t0.Add(-30*time.Minute + 123*time.Millisecond),
			},
		},
	}
}

func newFakeAPI(t *testing.T) (*fakeAPI, *httptest.Server) {
	f := &fakeAPI{
		t: t, token: "secret", letters: sampleLetters(),
		gone: map[string]string{}, jobs: map[string]*fakeJob{}, failIDs: map[string]bool{},
	}
	for _, l := range f.letters {
		l.BodyBytes = len(l.body)
	}
	srv := httptest.NewServer(f)
	t.Cleanup(srv.Close)
	return f, srv
}

// sent returns the requests so far, and forgets them.
func (f *fakeAPI) sent() []request {
	f.mu.Lock()
	defer f.mu.Unlock()
	out := f.requests
	f.requests = nil
	return out
}

func (f *fakeAPI) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.requests = append(f.requests, request{r.Method, r.URL.EscapedPath(), r.URL.RawQuery, r.Header.Get("Authorization")})
	if f.override != nil {
		f.override(w, r)
		return
	}
	if r.Header.Get("Authorization") != "Bearer "+f.token {
		writeErr(w, http.StatusUnauthorized, "", "missing or wrong bearer token")
		return
	}
	path, q := r.URL.EscapedPath(), r.URL.Query()
	switch {
	case path == "/deadletters" && r.Method == http.MethodGet:
		f.list(w, q)
	case path == "/deadletters" && r.Method == http.MethodDelete:
		f.start(w, q, "purge")
	case path == "/deadletters/replay" && r.Method == http.MethodPost:
		f.start(w, q, "replay")
	case strings.HasPrefix(path, "/deadletters/jobs/") && r.Method == http.MethodGet:
		f.jobStep(w, strings.TrimPrefix(path, "/deadletters/jobs/"))
	case strings.HasPrefix(path, "/deadletters/"):
		id, action, _ := strings.Cut(strings.TrimPrefix(path, "/deadletters/"), "/")
		switch {
		case action == "" && r.Method == http.MethodGet:
			f.show(w, id)
		case action == "" && r.Method == http.MethodDelete:
			f.take(w, id, "purged", 0)
		case action == "replay" && r.Method == http.MethodPost:
			retries, _ := strconv.Atoi(q.Get("retries"))
			f.take(w, id, "replayed", retries)
		default:
			writeErr(w, http.StatusMethodNotAllowed, "", "method not allowed")
		}
	default:
		writeErr(w, http.StatusNotFound, "", "not found")
	}
}

func writeErr(w http.ResponseWriter, code int, field, msg string) {
	writeJSONAnswer(w, code, map[string]string{"error": msg, "field": field})
}

func writeJSONAnswer(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(v)
}

func (f *fakeAPI) matching(q map[string][]string) []*fakeLetter {
	get := func(k string) string {
		if v := q[k]; len(v) > 0 {
			return v[0]
		}
		return ""
	}
	var out []*fakeLetter
	for _, l := range f.letters {
		if fn := get("function"); fn != "" && l.Function != fn {
			continue
		}
		if rs := get("reason"); rs != "" && l.Reason != rs {
			continue
		}
		if s := get("q"); s != "" && !strings.Contains(l.ID+l.Function+l.LastError, s) {
			continue
		}
		out = append(out, l)
	}
	return out
}

func (f *fakeAPI) list(w http.ResponseWriter, q map[string][]string) {
	limit := 50
	if v := q["limit"]; len(v) > 0 {
		limit, _ = strconv.Atoi(v[0])
	}
	var before uint64
	if v := q["cursor"]; len(v) > 0 {
		before, _ = strconv.ParseUint(v[0], 10, 64)
	}
	all := f.matching(q)
	items := []entry{}
	var next string
	for i := len(all) - 1; i >= 0; i-- {
		l := all[i]
		if before != 0 && l.Seq >= before {
			continue
		}
		if len(items) == limit {
			next = strconv.FormatUint(items[len(items)-1].Seq, 10)
			break
		}
		items = append(items, l.entry)
	}
	counts := map[[2]string]int{}
	for _, l := range f.letters {
		counts[[2]string{l.Function, l.Reason}]++
	}
	type countOut struct {
		Function string `json:"function"`
		Reason   string `json:"reason"`
		Count    int    `json:"count"`
	}
	cs := []countOut{}
	for k, n := range counts {
		cs = append(cs, countOut{k[0], k[1], n})
	}
	slices.SortFunc(cs, func(a, b countOut) int { return strings.Compare(a.Function+a.Reason, b.Function+b.Reason) })
	answer := map[string]any{"items": items, "total": len(all), "counts": cs}
	if next != "" {
		answer["next_cursor"] = next
	}
	writeJSONAnswer(w, http.StatusOK, answer)
}

func (f *fakeAPI) find(id string) (int, *fakeLetter) {
	for i, l := range f.letters {
		if l.ID == id {
			return i, l
		}
	}
	return -1, nil
}

func (f *fakeAPI) show(w http.ResponseWriter, id string) {
	_, l := f.find(id)
	if l == nil {
		writeErr(w, http.StatusNotFound, "id", "deadletter: not found: "+id)
		return
	}
	b, _ := json.Marshal(l.entry)
	var answer map[string]any
	_ = json.Unmarshal(b, &answer)
	answer["header"] = l.header
	answer["policy"] = map[string]any{"max_retries": 5, "delay": int64(10 * time.Second), "backoff": "exponential"}
	answer["first_attempt_at"] = l.AcceptedAt
	answer["deaths"] = l.deaths
	if utf8.Valid(l.body) {
		answer["body"] = string(l.body)
	} else {
		answer["body_base64"] = base64.StdEncoding.EncodeToString(l.body)
	}
	writeJSONAnswer(w, http.StatusOK, answer)
}

// take replays or purges one dead letter, as the API does.
func (f *fakeAPI) take(w http.ResponseWriter, id, status string, retries int) {
	i, l := f.find(id)
	if l == nil {
		if f.gone[id] == status {
			writeJSONAnswer(w, http.StatusOK, outcomeAnswer(outcome{ID: id, Status: status, Repeated: true}))
			return
		}
		writeErr(w, http.StatusNotFound, "id", "deadletter: not found: "+id)
		return
	}
	f.letters = slices.Delete(f.letters, i, i+1)
	f.gone[id] = status
	out := outcome{ID: id, Function: l.Function, Status: status}
	code := http.StatusOK
	if status == "replayed" {
		out.Retries, out.DueAt, code = retries, t0, http.StatusAccepted
	}
	writeJSONAnswer(w, code, outcomeAnswer(out))
}

func outcomeAnswer(o outcome) map[string]any {
	m := map[string]any{"id": o.ID, "status": o.Status, "retries": o.Retries}
	if o.Function != "" {
		m["function"] = o.Function
	}
	if o.Repeated {
		m["repeated"] = true
	}
	if !o.DueAt.IsZero() {
		m["due_at"] = o.DueAt
	}
	return m
}

func (f *fakeAPI) start(w http.ResponseWriter, q map[string][]string, action string) {
	filtered := false
	for _, k := range []string{"function", "reason", "since", "until", "q"} {
		filtered = filtered || len(q[k]) > 0
	}
	if action == "purge" && !filtered && (len(q["all"]) == 0 || q["all"][0] != "true") {
		writeErr(w, http.StatusBadRequest, "all", "a purge without function, reason, since, until or q removes every dead letter: add all=true to mean it")
		return
	}
	retries := 0
	if v := q["retries"]; len(v) > 0 {
		retries, _ = strconv.Atoi(v[0])
	}
	todo := f.matching(q)
	j := &fakeJob{
		job: job{
			ID: fmt.Sprintf("job%d", len(f.jobs)+1), Action: action, Retries: retries,
			State: jobRunning, Matched: len(todo), StartedAt: t0,
		},
		todo: todo,
	}
	f.jobs[j.ID] = j
	w.Header().Set("Location", "/deadletters/jobs/"+j.ID)
	writeJSONAnswer(w, http.StatusAccepted, jobAnswer(j.job))
}

// jobStep takes one dead letter of the job, then answers it.
func (f *fakeAPI) jobStep(w http.ResponseWriter, id string) {
	j := f.jobs[id]
	if j == nil {
		writeErr(w, http.StatusNotFound, "job", "no job "+id)
		return
	}
	if len(j.todo) > 0 {
		l := j.todo[0]
		j.todo = j.todo[1:]
		i, _ := f.find(l.ID)
		switch {
		case f.failIDs[l.ID]:
			j.Failed++
			j.Errors = append(j.Errors, "broker said no to "+l.ID)
		case i < 0:
			j.Skipped++
		default:
			f.letters = slices.Delete(f.letters, i, i+1)
			j.Done++
		}
	}
	if len(j.todo) == 0 && j.State == jobRunning {
		j.State, j.FinishedAt = "finished", t0.Add(time.Second)
	}
	writeJSONAnswer(w, http.StatusOK, jobAnswer(j.job))
}

func jobAnswer(j job) map[string]any {
	m := map[string]any{
		"id": j.ID, "action": j.Action, "state": j.State, "matched": j.Matched,
		"done": j.Done, "skipped": j.Skipped, "failed": j.Failed,
		"started_at": j.StartedAt, "location": "/deadletters/jobs/" + j.ID,
	}
	if j.Retries != 0 {
		m["retries"] = j.Retries
	}
	if len(j.Errors) > 0 {
		m["errors"] = j.Errors
	}
	if !j.FinishedAt.IsZero() {
		m["finished_at"] = j.FinishedAt
	}
	return m
}

// result is one run of the CLI.
type result struct {
	stdout, stderr string
	err            error
}

// runCLI runs the CLI with args against srv (mailbox_url and
// mailbox_token in the environment), stdin as its input.
func runCLI(t *testing.T, srv *httptest.Server, stdin string, args ...string) result {
	t.Helper()
	return runEnv(t, []string{"mailbox_url=" + srv.URL, "mailbox_token=secret"}, stdin, args...)
}

func runEnv(t *testing.T, environ []string, stdin string, args ...string) result {
	t.Helper()
	var stdout, stderr bytes.Buffer
	c := &command{
		stdin: strings.NewReader(stdin), stdout: &stdout, stderr: &stderr,
		env: environLookup(environ), now: func() time.Time { return t0 },
		poll: time.Millisecond, maxPoll: time.Millisecond,
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	err := c.run(ctx, args)
	return result{stdout.String(), stderr.String(), err}
}
