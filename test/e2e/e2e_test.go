// Package e2e runs the mailbox inside real OpenFaaS (package bed) and
// checks what users rely on, once per queue backend.
package e2e

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/openfaas/mailbox/internal/envelope"
	"github.com/openfaas/mailbox/internal/jsserver/jsservertest"
	"github.com/openfaas/mailbox/internal/poll"
	"github.com/openfaas/mailbox/internal/stanserver/stanservertest"
	"github.com/openfaas/mailbox/test/e2e/bed"
	"github.com/openfaas/mailbox/test/e2e/testfn"
)

// binaries are built once, before the tests move into the bed's network
// namespace.
var binaries bed.Binaries

func TestMain(m *testing.M) {
	flag.Parse()
	if testing.Short() {
		os.Exit(m.Run()) // every test skips, saying why
	}
	os.Exit(bed.Main(context.Background(), filepath.Join("..", ".."), func(b bed.Binaries) int {
		binaries = b
		return m.Run()
	}))
}

func TestStan(t *testing.T)      { run(t, bed.Stan) }
func TestJetStream(t *testing.T) { run(t, bed.JetStream) }

func run(t *testing.T, backend string) {
	if testing.Short() {
		t.Skip("-short: the bed builds and runs OpenFaaS, NATS and the mailbox, which takes minutes")
	}
	neverCached(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	b, err := bed.Start(ctx, bed.Config{Backend: backend, Bin: binaries, Dir: t.TempDir(), Log: t.Output()})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	// Each scenario names its messages after itself so that they are told
	// apart; the later ones stop and restart components.
	t.Run("RequeuesItselfUntilItSucceeds", func(t *testing.T) { testRequeuesItself(t, b) })
	t.Run("FailingEndsAsDeadLetter", func(t *testing.T) { testFailing(t, b) })
	t.Run("ConnectorRetriesFlaky", func(t *testing.T) { testFlaky(t, b) })
	t.Run("SlowDoesNotHoldOthers", func(t *testing.T) { testSlow(t, b) })
	t.Run("AsyncInvocationHandedToMailbox", func(t *testing.T) { testAsync(t, b) })
	t.Run("GatewayCredentialsFromSecrets", func(t *testing.T) { testCredentials(t, b) })
	t.Run("GatewayRestart", func(t *testing.T) { testGatewayRestart(t, b) })
	t.Run("NATSRestart", func(t *testing.T) { testNATSRestart(t, b) })
}

// neverCached keeps go test from caching a pass. go test reuses a result
// while the test binary, its flags, the environment variables the test
// read and the files under test/ it opened are unchanged; what this test
// really runs, the connector and the functions built by go build from the
// root module, is none of those. A test cannot set its own -count=1, and
// the environment go test compares is its own, so a variable the test
// reads cannot change per run either. But go test caches no run that
// opened a file modified less than two seconds before it looks: this
// file is dated a day ahead at every run.
func neverCached(t *testing.T) {
	const name = ".never-cached" // in .gitignore
	future := time.Now().Add(24 * time.Hour)
	if err := os.WriteFile(name, []byte("see neverCached in e2e_test.go\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Chtimes(name, future, future); err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(name)
	if err != nil {
		t.Fatal(err)
	}
	f.Close()
}

// requeue posts body to the mailbox through the gateway, for function,
// with headers, and returns the message id of the 202.
func requeue(t *testing.T, via, function, body string, headers map[string]string) string {
	t.Helper()
	id := tryRequeue(t, via, function, body, headers)
	if id == "" {
		t.Fatalf("requeue for %s failed", function)
	}
	return id
}

// tryRequeue is requeue that returns "" (and logs why) when the mailbox
// does not answer 202 scheduled.
func tryRequeue(t *testing.T, via, function, body string, headers map[string]string) string {
	t.Helper()
	req, err := http.NewRequest(http.MethodPost, via+"/function/mailbox/deadletter/"+function, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range headers {
		req.Header.Set(k, v)
	}
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Logf("requeue for %s: %v", function, err)
		return ""
	}
	defer res.Body.Close()
	b, _ := io.ReadAll(res.Body)
	var a struct{ ID, Status string }
	if res.StatusCode != http.StatusAccepted || json.Unmarshal(b, &a) != nil || a.Status != "scheduled" {
		t.Logf("requeue for %s answered %d %s, want 202 scheduled", function, res.StatusCode, b)
		return ""
	}
	return a.ID
}

// calls asks a test function, through the gateway, for the calls it
// answered for message id.
func calls(t *testing.T, function, id string) []testfn.Call {
	t.Helper()
	all, err := testfn.CallsOf(context.Background(), http.DefaultClient, bed.GatewayURL+"/function/"+function, id)
	if err != nil {
		t.Fatal(err)
	}
	return all[id]
}

func retriesOf(cs []testfn.Call) string {
	var r []string
	for _, c := range cs {
		r = append(r, fmt.Sprintf("%s:%d", c.Retries, c.Status))
	}
	return strings.Join(r, " ")
}

// deadLetter returns the stored dead letter with id, or nil.
func deadLetter(t *testing.T, b *bed.Bed, id string) *envelope.Envelope {
	t.Helper()
	var all []*envelope.Envelope
	if b.Backend() == bed.Stan {
		all = stanservertest.DeadLetters(t, bed.NATSStreamingURL, bed.Prefix)
	} else {
		all = jsservertest.DeadLetters(t, bed.JetStreamURL, bed.DeadLetterStream)
	}
	for _, e := range all {
		if e.ID == id {
			return e
		}
	}
	return nil
}

var quick = map[string]string{"X-Delay-Duration": "1", "X-Max-Retries": "5"}

func testRequeuesItself(t *testing.T, b *bed.Bed) {
	const body = "requeues-itself"
	b.API.SetLimit(2)
	// Called through the gateway, the example hits the API's limit and
	// requeues itself through /function/mailbox; the connector calls it
	// back through the gateway until the API takes the work.
	res, err := http.Post(bed.GatewayURL+"/function/"+bed.RateLimited, "text/plain", strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	answer, _ := io.ReadAll(res.Body)
	res.Body.Close()
	if res.StatusCode != http.StatusAccepted {
		t.Fatalf("first call answered %d %s, want 202 requeued", res.StatusCode, answer)
	}
	var first struct{ ID string }
	if err := json.Unmarshal(answer, &first); err != nil || first.ID == "" {
		t.Fatalf("first answer %s has no message id", answer)
	}
	poll.Until(t, 30*time.Second, "the API takes the work on the third call", func() bool { return b.API.Calls(body) == 3 })
	// The example logs each requeue with the X-Retries it sent: one more
	// than it was called with.
	if got := requeuedRetries(t, functionLogs(t, b, bed.RateLimited), first.ID); fmt.Sprint(got) != "[1 2]" {
		t.Fatalf("the example requeued message %s with X-Retries %v, want [1 2]", first.ID, got)
	}
}

// requeuedRetries lists the retries of the example's "rate limited:
// requeued" log lines for message id.
func requeuedRetries(t *testing.T, logs, id string) []int {
	t.Helper()
	var out []int
	for _, line := range strings.Split(logs, "\n") {
		i := strings.Index(line, "{")
		if i < 0 {
			continue
		}
		var rec struct {
			Msg     string
			ID      string
			Retries int
		}
		if json.Unmarshal([]byte(line[i:]), &rec) == nil && rec.Msg == "rate limited: requeued" && rec.ID == id {
			out = append(out, rec.Retries)
		}
	}
	return out
}

func testFailing(t *testing.T, b *bed.Bed) {
	id := requeue(t, bed.GatewayURL, bed.Failing, "failing", map[string]string{"X-Delay-Duration": "1", "X-Max-Retries": "2"})
	var dead *envelope.Envelope
	poll.Until(t, 30*time.Second, "the message is a dead letter", func() bool {
		dead = deadLetter(t, b, id)
		return dead != nil
	})
	// X-Retries 0 with X-Max-Retries 2: calls with 0, 1 and 2, then the
	// dead letter, stored after the last call.
	got := calls(t, bed.Failing, id)
	if retriesOf(got) != "0:500 1:500 2:500" {
		t.Fatalf("calls (X-Retries:status) %q, want \"0:500 1:500 2:500\"", retriesOf(got))
	}
	if dead.Reason != envelope.ReasonMaxRetries || dead.Retries != 2 || dead.LastStatus != http.StatusInternalServerError ||
		dead.Function != bed.Failing || string(dead.Body) != "failing" {
		t.Fatalf("dead letter %+v, want reason %s after X-Retries 2 with status 500", dead, envelope.ReasonMaxRetries)
	}
}

func testFlaky(t *testing.T, b *bed.Bed) {
	id := requeue(t, bed.GatewayURL, bed.Flaky, "flaky", quick)
	poll.Until(t, 30*time.Second, "flaky answers 200", func() bool { return len(calls(t, bed.Flaky, id)) == bed.FlakyFailures+1 })
	if got := retriesOf(calls(t, bed.Flaky, id)); got != "0:429 1:429 2:200" {
		t.Fatalf("calls (X-Retries:status) %q, want \"0:429 1:429 2:200\"", got)
	}
	if dead := deadLetter(t, b, id); dead != nil {
		t.Fatalf("delivered message also dead-lettered: %+v", dead)
	}
}

func testSlow(t *testing.T, b *bed.Bed) {
	slow := requeue(t, bed.GatewayURL, bed.Slow, "slow", quick)
	fast := requeue(t, bed.GatewayURL, bed.Flaky, "fast", quick)
	poll.Until(t, 30*time.Second, "both delivered", func() bool {
		return len(calls(t, bed.Slow, slow)) == 1 && len(calls(t, bed.Flaky, fast)) == bed.FlakyFailures+1
	})
	s, f := calls(t, bed.Slow, slow), calls(t, bed.Flaky, fast)
	if s[0].Status != http.StatusOK {
		t.Fatalf("slow answered %d, want 200", s[0].Status)
	}
	// Due together: the fast message's first call must not wait for the
	// slow one to answer.
	if !f[0].At.Before(s[0].At.Add(bed.SlowFor)) {
		t.Fatalf("fast message first called at %v, after the slow call (%v + %v) answered", f[0].At, s[0].At, bed.SlowFor)
	}
}

func testAsync(t *testing.T, b *bed.Bed) {
	const body = "async"
	b.API.SetLimit(1)
	// The queue-worker calls the example; the API refuses it, so it
	// requeues itself through the mailbox, which calls it again.
	res, err := http.Post(bed.GatewayURL+"/async-function/"+bed.RateLimited, "text/plain", strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	res.Body.Close()
	if res.StatusCode != http.StatusAccepted || res.Header.Get("X-Call-Id") == "" {
		t.Fatalf("/async-function answered %d (X-Call-Id %q), want 202 with a call id", res.StatusCode, res.Header.Get("X-Call-Id"))
	}
	poll.Until(t, 30*time.Second, "the API takes the work on the second call", func() bool { return b.API.Calls(body) == 2 })
}

func testCredentials(t *testing.T, b *bed.Bed) {
	// The connector asks the gateway's /system API, which wants basic
	// auth, with the credentials in the secrets folder. With them, the
	// lookup succeeds; with a wrong password the gateway refuses it.
	if err := b.Stop(bed.Connector, false); err != nil {
		t.Fatal(err)
	}
	good := b.Password
	if err := b.SetPassword("wrong"); err != nil {
		t.Fatal(err)
	}
	if err := b.Start(bed.Connector); err != nil {
		t.Fatal(err)
	}
	poll.Until(t, 15*time.Second, "the connector reports the refused lookup", func() bool {
		out := b.Process(bed.Connector).Output()
		return strings.Contains(out, "gateway function lookup failed") && strings.Contains(out, "status code: 401")
	})
	if err := b.Stop(bed.Connector, false); err != nil {
		t.Fatal(err)
	}
	if err := b.SetPassword(good); err != nil {
		t.Fatal(err)
	}
	if err := b.Start(bed.Connector); err != nil {
		t.Fatal(err)
	}
	id := requeue(t, bed.GatewayURL, bed.Flaky, "credentials", quick)
	poll.Until(t, 30*time.Second, "delivered", func() bool { return len(calls(t, bed.Flaky, id)) == bed.FlakyFailures+1 })
	if out := b.Process(bed.Connector).Output(); strings.Contains(out, "lookup failed") {
		t.Fatalf("the connector's lookup failed with the right credentials:\n%s", out)
	}
}

func testGatewayRestart(t *testing.T, b *bed.Bed) {
	const n = 10
	ids := make([]string, n)
	// Requeued while the gateway is up, due while it is down.
	for i := range ids {
		ids[i] = requeue(t, bed.GatewayURL, bed.Flaky, fmt.Sprint("gateway-", i), map[string]string{"X-Delay-Duration": "2", "X-Max-Retries": "5"})
	}
	if err := b.Stop(bed.Gateway, false); err != nil {
		t.Fatal(err)
	}
	poll.Until(t, 30*time.Second, "the connector sees the gateway down", func() bool {
		up, err := b.ConnectorMetric("mailbox_gateway_up")
		return err == nil && up == 0
	})
	if err := b.Start(bed.Gateway); err != nil {
		t.Fatal(err)
	}
	poll.Until(t, 60*time.Second, "every message delivered after the restart", func() bool {
		for _, id := range ids {
			if cs := calls(t, bed.Flaky, id); len(cs) == 0 || cs[len(cs)-1].Status != http.StatusOK {
				return false
			}
		}
		return true
	})
	for _, id := range ids {
		if d := deadLetter(t, b, id); d != nil {
			t.Errorf("message %s dead-lettered during the gateway's outage: %+v", id, d)
		}
	}
}

func testNATSRestart(t *testing.T, b *bed.Bed) {
	const n = 20
	ids := make([]string, n)
	for i := range ids {
		ids[i] = requeue(t, bed.GatewayURL, bed.Flaky, fmt.Sprint("nats-", i), map[string]string{"X-Delay-Duration": "3", "X-Max-Retries": "5"})
	}
	// Killed, not stopped: what was acknowledged must be on disk.
	if err := b.RestartNATS(); err != nil {
		t.Fatal(err)
	}
	poll.Until(t, 90*time.Second, "every message delivered after the restart", func() bool {
		for _, id := range ids {
			if cs := calls(t, bed.Flaky, id); len(cs) == 0 || cs[len(cs)-1].Status != http.StatusOK {
				return false
			}
		}
		return true
	})
	// The mailbox function reconnected by itself: it takes new requeues.
	var id string
	poll.Until(t, 30*time.Second, "the mailbox takes requeues again", func() bool {
		id = tryRequeue(t, bed.GatewayURL, bed.Flaky, "after-restart", quick)
		return id != ""
	})
	poll.Until(t, 30*time.Second, "delivered", func() bool { return len(calls(t, bed.Flaky, id)) == bed.FlakyFailures+1 })
}

func functionLogs(t *testing.T, b *bed.Bed, name string) string {
	t.Helper()
	logs, err := b.FunctionLogs(context.Background(), name)
	if err != nil {
		t.Fatalf("logs of %s: %v", name, err)
	}
	return logs
}
