// Package e2e runs the mailbox inside real OpenFaaS (package bed) and
// checks what users rely on, once per queue backend.
package e2e

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"maps"
	"net/http"
	"net/http/cookiejar"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/openfaas/faas-provider/types"

	"github.com/openfaas/mailbox/internal/auth"
	"github.com/openfaas/mailbox/internal/envelope"
	"github.com/openfaas/mailbox/internal/jsserver/jsservertest"
	"github.com/openfaas/mailbox/internal/stanserver/stanservertest"
	mbrequeue "github.com/openfaas/mailbox/requeue"
	"github.com/openfaas/mailbox/test/e2e/bed"
	"github.com/openfaas/mailbox/test/e2e/testfn"
	"github.com/openfaas/mailbox/test/internal/nocache"
	"github.com/openfaas/mailbox/test/internal/proc"
)

// binaries are built once, before the tests move into the bed's
// namespaces.
var binaries bed.Binaries

// budget bounds both backends' runs together, so that a broken build
// fails in minutes, well within go test's default 10-minute timeout; a
// pass takes under 2 minutes on 2 cores.
const budget = 4 * time.Minute

// deadline is when the budget is spent: every wait ends by then.
var deadline time.Time

func TestMain(m *testing.M) {
	flag.Parse()
	if testing.Short() {
		os.Exit(m.Run()) // every test skips, saying why
	}
	os.Exit(bed.Main(context.Background(), filepath.Join("..", ".."), func(b bed.Binaries) int {
		binaries = b
		deadline = time.Now().Add(budget)
		return m.Run()
	}))
}

func TestStan(t *testing.T)      { run(t, bed.Stan) }
func TestJetStream(t *testing.T) { run(t, bed.JetStream) }

// scenarios run in this order on one bed, each telling its messages
// apart by the ids the mailbox gives them. The destructive ones stop
// components, and restore them when they end, pass or fail.
var scenarios = []struct {
	name        string
	destructive bool
	test        func(*testing.T, *bed.Bed)
}{
	{"FunctionsListedWithStackMetadata", false, testListed},
	{"RequeuesItselfUntilItSucceeds", false, testRequeuesItself},
	{"FailingEndsAsDeadLetter", false, testFailing},
	{"AnnotationsFromTheGateway", false, testAnnotations},
	{"ConnectorRetriesFlaky", false, testFlaky},
	{"SlowDoesNotHoldOthers", false, testSlow},
	{"AsyncInvocationHandedToMailbox", false, testAsync},
	{"GatewayCredentialsFromSecrets", true, testCredentials},
	{"GatewayRestart", true, testGatewayRestart},
	{"NATSRestart", true, testNATSRestart},
	// It deploys the mailbox and the connector with a token, and restores
	// both without one.
	{"SignedRequestsAndCallbacks", true, testSigned},
	// Last: it deploys the mailbox again, with a token that the example
	// function, requeuing itself, does not send.
	{"DeadLetterManagement", true, testDeadLetterManagement},
}

func run(t *testing.T, backend string) {
	if testing.Short() {
		t.Skip("-short: the bed builds and runs OpenFaaS, NATS and the mailbox, which takes minutes")
	}
	nocache.Mark(t)
	ctx, cancel := context.WithDeadline(context.Background(), deadline)
	defer cancel()
	b, err := bed.Start(ctx, bed.Config{Backend: backend, Bin: binaries, Dir: t.TempDir(), Log: t.Output()})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	for _, s := range scenarios {
		if !t.Run(s.name, func(t *testing.T) { s.test(t, b) }) && s.destructive {
			// What it restored may not work: the next would fail for it.
			t.Fatalf("%s failed, and it stops components: the scenarios after it are not run", s.name)
		}
	}
}

// pollEvery is how often until asks: a scenario waits a little longer
// than it must, but its polls through the gateway do not load the
// machine that runs every component.
const pollEvery = 150 * time.Millisecond

// until calls cond every pollEvery until it returns nil, and fails the
// test with what and cond's last error after timeout, or sooner once the
// budget is spent.
func until(t *testing.T, timeout time.Duration, what string, cond func() error) {
	t.Helper()
	end := time.Now().Add(timeout)
	if deadline.Before(end) {
		end = deadline
	}
	for {
		err := cond()
		if err == nil {
			return
		}
		if time.Now().After(end) {
			t.Fatalf("waiting for %s: gave up at %s (timeout %s, budget ends %s): %v",
				what, time.Now().Format(time.TimeOnly), timeout, deadline.Format(time.TimeOnly), err)
		}
		time.Sleep(pollEvery)
	}
}

// post sends body to the gateway at path with headers, and returns the
// answer with its body read.
func post(path, body string, headers map[string]string) (*http.Response, []byte, error) {
	req, err := http.NewRequest(http.MethodPost, bed.GatewayURL+path, strings.NewReader(body))
	if err != nil {
		return nil, nil, err
	}
	for k, v := range headers {
		req.Header.Set(k, v)
	}
	res, err := bed.HTTPClient.Do(req)
	if err != nil {
		return nil, nil, err
	}
	defer res.Body.Close()
	b, err := io.ReadAll(res.Body)
	return res, b, err
}

