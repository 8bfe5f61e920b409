package service_test

// End-to-end tests of the dead-letter management API on each backend.

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/openfaas/mailbox/internal/metricstest"
	"github.com/openfaas/mailbox/internal/poll"
)

// apiToken is the token setup writes to the secret auth_token_secret
// names.
const apiToken = "test-token-5f2c"

type entry struct {
	Seq        uint64 `json:"seq"`
	ID         string `json:"id"`
	Function   string `json:"function"`
	Reason     string `json:"reason"`
	Retries    int    `json:"retries"`
	Replays    int    `json:"replays"`
	DeadAt     string `json:"dead_at"`
	BodyBytes  int    `json:"body_bytes"`
	LastStatus int    `json:"last_status"`
}

type count struct {
	Function string `json:"function"`
	Reason   string `json:"reason"`
	Count    int    `json:"count"`
}

type list struct {
	Items      []entry `json:"items"`
	NextCursor string  `json:"next_cursor"`
	Total      int     `json:"total"`
	Counts     []count `json:"counts"`
	Error      string  `json:"error"`
	Field      string  `json:"field"`
}

type detail struct {
	entry
	Header     http.Header `json:"header"`
	Body       *string     `json:"body"`
	BodyBase64 *string     `json:"body_base64"`
	Deaths     []struct {
		Reason  string `json:"reason"`
		Retries int    `json:"retries"`
	} `json:"deaths"`
	Error string `json:"error"`
}

type outcome struct {
	ID       string `json:"id"`
	Function string `json:"function"`
	Status   string `json:"status"`
	Repeated bool   `json:"repeated"`
	Retries  int    `json:"retries"`
	Error    string `json:"error"`
	Field    string `json:"field"`
}

type job struct {
	ID       string   `json:"id"`
	Action   string   `json:"action"`
	State    string   `json:"state"`
	Matched  int      `json:"matched"`
	Done     int      `json:"done"`
	Skipped  int      `json:"skipped"`
	Failed   int      `json:"failed"`
	Errors   []string `json:"errors"`
	Location string   `json:"location"`
	Error    string   `json:"error"`
	Field    string   `json:"field"`
}

// call sends method path to the API with the token and decodes the JSON
// answer into out.
func (b *bundle) call(t *testing.T, method, path string, out any) int {
	t.Helper()
	req, err := http.NewRequest(method, b.api.URL+path, nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+apiToken)
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	data, _ := io.ReadAll(res.Body)
	reflect.ValueOf(out).Elem().SetZero() // no field left from an earlier answer
	if err := json.Unmarshal(data, out); err != nil {
		t.Fatalf("%s %s answered %d, not JSON: %q", method, path, res.StatusCode, data)
	}
	return res.StatusCode
}

// bury stores a dead letter for fn straight away: requeued with its
// retries spent.
func (b *bundle) bury(t *testing.T, fn, id, body string) {
	t.Helper()
	code, a, _ := b.requeue(t, fn, []byte(body), "X-Mailbox-Message-Id", id, "X-Retries", "3", "X-Max-Retries", "2", "X-Trace", "trace-"+id)
	if code != http.StatusOK || a.Status != "dead-lettered" {
		t.Fatalf("requeue of %s answered %d %+v, want 200 dead-lettered", id, code, a)
	}
}

func (b *bundle) list(t *testing.T, query string) list {
	t.Helper()
	var l list
	if code := b.call(t, http.MethodGet, "/deadletters"+query, &l); code != http.StatusOK {
		t.Fatalf("GET /deadletters%s answered %d %+v", query, code, l)
	}
	return l
}

func listed(l list) []string {
	var out []string
	for _, e := range l.Items {
		out = append(out, e.ID)
	}
	return out
}

func (b *bundle) waitJob(t *testing.T, location string) job {
	t.Helper()
	var j job
	poll.Until(t, 30*time.Second, "job "+location+" finished", func() bool {
		if code := b.call(t, http.MethodGet, location, &j); code != http.StatusOK {
			t.Fatalf("GET %s answered %d %+v", location, code, j)
		}
		return j.State != "running"
	})
	return j
}