// tryRequeue posts body to the mailbox through the gateway, for function,
// with headers, and returns the message id of its 202.
func tryRequeue(function, body string, headers map[string]string) (string, error) {
	res, b, err := post("/function/"+bed.Mailbox+"/deadletter/"+function, body, headers)
	if err != nil {
		return "", err
	}
	var a struct{ ID, Status string }
	if res.StatusCode != http.StatusAccepted || json.Unmarshal(b, &a) != nil || a.Status != "scheduled" {
		return "", fmt.Errorf("requeue for %s answered %d %s, want 202 scheduled", function, res.StatusCode, b)
	}
	return a.ID, nil
}

// requeue is tryRequeue that fails the test.
func requeue(t *testing.T, function, body string, headers map[string]string) string {
	t.Helper()
	id, err := tryRequeue(function, body, headers)
	if err != nil {
		t.Fatal(err)
	}
	return id
}

// quick are the requeue headers of a message retried every second.
var quick = map[string]string{"X-Delay-Duration": "1", "X-Max-Retries": "5"}

// delivered is the history of a message the flaky function took in the
// end: refused bed.FlakyFailures times, then 200.
var delivered = func() string {
	var h []string
	for i := range bed.FlakyFailures {
		h = append(h, fmt.Sprintf("%d:429", i))
	}
	return strings.Join(append(h, fmt.Sprintf("%d:200", bed.FlakyFailures)), " ")
}()

// callsOf asks a test function, through the gateway and in one request,
// for the calls it answered for each message of ids.
func callsOf(function string, ids ...string) (map[string][]testfn.Call, error) {
	return testfn.CallsOf(context.Background(), bed.HTTPClient, bed.GatewayURL+"/function/"+function, ids...)
}

// history is calls as "X-Retries:status" pairs.
func history(calls []testfn.Call) string {
	var h []string
	for _, c := range calls {
		h = append(h, fmt.Sprintf("%s:%d", c.Retries, c.Status))
	}
	return strings.Join(h, " ")
}