func TestDeadLettersListShowReplayAndPurge(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b *bundle) {
		b.bury(t, "alpha", "a1", "first")
		b.bury(t, "beta", "b1", "second")
		b.bury(t, "alpha", "a2", "third")

		all := b.list(t, "")
		if got := fmt.Sprint(listed(all)); got != "[a2 b1 a1]" || all.Total != 3 {
			t.Fatalf("list: %s (total %d), want [a2 b1 a1] newest first", got, all.Total)
		}
		wantCounts := []count{{"alpha", "max-retries", 2}, {"beta", "max-retries", 1}}
		if !slices.Equal(all.Counts, wantCounts) {
			t.Fatalf("counts %+v, want %+v", all.Counts, wantCounts)
		}
		first := b.list(t, "?limit=2")
		if fmt.Sprint(listed(first)) != "[a2 b1]" || first.NextCursor == "" {
			t.Fatalf("page 1: %v, cursor %q", listed(first), first.NextCursor)
		}
		second := b.list(t, "?limit=2&cursor="+first.NextCursor)
		if fmt.Sprint(listed(second)) != "[a1]" || second.NextCursor != "" {
			t.Fatalf("page 2: %v, cursor %q", listed(second), second.NextCursor)
		}
		if got := listed(b.list(t, "?function=alpha")); fmt.Sprint(got) != "[a2 a1]" {
			t.Fatalf("function=alpha: %v", got)
		}
		if got := b.list(t, "?reason=rejected"); got.Total != 0 || len(got.Items) != 0 {
			t.Fatalf("reason=rejected: %+v", got)
		}

		var d detail
		if code := b.call(t, http.MethodGet, "/deadletters/b1", &d); code != http.StatusOK {
			t.Fatalf("show b1: %d %+v", code, d)
		}
		if d.Body == nil || *d.Body != "second" || d.Header.Get("X-Trace") != "trace-b1" || d.Reason != "max-retries" || d.Retries != 3 || d.Function != "beta" {
			t.Fatalf("show b1: %+v", d)
		}

		rec := b.deploy("alpha", nil, nil)
		b.startConnector(t)
		var o outcome
		if code := b.call(t, http.MethodPost, "/deadletters/a1/replay", &o); code != http.StatusAccepted || o.Status != "replayed" || o.Repeated {
			t.Fatalf("replay a1: %d %+v", code, o)
		}
		poll.Until(t, 20*time.Second, "replayed a1 delivered", func() bool { return len(callsWith(rec, "a1")) > 0 })
		call := callsWith(rec, "a1")[0]
		if string(call.Body) != "first" || call.Header.Get("X-Trace") != "trace-a1" || call.Header.Get("X-Retries") != "0" {
			t.Fatalf("replayed call: body %q, headers %v", call.Body, call.Header)
		}
		b.waitStatus(t, "a1", "delivered after the replay", func(a statusAnswer) bool { return a.Status == "delivered" })
		// Repeating the replay after a timeout replays nothing more.
		if code := b.call(t, http.MethodPost, "/deadletters/a1/replay", &o); code != http.StatusOK || !o.Repeated {
			t.Fatalf("replay a1 again: %d %+v", code, o)
		}
		if got := listed(b.list(t, "")); fmt.Sprint(got) != "[a2 b1]" {
			t.Fatalf("after replaying a1: %v", got)
		}
		// a1 was replayed, not purged: a purge of it is not "repeated".
		if code := b.call(t, http.MethodDelete, "/deadletters/a1", &o); code != http.StatusNotFound || !strings.Contains(o.Error, "replayed") {
			t.Fatalf("purge of the replayed a1: %d %+v", code, o)
		}

		if code := b.call(t, http.MethodDelete, "/deadletters/b1", &o); code != http.StatusOK || o.Status != "purged" || o.Repeated {
			t.Fatalf("purge b1: %d %+v", code, o)
		}
		if code := b.call(t, http.MethodDelete, "/deadletters/b1", &o); code != http.StatusOK || !o.Repeated {
			t.Fatalf("purge b1 again: %d %+v", code, o)
		}
		if code := b.call(t, http.MethodGet, "/deadletters/b1", &d); code != http.StatusNotFound || d.Error == "" {
			t.Fatalf("show purged b1: %d %+v", code, d)
		}
		if code := b.call(t, http.MethodPost, "/deadletters/nobody/replay", &o); code != http.StatusNotFound || o.Field != "id" {
			t.Fatalf("replay unknown: %d %+v", code, o)
		}
		if got := b.list(t, ""); fmt.Sprint(listed(got)) != "[a2]" || !slices.Equal(got.Counts, []count{{"alpha", "max-retries", 1}}) {
			t.Fatalf("after purging b1: %v %+v", listed(got), got.Counts)
		}
		if n := len(callsWith(rec, "a1")); n != 1 {
			t.Fatalf("a1 delivered %d times, want once", n)
		}
	})
}

func TestReplayedMessageThatFailsAgainKeepsItsHistory(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b *bundle) {
		b.deploy("broken", always(http.StatusInternalServerError), nil)
		b.bury(t, "broken", "m1", "x")
		b.startConnector(t)
		var o outcome
		// Replayed with one attempt left of its two (X-Max-Retries 2).
		if code := b.call(t, http.MethodPost, "/deadletters/m1/replay?retries=2", &o); code != http.StatusAccepted || o.Retries != 2 {
			t.Fatalf("replay: %d %+v", code, o)
		}
		var d detail
		poll.Until(t, 20*time.Second, "m1 dead again", func() bool {
			return b.call(t, http.MethodGet, "/deadletters/m1", &d) == http.StatusOK && d.Replays == 1
		})
		if d.Retries != 2 || d.LastStatus != http.StatusInternalServerError || len(d.Deaths) != 1 || d.Deaths[0].Retries != 3 {
			t.Fatalf("dead again: %+v", d)
		}
	})
}

func TestBulkReplayAndPurge(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b *bundle) {
		const n = 12
		for i := range n {
			b.bury(t, "gamma", fmt.Sprintf("g%d", i), fmt.Sprint(i))
		}
		b.bury(t, "delta", "d1", "x")
		b.bury(t, "delta", "d2", "x")
		rec := b.deploy("gamma", nil, nil)
		b.startConnector(t)

		var j job
		if code := b.call(t, http.MethodPost, "/deadletters/replay?function=gamma", &j); code != http.StatusAccepted || j.Matched != n || j.Location == "" {
			t.Fatalf("bulk replay: %d %+v", code, j)
		}
		if j = b.waitJob(t, j.Location); j.State != "finished" || j.Done != n || j.Failed != 0 {
			t.Fatalf("bulk replay ended %+v", j)
		}
		poll.Until(t, 30*time.Second, "every replayed message delivered", func() bool {
			for i := range n {
				if len(callsWith(rec, fmt.Sprintf("g%d", i))) == 0 {
					return false
				}
			}
			return true
		})

		if code := b.call(t, http.MethodDelete, "/deadletters", &j); code != http.StatusBadRequest || j.Field != "all" {
			t.Fatalf("purge without a filter: %d %+v", code, j)
		}
		if code := b.call(t, http.MethodDelete, "/deadletters?function=delta", &j); code != http.StatusAccepted || j.Matched != 2 {
			t.Fatalf("bulk purge: %d %+v", code, j)
		}
		if j = b.waitJob(t, j.Location); j.Done != 2 {
			t.Fatalf("bulk purge ended %+v", j)
		}
		if l := b.list(t, ""); l.Total != 0 {
			t.Fatalf("left after replay and purge: %v", listed(l))
		}
		removed := func(cause string) float64 {
			return metricstest.Sum(t, b.apiReg, "mailbox_dead_letters_removed_total", "cause", cause)
		}
		if removed("replayed") != n || removed("purged") != 2 {
			t.Fatalf("removed_total: replayed %v, purged %v", removed("replayed"), removed("purged"))
		}
	})
}

func TestOneBulkJobAtATime(t *testing.T) {
	forEachBackendWith(t, map[string]string{"replay_rate": "1/s"}, func(t *testing.T, b *bundle) {
		for i := range 3 {
			b.bury(t, "kappa", fmt.Sprintf("k%d", i), "x")
		}
		var first, second job
		if code := b.call(t, http.MethodPost, "/deadletters/replay?function=kappa", &first); code != http.StatusAccepted {
			t.Fatalf("first bulk replay: %d %+v", code, first)
		}
		// At one a second, the first job runs for seconds.
		if code := b.call(t, http.MethodDelete, "/deadletters?function=kappa", &second); code != http.StatusConflict || !strings.Contains(second.Error, first.ID) {
			t.Fatalf("a second job while the first runs: %d %+v, want 409 naming %s", code, second, first.ID)
		}
		if j := b.waitJob(t, first.Location); j.Done != 3 {
			t.Fatalf("first job ended %+v", j)
		}
		if code := b.call(t, http.MethodDelete, "/deadletters?function=kappa", &second); code != http.StatusAccepted {
			t.Fatalf("a job after the first ended: %d %+v", code, second)
		}
	})
}

func TestDeadLetterLimitAndRetention(t *testing.T) {
	forEachBackendWith(t, map[string]string{"dead_letter_limit": "3", "dead_letter_max_age": "3s"}, func(t *testing.T, b *bundle) {
		for i := range 5 {
			b.bury(t, "epsilon", fmt.Sprintf("e%d", i), "x")
		}
		poll.Until(t, 20*time.Second, "the two oldest removed past the limit", func() bool {
			return fmt.Sprint(listed(b.list(t, ""))) == "[e4 e3 e2]"
		})
		poll.Until(t, 20*time.Second, "the limit counted", func() bool {
			return metricstest.Sum(t, b.apiReg, "mailbox_dead_letters_removed_total", "cause", "limit", "function", "epsilon") == 2
		})
		poll.Until(t, 20*time.Second, "the rest removed past retention", func() bool {
			return b.list(t, "").Total == 0
		})
		poll.Until(t, 20*time.Second, "retention counted", func() bool {
			return metricstest.Sum(t, b.apiReg, "mailbox_dead_letters_removed_total", "cause", "expired") == 3
		})
		if kept := metricstest.Sum(t, b.apiReg, "mailbox_dead_letters_kept"); kept != 0 {
			t.Fatalf("mailbox_dead_letters_kept = %v after all were removed", kept)
		}
	})
}