// waitHistories waits until function has answered each message of ids
// as many calls as want holds, then checks each message's history is
// want. want ends with the call that settles a message (a 200, or the
// last failure before its dead letter), after which none may follow.
func waitHistories(t *testing.T, timeout time.Duration, function, want string, ids ...string) map[string][]testfn.Call {
	t.Helper()
	n := len(strings.Fields(want))
	var calls map[string][]testfn.Call
	until(t, timeout, fmt.Sprintf("%d calls to %s for each of %d messages", n, function, len(ids)), func() (err error) {
		if calls, err = callsOf(function, ids...); err != nil {
			return err
		}
		for _, id := range ids {
			if len(calls[id]) < n {
				return fmt.Errorf("message %s: %q", id, history(calls[id]))
			}
		}
		return nil
	})
	for _, id := range ids {
		if got := history(calls[id]); got != want {
			t.Errorf("message %s: calls (X-Retries:status) %q, want %q", id, got, want)
		}
	}
	return calls
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

// logRecords decodes the log/slog JSON lines of out whose msg is msg,
// skipping anything before a line's first '{'.
func logRecords(out, msg string) []map[string]any {
	var recs []map[string]any
	for line := range strings.Lines(out) {
		i := strings.IndexByte(line, '{')
		if i < 0 {
			continue
		}
		var rec map[string]any
		if json.Unmarshal([]byte(line[i:]), &rec) == nil && rec["msg"] == msg {
			recs = append(recs, rec)
		}
	}
	return recs
}

// requeues maps each message the example requeued, by the lines it logs,
// to the X-Retries it sent, in order.
func requeues(t *testing.T, b *bed.Bed) map[string][]int {
	t.Helper()
	logs, err := b.FunctionLogs(context.Background(), bed.RateLimited)
	if err != nil {
		t.Fatalf("logs of %s: %v", bed.RateLimited, err)
	}
	out := map[string][]int{}
	for _, rec := range logRecords(logs, "rate limited: requeued") {
		id, _ := rec["id"].(string)
		retries, _ := rec["retries"].(float64)
		out[id] = append(out[id], int(retries))
	}
	return out
}

func testListed(t *testing.T, b *bed.Bed) {
	res, err := bed.HTTPClient.Get(bed.GatewayURL + "/system/functions")
	if err != nil {
		t.Fatal(err)
	}
	res.Body.Close()
	if res.StatusCode != http.StatusUnauthorized {
		t.Fatalf("GET /system/functions without credentials answered %d, want 401", res.StatusCode)
	}
	// With them, as faas-cli list: the gateway adds invocation counts,
	// from the bed's Prometheus, to what the provider lists.
	fns, err := b.Client.GetFunctions(context.Background(), "")
	if err != nil {
		t.Fatal(err)
	}
	i := slices.IndexFunc(fns, func(f types.FunctionStatus) bool { return f.Name == bed.Mailbox })
	if i < 0 {
		t.Fatalf("the gateway lists %d functions, not %s", len(fns), bed.Mailbox)
	}
	want := b.Stack.Functions[bed.Mailbox]
	for _, c := range []struct {
		what      string
		got, want *map[string]string
	}{
		{"labels", fns[i].Labels, want.Labels},
		{"annotations", fns[i].Annotations, want.Annotations},
	} {
		if c.want == nil || c.got == nil || !maps.Equal(*c.got, *c.want) {
			t.Errorf("%s listed with %s %v, want stack.yml's %v", bed.Mailbox, c.what, c.got, c.want)
		}
	}
}

func testRequeuesItself(t *testing.T, b *bed.Bed) {
	const body = "requeues-itself"
	b.API.SetLimit(2)
	// Called through the gateway, the example hits the API's limit and
	// requeues itself through /function/mailbox; the connector calls it
	// back through the gateway until the API takes the work.
	res, answer, err := post("/function/"+bed.RateLimited, body, nil)
	if err != nil {
		t.Fatal(err)
	}
	var first struct{ ID string }
	if res.StatusCode != http.StatusAccepted || json.Unmarshal(answer, &first) != nil || first.ID == "" {
		t.Fatalf("first call answered %d %s, want 202 requeued with a message id", res.StatusCode, answer)
	}
	until(t, 30*time.Second, "the API's third call", func() error {
		if n := b.API.Calls(body); n < 3 {
			return fmt.Errorf("%d calls", n)
		}
		return nil
	})
	// The third took the work: the example answered 200 and is done.
	if n := b.API.Calls(body); n != 3 {
		t.Fatalf("the API had %d calls, want 3", n)
	}
	// The example logs each requeue with the X-Retries it sent: one more
	// than it was called with.
	if got := requeues(t, b)[first.ID]; !slices.Equal(got, []int{1, 2}) {
		t.Fatalf("the example requeued message %s with X-Retries %v, want [1 2]", first.ID, got)
	}
}

func testFailing(t *testing.T, b *bed.Bed) {
	id := requeue(t, bed.Failing, "failing", map[string]string{"X-Delay-Duration": "1", "X-Max-Retries": "2"})
	// X-Retries 0 with X-Max-Retries 2: calls with 0, 1 and 2, then the
	// dead letter, stored after the last call.
	waitHistories(t, 30*time.Second, bed.Failing, "0:500 1:500 2:500", id)
	var dead *envelope.Envelope
	until(t, 10*time.Second, "the dead letter", func() error {
		if dead = deadLetter(t, b, id); dead == nil {
			return errors.New("none stored")
		}
		return nil
	})
	if dead.Reason != envelope.ReasonMaxRetries || dead.Retries != 2 || dead.LastStatus != http.StatusInternalServerError ||
		dead.Function != bed.Failing || string(dead.Body) != "failing" {
		t.Fatalf("dead letter %+v, want reason %s after X-Retries 2 with status 500", dead, envelope.ReasonMaxRetries)
	}
}

// testAnnotations: with no X-Max-Retries, the failing function's
// annotations (max-retries 1, delay 1 s), read by the connector through the
// gateway, decide: two calls, then the dead letter.
func testAnnotations(t *testing.T, b *bed.Bed) {
	// The wait before the first delivery is the API's to set, and it
	// knows no annotations: the header keeps it short.
	id := requeue(t, bed.Failing, "annotated", map[string]string{"X-Delay-Duration": "1"})
	waitHistories(t, 30*time.Second, bed.Failing, "0:500 1:500", id)
	var dead *envelope.Envelope
	until(t, 10*time.Second, "the dead letter", func() error {
		if dead = deadLetter(t, b, id); dead == nil {
			return errors.New("none stored")
		}
		return nil
	})
	if dead.Reason != envelope.ReasonMaxRetries || dead.Retries != bed.FailingMaxRetries {
		t.Fatalf("dead letter %+v, want reason %s after X-Retries %d", dead, envelope.ReasonMaxRetries, bed.FailingMaxRetries)
	}
	calls := waitHistories(t, time.Second, bed.Failing, "0:500 1:500", id)[id]
	if got := calls[0].MaxRetries; got != strconv.Itoa(bed.FailingMaxRetries) {
		t.Fatalf("delivered with X-Max-Retries %q, want the annotation's %d", got, bed.FailingMaxRetries)
	}
}

func testFlaky(t *testing.T, b *bed.Bed) {
	id := requeue(t, bed.Flaky, "flaky", quick)
	waitHistories(t, 30*time.Second, bed.Flaky, delivered, id)
	if dead := deadLetter(t, b, id); dead != nil {
		t.Fatalf("delivered message also dead-lettered: %+v", dead)
	}
}

func testSlow(t *testing.T, b *bed.Bed) {
	slow := requeue(t, bed.Slow, "slow", quick)
	// Due a second after the slow one, while its call is in flight.
	fast := requeue(t, bed.Flaky, "fast", map[string]string{"X-Delay-Duration": "2", "X-Max-Retries": "5"})
	s := waitHistories(t, 30*time.Second, bed.Slow, "0:200", slow)[slow][0]
	f := waitHistories(t, 30*time.Second, bed.Flaky, delivered, fast)[fast][0]
	if f.At.Before(s.At) || !f.At.Before(s.At.Add(bed.SlowFor)) {
		t.Fatalf("fast message first called at %s, want while the slow call was in flight (from %s, for %s)",
			f.At.Format(time.StampMilli), s.At.Format(time.StampMilli), bed.SlowFor)
	}
}

func testAsync(t *testing.T, b *bed.Bed) {
	const body = "async"
	b.API.SetLimit(1)
	worker, connector := b.Process(bed.QueueWorker), b.Process(bed.Connector)
	workerMark, connectorMark := worker.Written(), connector.Written()
	before := requeues(t, b)
	// The queue-worker calls the example; the API refuses it, so it
	// requeues itself through the mailbox, which calls it again.
	res, answer, err := post("/async-function/"+bed.RateLimited, body, nil)
	if err != nil {
		t.Fatal(err)
	}
	callID := res.Header.Get("X-Call-Id")
	if res.StatusCode != http.StatusAccepted || callID == "" {
		t.Fatalf("/async-function answered %d %s (X-Call-Id %q), want 202 with a call id", res.StatusCode, answer, callID)
	}
	until(t, 30*time.Second, "the API's second call", func() error {
		if n := b.API.Calls(body); n < 2 {
			return fmt.Errorf("%d calls", n)
		}
		return nil
	})
	if n := b.API.Calls(body); n != 2 {
		t.Fatalf("the API had %d calls, want 2", n)
	}

	// The first call was the queue-worker's, with the gateway's call id,
	// answered 202 requeued...
	out := worker.OutputSince(workerMark)
	if !strings.Contains(out, callID) || !strings.Contains(out, "Invoked: "+bed.RateLimited+" [202]") {
		t.Fatalf("the queue-worker did not invoke %s with call %s, answered 202:\n%s", bed.RateLimited, callID, out)
	}
	// ...for one new message, requeued with X-Retries 1...
	var ids []string
	for id, retries := range requeues(t, b) {
		if _, ok := before[id]; !ok {
			ids = append(ids, id)
			if !slices.Equal(retries, []int{1}) {
				t.Fatalf("the example requeued message %s with X-Retries %v, want [1]", id, retries)
			}
		}
	}
	if len(ids) != 1 {
		t.Fatalf("the example requeued messages %v, want one", ids)
	}
	// ...which the mailbox delivered with X-Retries 1, and the example
	// took.
	var rec map[string]any
	until(t, 10*time.Second, "the connector's delivery of "+ids[0], func() error {
		for _, r := range logRecords(connector.OutputSince(connectorMark), "delivered") {
			if r["id"] == ids[0] {
				rec = r
				return nil
			}
		}
		return errors.New("not logged")
	})
	if rec["function"] != bed.RateLimited || rec["retries"] != 1.0 || rec["status"] != 200.0 {
		t.Fatalf("the connector delivered %v, want %s with X-Retries 1, answered 200", rec, bed.RateLimited)
	}
}

func testCredentials(t *testing.T, b *bed.Bed) {
	good := b.Password
	t.Cleanup(func() {
		// Whatever happened, the scenarios after this one need the
		// connector running with the right password.
		if err := b.SetPassword(good); err != nil {
			t.Error(err)
		}
		if t.Failed() {
			_ = b.Stop(bed.Connector, false)
		}
		if err := b.Start(bed.Connector); err != nil {
			t.Error(err)
		}
	})
	// The connector asks the gateway's /system API, which wants basic
	// auth, with the credentials in the secrets folder when it starts.
	restart := func(password string) *proc.Process {
		t.Helper()
		if err := b.Stop(bed.Connector, false); err != nil {
			t.Fatal(err)
		}
		if err := b.SetPassword(password); err != nil {
			t.Fatal(err)
		}
		if err := b.Start(bed.Connector); err != nil {
			t.Fatal(err)
		}
		return b.Process(bed.Connector)
	}

	// With a wrong password the gateway refuses it, and the connector
	// says so.
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	refused, err := restart("wrong").LogField(ctx, "gateway function lookup failed", "error")
	if err != nil || !strings.Contains(refused, "401") {
		t.Fatalf("the connector logged the failed lookup with %q (%v), want a 401", refused, err)
	}

	// With the right one the gateway passes it on to the provider, which
	// it does only once the credentials match, and logs.
	gateway := b.Process(bed.Gateway)
	mark := gateway.Written()
	connector := restart(good)
	const passed = "Forwarded [GET] to /system/functions?namespace=openfaas-fn - [200]"
	until(t, 15*time.Second, "the gateway passing the connector's lookup on", func() error {
		if !strings.Contains(gateway.OutputSince(mark), passed) {
			return fmt.Errorf("the gateway has not logged %q", passed)
		}
		return nil
	})
	if out := connector.Output(); strings.Contains(out, "lookup failed") {
		t.Fatalf("the connector's lookup failed with the right credentials:\n%s", out)
	}
	id := requeue(t, bed.Flaky, "credentials", quick)
	waitHistories(t, 30*time.Second, bed.Flaky, delivered, id)
}

func testGatewayRestart(t *testing.T, b *bed.Bed) {
	t.Cleanup(func() {
		if err := b.Start(bed.Gateway); err != nil {
			t.Error(err)
		}
	})
	// Due while the gateway is down, after a first message whose call
	// finds it gone and pauses deliveries: they wait for the gateway and
	// spend no retry on the outage.
	due := time.Now().Add(3 * time.Second)
	ids := make([]string, 10)
	for i := range ids {
		ids[i] = requeue(t, bed.Flaky, fmt.Sprint("gateway-", i), map[string]string{"X-Delay-Duration": "3", "X-Max-Retries": "5"})
	}
	first := requeue(t, bed.Flaky, "gateway-first", quick)
	if err := b.Stop(bed.Gateway, false); err != nil {
		t.Fatal(err)
	}
	until(t, 30*time.Second, "the connector pausing deliveries", func() error {
		up, err := b.ConnectorMetric("mailbox_gateway_up")
		if err == nil && up != 0 {
			err = errors.New("mailbox_gateway_up is still 1")
		}
		return err
	})
	if now := time.Now(); now.After(due) {
		t.Fatalf("deliveries paused only at %s, after the messages were due (%s): the first message's call should have paused them",
			now.Format(time.StampMilli), due.Format(time.StampMilli))
	}
	if err := b.Start(bed.Gateway); err != nil {
		t.Fatal(err)
	}
	waitHistories(t, 60*time.Second, bed.Flaky, delivered, ids...)
	// The first message spent one retry, on the call that found the
	// gateway gone: it ends taken all the same.
	until(t, 30*time.Second, "the first message delivered", func() error {
		calls, err := callsOf(bed.Flaky, first)
		if err == nil && !strings.HasSuffix(history(calls[first]), ":200") {
			err = fmt.Errorf("calls %q", history(calls[first]))
		}
		return err
	})
	for _, id := range append(ids, first) {
		if d := deadLetter(t, b, id); d != nil {
			t.Errorf("message %s dead-lettered during the gateway's outage: %+v", id, d)
		}
	}
}

func testNATSRestart(t *testing.T, b *bed.Bed) {
	t.Cleanup(func() {
		if err := b.Start(b.NATS()); err != nil {
			t.Error(err)
		}
	})
	ids := make([]string, 20)
	for i := range ids {
		ids[i] = requeue(t, bed.Flaky, fmt.Sprint("nats-", i), map[string]string{"X-Delay-Duration": "3", "X-Max-Retries": "5"})
	}
	// Killed while every message is mid-retry: called once, refused, and
	// waiting for its next call.
	until(t, 30*time.Second, "each message's first call", func() error {
		calls, err := callsOf(bed.Flaky, ids...)
		for _, id := range ids {
			if err == nil && len(calls[id]) == 0 {
				err = fmt.Errorf("message %s not called yet", id)
			}
		}
		return err
	})
	// SIGKILL: nothing is flushed on the way out; what was acknowledged
	// must be on disk.
	if err := b.Stop(b.NATS(), true); err != nil {
		t.Fatal(err)
	}
	if err := b.Start(b.NATS()); err != nil {
		t.Fatal(err)
	}
	var calls map[string][]testfn.Call
	until(t, 90*time.Second, "every message delivered after the restart", func() (err error) {
		if calls, err = callsOf(bed.Flaky, ids...); err != nil {
			return err
		}
		for _, id := range ids {
			if h := history(calls[id]); !strings.HasSuffix(h, ":200") {
				return fmt.Errorf("message %s: %q", id, h)
			}
		}
		return nil
	})
	// At least once: a call the kill interrupted may be made again.
	for _, id := range ids {
		if h := history(calls[id]); !strings.HasPrefix(h, "0:429 ") {
			t.Errorf("message %s: calls %q, want its first refused before the kill", id, h)
		}
		if d := deadLetter(t, b, id); d != nil {
			t.Errorf("message %s dead-lettered: %+v", id, d)
		}
	}
	// The mailbox function reconnected by itself: it takes new requeues.
	var id string
	until(t, 30*time.Second, "the mailbox taking requeues again", func() (err error) {
		id, err = tryRequeue(bed.Flaky, "after-restart", quick)
		return err
	})
	waitHistories(t, 30*time.Second, bed.Flaky, delivered, id)
}

// testDeadLetterManagement: the mailbox deployed with a token (an OpenFaaS
// secret named in auth_token_secret) answers its management API and its
// web page through the gateway, at /function/mailbox/.
func testDeadLetterManagement(t *testing.T, b *bed.Bed) {
	ctx := context.Background()
	token, secret := "e2e-"+strconv.FormatInt(time.Now().UnixNano(), 36), "mailbox-token"
	t.Cleanup(func() {
		if err := b.UpdateMailbox(ctx, nil); err != nil {
			t.Error(err)
		}
	})
	// As faas-cli secret create, then deploy with the secret and
	// auth_token_secret; requeue_auth is on by default.
	if status, err := b.Client.CreateSecret(ctx, types.Secret{Name: secret, Value: token}); err != nil || status >= 300 {
		t.Fatalf("creating secret %s through the gateway: %d %v", secret, status, err)
	}
	if err := b.UpdateMailbox(ctx, []string{secret}, "auth_token_secret="+secret); err != nil {
		t.Fatal(err)
	}
	mb := "/function/" + bed.Mailbox
	call := func(method, path string, want int, into any) {
		t.Helper()
		req, err := http.NewRequest(method, bed.GatewayURL+mb+path, nil)
		if err != nil {
			t.Fatal(err)
		}
		req.Header.Set("Authorization", "Bearer "+token)
		res, err := bed.HTTPClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer res.Body.Close()
		body, _ := io.ReadAll(res.Body)
		if res.StatusCode != want || (into != nil && json.Unmarshal(body, into) != nil) {
			t.Fatalf("%s %s answered %d %s, want %d", method, mb+path, res.StatusCode, body, want)
		}
	}

	// A requeue needs the token...
	res, answer, err := post(mb+"/deadletter/"+bed.Slow, "x", nil)
	if err != nil {
		t.Fatal(err)
	}
	if res.StatusCode != http.StatusUnauthorized {
		t.Fatalf("requeue without the token answered %d %s, want 401", res.StatusCode, answer)
	}
	// ...and with it, past its X-Max-Retries, is a dead letter at once.
	const body = "dead-letter-management"
	var dead struct{ ID, Status, Reason string }
	until(t, 30*time.Second, "the mailbox dead-lettering a requeue", func() error {
		res, answer, err := post(mb+"/deadletter/"+bed.Slow, body, map[string]string{
			"Authorization": "Bearer " + token, "X-Retries": "2", "X-Max-Retries": "1", "X-E2e": "kept"})
		if err == nil && (res.StatusCode != http.StatusOK || json.Unmarshal(answer, &dead) != nil || dead.Status != "dead-lettered") {
			err = fmt.Errorf("answered %d %s, want 200 dead-lettered", res.StatusCode, answer)
		}
		return err
	})
	id := dead.ID

	type count struct {
		Function, Reason string
		Count            int
	}
	var list struct {
		Items  []struct{ ID, Function, Reason string }
		Total  int
		Counts []count
	}
	call(http.MethodGet, "/deadletters?function="+bed.Slow, http.StatusOK, &list)
	if list.Total != 1 || len(list.Items) != 1 || list.Items[0].ID != id || list.Items[0].Reason != envelope.ReasonMaxRetries ||
		!slices.Contains(list.Counts, count{bed.Slow, envelope.ReasonMaxRetries, 1}) {
		t.Fatalf("dead letters of %s: %+v, want %s alone, counted once", bed.Slow, list, id)
	}
	var detail struct {
		ID, Body string
		Header   http.Header
	}
	call(http.MethodGet, "/deadletters/"+id, http.StatusOK, &detail)
	if detail.ID != id || detail.Body != body || detail.Header.Get("X-E2e") != "kept" || detail.Header.Get("Authorization") != "" {
		t.Fatalf("dead letter %s shown as %+v, want its body, its X-E2e header and no Authorization", id, detail)
	}

	// The web page, as a browser gets it: redirected to sign in, every hop
	// under /function/mailbox/ui/.
	ui := mb + "/ui"
	jar, err := cookiejar.New(nil)
	if err != nil {
		t.Fatal(err)
	}
	var hops []string
	browser := &http.Client{Jar: jar, Timeout: 10 * time.Second, CheckRedirect: func(req *http.Request, via []*http.Request) error {
		r := req.Response
		hops = append(hops, fmt.Sprintf("%d %q %s", r.StatusCode, r.Header.Get("Location"), req.URL.Path))
		if !strings.HasPrefix(req.URL.Path, ui+"/") {
			return fmt.Errorf("redirected out of %s/: %v", ui, hops)
		}
		return nil
	}}
	res, err = browser.Get(bed.GatewayURL + ui)
	if err != nil {
		t.Fatal(err)
	}
	res.Body.Close()
	want := []string{`301 "ui/" ` + ui + "/", `303 "./login" ` + ui + "/login"}
	if res.StatusCode != http.StatusOK || !slices.Equal(hops, want) {
		t.Fatalf("GET %s: %d after redirects %q, want 200 after %q", ui, res.StatusCode, hops, want)
	}
	// Signing in sets the session cookie for the page's directory, and
	// leads to the overview.
	hops = nil
	req, err := http.NewRequest(http.MethodPost, bed.GatewayURL+ui+"/login", strings.NewReader(url.Values{"token": {token}}.Encode()))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	// A browser sends its origin with every form post.
	req.Header.Set("Origin", bed.GatewayURL)
	res, err = browser.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	page, _ := io.ReadAll(res.Body)
	res.Body.Close()
	want = []string{`303 "./" ` + ui + "/"}
	if res.StatusCode != http.StatusOK || !slices.Equal(hops, want) {
		t.Fatalf("signing in: %d after redirects %q, want 200 after %q:\n%s", res.StatusCode, hops, want, page)
	}
	cookie := slices.IndexFunc(res.Request.Response.Cookies(), func(c *http.Cookie) bool {
		return c.Name == "mailbox_session" && c.Path == "" && c.HttpOnly
	})
	if cookie < 0 {
		t.Fatalf("signing in set cookies %q, want an HttpOnly mailbox_session without a Path", res.Request.Response.Header.Values("Set-Cookie"))
	}
	if !strings.Contains(string(page), id) || strings.Contains(string(page), `="/`) {
		t.Fatalf("the overview at %s does not list %s, or has a link from the root (=\"/):\n%s", ui+"/", id, page)
	}

	// Replayed, the message is delivered again with its body, and is no
	// longer a dead letter.
	var replayed struct{ ID, Status string }
	call(http.MethodPost, "/deadletters/"+id+"/replay", http.StatusAccepted, &replayed)
	if replayed.ID != id || replayed.Status != "replayed" {
		t.Fatalf("replay of %s answered %+v", id, replayed)
	}
	calls := waitHistories(t, 30*time.Second, bed.Slow, "0:200", id)[id]
	if calls[0].Body != body {
		t.Fatalf("replayed message delivered with body %q, want %q", calls[0].Body, body)
	}
	call(http.MethodGet, "/deadletters?function="+bed.Slow, http.StatusOK, &list)
	if list.Total != 0 || len(list.Items) != 0 {
		t.Fatalf("dead letters of %s after the replay: %+v, want none", bed.Slow, list)
	}
}

// signedPost posts a requeue of body for function to the mailbox through
// the gateway, with headers, signed with token as the requeue package
// signs (none when token is empty).
func signedPost(t *testing.T, token, function, body string, headers map[string]string) (*http.Response, []byte) {
	t.Helper()
	req, err := http.NewRequest(http.MethodPost, bed.GatewayURL+"/function/"+bed.Mailbox+"/deadletter/"+function, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range headers {
		req.Header.Set(k, v)
	}
	if token != "" {
		if err := mbrequeue.SignRequest(req, []byte(body), token); err != nil {
			t.Fatal(err)
		}
	}
	res, err := bed.HTTPClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	answer, err := io.ReadAll(res.Body)
	if err != nil {
		t.Fatal(err)
	}
	return res, answer
}

// testSigned: the mailbox and the connector deployed with a token, as with
// the chart's auth.connectorTokenSecret. Requeues must be signed, a
// function requeues itself signed and verifies what the mailbox delivers,
// and callbacks go to the gateway's functions, nowhere else.
func testSigned(t *testing.T, b *bed.Bed) {
	ctx := context.Background()
	suffix := strconv.FormatInt(time.Now().UnixNano(), 36)
	token, secret := "e2e-signed-"+suffix, "mailbox-signing-token"
	t.Cleanup(func() {
		// The scenarios after this one run without a token.
		if err := b.UpdateMailbox(ctx, nil); err != nil {
			t.Error(err)
		}
		if err := b.SetConnectorToken("", ""); err != nil {
			t.Error(err)
		}
		_ = b.Stop(bed.Connector, false)
		if err := b.Start(bed.Connector); err != nil {
			t.Error(err)
		}
	})
	if status, err := b.Client.CreateSecret(ctx, types.Secret{Name: secret, Value: token}); err != nil || status >= 300 {
		t.Fatalf("creating secret %s through the gateway: %d %v", secret, status, err)
	}
	// requeue_auth is on by default.
	if err := b.UpdateMailbox(ctx, []string{secret}, "auth_token_secret="+secret); err != nil {
		t.Fatal(err)
	}
	// The connector reads the token beside the gateway's credentials when
	// it starts.
	if err := b.SetConnectorToken(secret, token); err != nil {
		t.Fatal(err)
	}
	if err := b.Stop(bed.Connector, false); err != nil {
		t.Fatal(err)
	}
	if err := b.Start(bed.Connector); err != nil {
		t.Fatal(err)
	}
	if err := b.DeployTestFunction(ctx, bed.Signed, []string{secret}, "token_secret="+secret,
		"mailbox_url="+bed.GatewayURL+"/function/"+bed.Mailbox, "requeue_times=2"); err != nil {
		t.Fatal(err)
	}
	// Once the new mailbox answers: a signed requeue is taken...
	until(t, 30*time.Second, "the mailbox taking a signed requeue", func() error {
		res, answer := signedPost(t, token, bed.Flaky, "signed-"+suffix, quick)
		if res.StatusCode != http.StatusAccepted {
			return fmt.Errorf("answered %d %s, want 202", res.StatusCode, answer)
		}
		return nil
	})
	// ...one unsigned, or signed with another token, is not.
	for what, key := range map[string]string{"unsigned": "", "signed with another token": "not-" + token} {
		res, answer := signedPost(t, key, bed.Flaky, "refused-"+suffix, quick)
		if res.StatusCode != http.StatusUnauthorized {
			t.Fatalf("a requeue %s answered %d %s, want 401", what, res.StatusCode, answer)
		}
	}

	t.Run("FunctionRequeuesItselfSigned", func(t *testing.T) {
		// Called straight through the gateway by anyone, with control
		// headers it would like carried over: not a delivery the mailbox
		// signed, so the function requeues it, signed, under a new id with
		// its own X-Max-Retries; only X-Retries still counts up.
		caller := "caller-" + suffix
		res, answer, err := post("/function/"+bed.Signed, "signed-requeue", map[string]string{
			"X-Mailbox-Message-Id": caller, "X-Retries": "0", "X-Max-Retries": "100"})
		if err != nil {
			t.Fatal(err)
		}
		if res.StatusCode != http.StatusAccepted {
			t.Fatalf("the call answered %d %s, want 202: the function requeued it", res.StatusCode, answer)
		}
		calls, err := callsOf(bed.Signed, caller)
		if err != nil {
			t.Fatal(err)
		}
		first := calls[caller]
		if len(first) != 1 || first[0].Verified || !strings.Contains(first[0].NotVerified, "no X-Mailbox-Delivery-Signature") ||
			first[0].Requeued == "" || first[0].Requeued == caller {
			t.Fatalf("the caller's call recorded as %+v, want not signed, requeued under an id of the mailbox's", first)
		}
		// The mailbox delivers it signed with X-Retries 1 (the caller's 0
		// counted on, its 100 and id dropped); verified, the function
		// requeues it once more, signed, carrying its id and retries over;
		// then takes it.
		id := first[0].Requeued
		got := waitHistories(t, 30*time.Second, bed.Signed, "1:202 2:200", id)[id]
		for _, c := range got {
			if !c.Verified || c.MaxRetries != "5" {
				t.Errorf("delivery of %s with X-Retries %s: verified %v (%s), X-Max-Retries %q, want verified, 5",
					id, c.Retries, c.Verified, c.NotVerified, c.MaxRetries)
			}
		}
		if got[0].Requeued != id {
			t.Errorf("the verified delivery was requeued as %q, want its own id %s", got[0].Requeued, id)
		}
	})

	t.Run("ForgedDeliveryNotVerified", func(t *testing.T) {
		// A call made to look like a delivery, signed with another token.
		forged := "forged-" + suffix
		const body = "forged"
		h := http.Header{}
		h.Set("X-Mailbox-Message-Id", forged)
		h.Set("X-Retries", "1")
		h.Set("X-Max-Retries", "5")
		h.Set(mbrequeue.HeaderFunction, bed.Signed)
		other, err := auth.NewToken("not-" + token)
		if err != nil {
			t.Fatal(err)
		}
		if err := other.SignDelivery(h, []byte(body), time.Now()); err != nil {
			t.Fatal(err)
		}
		headers := map[string]string{}
		for k := range h {
			headers[k] = h.Get(k)
		}
		if _, _, err := post("/function/"+bed.Signed, body, headers); err != nil {
			t.Fatal(err)
		}
		calls, err := callsOf(bed.Signed, forged)
		if err != nil {
			t.Fatal(err)
		}
		c := calls[forged]
		if len(c) != 1 || c[0].Verified || !strings.Contains(c[0].NotVerified, "not valid") || c[0].Requeued == forged {
			t.Fatalf("the forged call recorded as %+v, want not verified (a bad signature), its id not carried over", c)
		}
		// Requeued under a new id, its X-Retries 1 counted on, which the
		// mailbox delivers signed with X-Retries 2: the function takes it.
		waitHistories(t, 30*time.Second, bed.Signed, "2:200", c[0].Requeued)
	})

	// Where a callback may not go: the bed's own listener on loopback, the
	// cloud metadata address and the gateway's /system API.
	var elsewhere atomic.Int64
	listener := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { elsewhere.Add(1) }))
	defer listener.Close()
	t.Run("CallbackElsewhereRefused", func(t *testing.T) {
		for _, u := range []string{listener.URL + "/callback", "http://169.254.169.254/latest/meta-data/", bed.GatewayURL + "/system/functions"} {
			res, answer := signedPost(t, token, bed.Flaky, "callback-refused-"+suffix,
				map[string]string{"X-Delay-Duration": "1", "X-Max-Retries": "5", "X-Callback-Url": u})
			var e struct{ Error, Field string }
			if res.StatusCode != http.StatusBadRequest || json.Unmarshal(answer, &e) != nil || e.Field != "X-Callback-Url" {
				t.Errorf("a requeue with X-Callback-Url %s answered %d %s, want 400 naming X-Callback-Url", u, res.StatusCode, answer)
			}
		}
	})

	t.Run("CallbackToAFunctionDelivered", func(t *testing.T) {
		res, answer := signedPost(t, token, bed.Flaky, "callback-"+suffix, map[string]string{
			"X-Delay-Duration": "1", "X-Max-Retries": "5", "X-Callback-Url": bed.GatewayURL + "/function/" + bed.Signed})
		var a struct{ ID string }
		if res.StatusCode != http.StatusAccepted || json.Unmarshal(answer, &a) != nil || a.ID == "" {
			t.Fatalf("a requeue with a callback to %s answered %d %s, want 202", bed.Signed, res.StatusCode, answer)
		}
		waitHistories(t, 30*time.Second, bed.Flaky, delivered, a.ID)
		// The outcome, posted through the gateway to the other function,
		// signed by the mailbox for the function it reports on.
		var cb []testfn.Call
		until(t, 30*time.Second, "the callback to "+bed.Signed, func() error {
			calls, err := callsOf(bed.Signed, a.ID)
			if err == nil && len(calls[a.ID]) == 0 {
				err = errors.New("not called")
			}
			cb = calls[a.ID]
			return err
		})
		c := cb[0]
		if len(cb) != 1 || c.Outcome != "delivered" || c.FunctionName != bed.Flaky || c.FunctionStatus != "200" ||
			!strings.Contains(c.Body, "flaky: 200") || !c.Verified || c.Status != http.StatusOK {
			t.Fatalf("the callback recorded as %+v, want one, verified, reporting %s delivered with 200 and its answer", cb, bed.Flaky)
		}
	})

	t.Run("RefusedCallbackPutOnNATS", func(t *testing.T) {
		// Written straight to NATS, past the API's check, as anything with
		// access to NATS could: the connector checks the callback URL again
		// before any call, and keeps the message as a dead letter.
		q, err := b.OpenQueue()
		if err != nil {
			t.Fatal(err)
		}
		defer q.Close()
		now := time.Now()
		e := &envelope.Envelope{ID: "nats-" + suffix, Kind: envelope.KindMessage, Function: bed.Flaky, Body: []byte("put-on-nats"),
			Policy: envelope.Policy{CallbackURL: listener.URL + "/callback"}, AcceptedAt: now, DueAt: now}
		// It connects in the background: unavailable until then.
		until(t, 30*time.Second, "the message stored on NATS", func() error {
			sctx, cancel := context.WithTimeout(ctx, 5*time.Second)
			defer cancel()
			return q.Schedule(sctx, e)
		})
		var dead *envelope.Envelope
		until(t, 30*time.Second, "the dead letter of "+e.ID, func() error {
			if dead = deadLetter(t, b, e.ID); dead == nil {
				return errors.New("none stored")
			}
			return nil
		})
		if dead.Reason != envelope.ReasonRefused {
			t.Errorf("dead letter %+v, want reason %s", dead, envelope.ReasonRefused)
		}
		calls, err := callsOf(bed.Flaky, e.ID)
		if err != nil {
			t.Fatal(err)
		}
		if len(calls[e.ID]) != 0 {
			t.Errorf("%s delivered %q, want never", e.ID, history(calls[e.ID]))
		}
	})
	// After every other callback of the scenario was settled: none was
	// called.
	if n := elsewhere.Load(); n != 0 {
		t.Fatalf("the listener refused callbacks named was called %d times", n)
	}
}