func TestManagementRefusals(t *testing.T) {
	forEachBackendWith(t, map[string]string{"allow_functions": "allowed"}, func(t *testing.T, b *bundle) {
		var l list
		for _, c := range []struct {
			method, path, field string
			code                int
		}{
			{http.MethodGet, "/deadletters?limit=0", "limit", http.StatusBadRequest},
			{http.MethodGet, "/deadletters?limit=501", "limit", http.StatusBadRequest},
			{http.MethodGet, "/deadletters?cursor=abc", "cursor", http.StatusBadRequest},
			{http.MethodGet, "/deadletters?since=yesterday", "since", http.StatusBadRequest},
			{http.MethodGet, "/deadletters?reason=bored", "reason", http.StatusBadRequest},
			{http.MethodGet, "/deadletters?function=Not_A_Name", "function", http.StatusBadRequest},
			{http.MethodGet, "/deadletters/bad%20id", "id", http.StatusBadRequest},
			{http.MethodPost, "/deadletters/x/replay?retries=-1", "retries", http.StatusBadRequest},
			{http.MethodGet, "/deadletters/jobs/nope", "job", http.StatusNotFound},
			{http.MethodPut, "/deadletters", "", http.StatusMethodNotAllowed},
		} {
			l = list{}
			if code := b.call(t, c.method, c.path, &l); code != c.code || l.Field != c.field || l.Error == "" {
				t.Errorf("%s %s answered %d %+v, want %d naming %q", c.method, c.path, code, l, c.code, c.field)
			}
		}

		// A dead letter for a function outside allow_functions is kept,
		// but not replayed.
		code, a, _ := b.requeue(t, "other", []byte("x"), "X-Mailbox-Message-Id", "o1", "X-Retries", "3", "X-Max-Retries", "2")
		if code != http.StatusForbidden {
			t.Fatalf("requeue to a function not allowed answered %d %+v", code, a)
		}
		b.bury(t, "allowed", "ok1", "x")
		var o outcome
		if code := b.call(t, http.MethodPost, "/deadletters/ok1/replay", &o); code != http.StatusAccepted {
			t.Fatalf("replay to an allowed function: %d %+v", code, o)
		}

		// Without the token: 401, counted.
		for _, path := range []string{"/deadletters", "/deadletters/ok1", "/messages/ok1"} {
			res, err := http.Get(b.api.URL + path)
			if err != nil {
				t.Fatal(err)
			}
			body, _ := io.ReadAll(res.Body)
			res.Body.Close()
			if res.StatusCode != http.StatusUnauthorized || !strings.Contains(string(body), `"error"`) {
				t.Errorf("GET %s without a token answered %d %s", path, res.StatusCode, body)
			}
		}
		// The empty body's signature, sha256=HMAC(token, ""), once opened
		// every management and page request; now a signature is for one
		// requeue only.
		m := hmac.New(sha256.New, []byte(apiToken))
		emptyBody := "sha256=" + hex.EncodeToString(m.Sum(nil))
		noRedirects := &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
		for _, path := range []string{"/deadletters", "/deadletters/ok1", "/messages/ok1", "/ui/"} {
			req, _ := http.NewRequest(http.MethodGet, b.api.URL+path, nil)
			req.Header.Set("X-Mailbox-Signature", emptyBody)
			res, err := noRedirects.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			res.Body.Close()
			want := http.StatusUnauthorized
			if path == "/ui/" {
				want = http.StatusSeeOther // to the sign-in form
			}
			if res.StatusCode != want {
				t.Errorf("GET %s with the empty body's signature answered %d, want %d", path, res.StatusCode, want)
			}
		}
		if n := metricstest.Sum(t, b.apiReg, "mailbox_unauthorized_total"); n != 7 {
			t.Errorf("mailbox_unauthorized_total = %v, want 7", n)
		}

		// NATS down: 503, retry later.
		b.nats.Stop()
		for _, c := range []struct{ method, path string }{
			{http.MethodGet, "/deadletters"},
			{http.MethodPost, "/deadletters/ok1/replay"},
			{http.MethodDelete, "/deadletters/ok1"},
		} {
			poll.Until(t, 20*time.Second, c.method+" "+c.path+" answered 503 while NATS is down", func() bool {
				l = list{}
				return b.call(t, c.method, c.path, &l) == http.StatusServiceUnavailable && l.Error != ""
			})
		}
	})
}
