package stan_test

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/openfaas/mailbox/internal/deadletter"
	"github.com/openfaas/mailbox/internal/envelope"
	"github.com/openfaas/mailbox/internal/poll"
	"github.com/openfaas/mailbox/internal/queue"
	"github.com/openfaas/mailbox/internal/queue/stan"
	"github.com/openfaas/mailbox/internal/servertest"
	"github.com/openfaas/mailbox/internal/stanserver"
	"github.com/openfaas/mailbox/internal/stanserver/stanservertest"
	"github.com/openfaas/mailbox/internal/status"
)

// childURL, set in the environment, makes the test binary a consumer
// (see TestMain) that a test kills, as a connector process is SIGKILLed.
const (
	childURL      = "MAILBOX_STAN_TEST_CONSUMER_URL"
	childClientID = "MAILBOX_STAN_TEST_CONSUMER_CLIENT_ID"
	childRole     = "MAILBOX_STAN_TEST_CONSUMER_ROLE"
)

func TestMain(m *testing.M) {
	if url := os.Getenv(childURL); url != "" {
		os.Exit(runChild(url, os.Getenv(childClientID), os.Getenv(childRole)))
	}
	os.Exit(m.Run())
}

// slowHandler is the handler timeout of the recovery tests: an ack wait
// of minutes, as with the default upstream_timeout, so that a message
// that comes back within seconds was not waiting for its ack wait.
const slowHandler = time.Minute

// runChild consumes with the default client id unless clientID is set,
// prints "held <id>" for each message and never finishes one.
func runChild(url, clientID, role string) int {
	q, err := stan.Open(stan.Options{Options: recoveryOptions(url, slog.New(slog.NewTextHandler(os.Stderr, nil))), ClientID: clientID, Role: role})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	var mu sync.Mutex
	err = q.Consume(context.Background(), func(ctx context.Context, e *envelope.Envelope) error {
		mu.Lock()
		fmt.Printf("held %s\n", e.ID)
		mu.Unlock()
		<-ctx.Done()
		return ctx.Err()
	})
	fmt.Fprintln(os.Stderr, "Consume:", err)
	return 1
}

func recoveryOptions(url string, log *slog.Logger) queue.Options {
	return queue.Options{URL: url, MaxInflight: 16, HandlerTimeout: slowHandler, PublishTimeout: 5 * time.Second, Logger: log}
}

// startChild runs a consumer process and returns a channel of the ids it
// holds and how to kill it (SIGKILL: its connection is never closed).
func startChild(t *testing.T, url, clientID, role string) (held <-chan string, kill func()) {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), childURL+"="+url, childClientID+"="+clientID, childRole+"="+role)
	cmd.Stderr = t.Output()
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	ids := make(chan string, 1000)
	go func() {
		s := bufio.NewScanner(out)
		for s.Scan() {
			if id, ok := strings.CutPrefix(s.Text(), "held "); ok {
				ids <- id
			}
		}
	}()
	var once sync.Once
	kill = func() {
		once.Do(func() {
			_ = cmd.Process.Kill()
			_ = cmd.Wait()
		})
	}
	t.Cleanup(kill)
	return ids, kill
}

func openRecovery(t *testing.T, url, clientID string) *stan.Queue {
	t.Helper()
	return openAs(t, url, clientID, "")
}

// openAs is openRecovery for a process doing role.
func openAs(t *testing.T, url, clientID, role string) *stan.Queue {
	t.Helper()
	q, err := stan.Open(stan.Options{Options: recoveryOptions(url, slog.New(slog.NewTextHandler(t.Output(), nil))), ClientID: clientID, Role: role})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = q.Close() })
	poll.Until(t, 10*time.Second, "client connects", q.Connected)
	return q
}

// gotten records the ids a handler received.
type gotten struct {
	mu  sync.Mutex
	ids map[string]int
}

func (g *gotten) handle(_ context.Context, e *envelope.Envelope) error {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.ids == nil {
		g.ids = map[string]int{}
	}
	g.ids[e.ID]++
	return nil
}

func (g *gotten) count() int {
	g.mu.Lock()
	defer g.mu.Unlock()
	return len(g.ids)
}

func (g *gotten) twice() int {
	g.mu.Lock()
	defer g.mu.Unlock()
	n := 0
	for _, c := range g.ids {
		if c > 1 {
			n++
		}
	}
	return n
}

func (g *gotten) has(id string) bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.ids[id] > 0
}

func consumeUntilEnd(t *testing.T, q *stan.Queue, h queue.Handler) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = q.Consume(ctx, h)
	}()
	t.Cleanup(func() { cancel(); <-done })
}

func scheduleNow(t *testing.T, q *stan.Queue, ids ...string) {
	t.Helper()
	for _, id := range ids {
		e := &envelope.Envelope{ID: id, Function: "fn", Body: []byte(id), AcceptedAt: time.Now().UTC(), DueAt: time.Now()}
		if err := q.Schedule(context.Background(), e); err != nil {
			t.Fatalf("Schedule(%s): %v", id, err)
		}
	}
}

// killHolding starts a consumer process, has it take n messages and kills
// it while it holds them; it returns when the process is dead.
func killHolding(t *testing.T, producer *stan.Queue, url, clientID string, n int) {
	t.Helper()
	killHoldingAs(t, producer, url, clientID, "", n)
}

// killHoldingAs is killHolding with a consumer doing role.
func killHoldingAs(t *testing.T, producer *stan.Queue, url, clientID, role string, n int) {
	t.Helper()
	held, kill := startChild(t, url, clientID, role)
	ids := make([]string, n)
	for i := range ids {
		ids[i] = fmt.Sprintf("held%d", i)
	}
	scheduleNow(t, producer, ids...)
	for range n {
		select {
		case <-held:
		case <-time.After(30 * time.Second):
			t.Fatal("the consumer process did not take every message")
		}
	}
	kill()
}

// A connector replica restarted after a SIGKILL (a container restarted in
// its pod, keeping its hostname) takes over at once what its dead
// predecessor held, even on a server left at NATS Streaming's heartbeat
// defaults, which would drop the dead client only after about 5 minutes:
// with the default client id, derived from the host name, it replaces the
// dead registration. Fault on the old code: a random client id per start,
// so the messages waited for the server's heartbeats or the ack wait.
func TestRestartedReplicaTakesOverAtOnce(t *testing.T) {
	t.Parallel()
	srv := stanservertest.StartWith(t, stanserver.Options{HeartbeatInterval: 30 * time.Second, HeartbeatTimeout: 10 * time.Second, HeartbeatFailCount: 10})
	producer := openRecovery(t, srv.URL(), "producer")
	killHolding(t, producer, srv.URL(), "", 10)
	killed := time.Now()

	restarted := openRecovery(t, srv.URL(), "")
	var g gotten
	consumeUntilEnd(t, restarted, g.handle)
	poll.Until(t, 15*time.Second-time.Since(killed), "the restarted replica gets what the killed one held within 15 s", func() bool { return g.count() == 10 })
	t.Logf("held messages back %v after the kill", time.Since(killed).Round(10*time.Millisecond))
}

// An API process on the connector's host (faasd, the test bed, mailbox
// serve) does not take the id a restarted connector needs: the default
// id names the role, so the restarted connector replaces its dead
// predecessor's registration at once. Fault with one default id for both
// roles: the API held it, each connector start took a random id beside
// it, and the dead one kept its messages until the server's heartbeats
// or the ack wait.
func TestRestartedConnectorBesideAnAPI(t *testing.T) {
	t.Parallel()
	srv := stanservertest.StartWith(t, stanserver.Options{HeartbeatInterval: 30 * time.Second, HeartbeatTimeout: 10 * time.Second, HeartbeatFailCount: 10})
	api := openAs(t, srv.URL(), "", "api")
	killHoldingAs(t, api, srv.URL(), "", "connector", 10)
	killed := time.Now()

	restarted := openAs(t, srv.URL(), "", "connector")
	var g gotten
	consumeUntilEnd(t, restarted, g.handle)
	poll.Until(t, 15*time.Second-time.Since(killed), "the restarted connector gets what the killed one held within 15 s", func() bool { return g.count() == 10 })
	t.Logf("held messages back %v after the kill", time.Since(killed).Round(10*time.Millisecond))
}

// A replica SIGKILLed for good (its pod deleted): the embedded server's
// heartbeats drop it and hand what it held to the other replica within
// 15 s, far inside the ack wait.
func TestKilledReplicaMessagesGoToTheOther(t *testing.T) {
	t.Parallel()
	srv := stanservertest.Start(t)
	producer := openRecovery(t, srv.URL(), "producer")
	other := openRecovery(t, srv.URL(), "other")
	var g gotten
	// The other replica joins the queue group only after the dying one has
	// taken every message.
	killHolding(t, producer, srv.URL(), "dying", 10)
	killed := time.Now()
	consumeUntilEnd(t, other, g.handle)
	poll.Until(t, 15*time.Second-time.Since(killed), "the other replica gets what the killed one held within 15 s", func() bool { return g.count() == 10 })
	t.Logf("held messages back %v after the kill", time.Since(killed).Round(10*time.Millisecond))
}

// After NATS Streaming restarts (a file store: it recovers this client and
// its subscriptions), new messages reach the consumer within seconds, not
// after the ready channel's ack wait (about 2 minutes here, as by
// default). The consumer holds a full window when the server stops.
//
// "handled while down": the handler finishes what it held while the
// server is down, so every acknowledgement fails (no reconnect buffer).
// The server still counts those messages in flight, the window stays full
// and nothing new is sent until the ack wait passes. Fault on the old
// code: the probe waited for the ack wait.
//
// "held across the restart": the handler finishes only after the client
// has reconnected. The server sends what the subscription held again as
// soon as it starts, before the client has reconnected (so into nothing),
// but the client still holds the messages and its acknowledgements, now
// sent, free the window: on the old code already no stall.
func TestNoStallAfterServerRestart(t *testing.T) {
	t.Parallel()
	for _, handledWhileDown := range []bool{true, false} {
		name := map[bool]string{true: "handled while down", false: "held across the restart"}[handledWhileDown]
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			srv := stanservertest.Start(t)
			producer := openRecovery(t, srv.URL(), "producer")
			q := openRecovery(t, srv.URL(), "consumer")
			gate := make(chan struct{})
			var g gotten
			var started atomic.Int64
			consumeUntilEnd(t, q, func(ctx context.Context, e *envelope.Envelope) error {
				started.Add(1)
				select {
				case <-gate:
				case <-ctx.Done():
					return ctx.Err()
				}
				return g.handle(ctx, e)
			})
			ids := make([]string, 200)
			for i := range ids {
				ids[i] = fmt.Sprintf("load%03d", i)
			}
			scheduleNow(t, producer, ids...)
			poll.Until(t, 15*time.Second, "the consumer calls as many as it may", func() bool { return started.Load() == 16 })

			if handledWhileDown {
				srv.Stop()
				close(gate)
				// The 16 being handled and the 64 more the window holds.
				poll.Until(t, 15*time.Second, "the held messages handled while the server is down", func() bool { return g.count() >= 80 })
				srv.Restart(t)
			} else {
				srv.Restart(t)
				poll.Until(t, 15*time.Second, "client reconnects", q.Connected)
				close(gate)
			}
			restarted := time.Now()
			poll.Until(t, 15*time.Second, "producer reconnects", producer.Connected)
			poll.Until(t, 15*time.Second, "schedule after the restart", func() bool {
				return producer.Schedule(context.Background(), &envelope.Envelope{ID: "probe", Function: "fn", AcceptedAt: time.Now().UTC(), DueAt: time.Now()}) == nil
			})
			poll.Until(t, 15*time.Second-time.Since(restarted), "a message scheduled after the restart delivered within 15 s", func() bool { return g.has("probe") })
			t.Logf("probe delivered %v after the restart; %d messages handled twice by then", time.Since(restarted).Round(10*time.Millisecond), g.twice())
		})
	}
}

// The status index's link loses what the server sends it, then breaks,
// too briefly for the server to drop the client: the index reads the
// channel again once reconnected and has the status at once. Fault on
// the code before d3e66bc: the server counted the lost status as sent
// and sent it again only after the subscription's ack wait (30 s), so
// lookups answered the older status meanwhile. The index's publish
// timeout is a minute so that the marker's publish ack, when it is lost
// too, cannot end the index's subscription within the bound either.
func TestStatusIndexCatchesUpAfterReconnect(t *testing.T) {
	t.Parallel()
	b := setupIndexBehindProxy(t)
	b.record(t, b.probe, status.Waiting)
	poll.Until(t, 15*time.Second, "the index has the first status", func() bool { return b.state(b.probe.ID) == status.Waiting })

	broken := b.loseThenBreak(t)
	// Within the ack wait, by a margin a busy machine keeps.
	poll.Until(t, 10*time.Second, "the index has the second status", func() bool { return b.state(b.probe.ID) == status.InFlight })
	t.Logf("the index had the status sent into the broken connection %v after the break", time.Since(broken).Round(time.Millisecond))
}

// After a reconnect the status index reads only what came after the
// last status it had before the link went down, not the whole channel
// again, and keeps what it knew: with 1,000 statuses in the channel, the
// server sends it less than a tenth of what the first replay took.
// Fault on d3e66bc: every reconnect replayed the whole channel (on a
// flapping link with a million statuses, lookups might never answer).
func TestStatusIndexCatchUpReadsOnlyWhatWasLost(t *testing.T) {
	t.Parallel()
	b := setupIndexBehindProxy(t)
	const n = 1000
	for i := range n {
		e := &envelope.Envelope{ID: fmt.Sprintf("earlier-%d", i), Function: "fn", AcceptedAt: time.Now().UTC(), DueAt: time.Now().Add(time.Hour)}
		if err := b.producer.RecordStatus(context.Background(), status.Of(e, status.Waiting, time.Now())); err != nil {
			t.Fatal(err)
		}
	}
	b.record(t, b.probe, status.Waiting)
	poll.Until(t, 15*time.Second, "the index has the first status", func() bool { return b.state(b.probe.ID) == status.Waiting })
	replayed := b.proxy.ToClients()

	b.loseThenBreak(t)
	sent := b.proxy.ToClients()
	poll.Until(t, 15*time.Second, "the index has the second status", func() bool { return b.state(b.probe.ID) == status.InFlight })
	caughtUp := b.proxy.ToClients() - sent
	t.Logf("the first replay took %d bytes from the server, the catch-up after the reconnect %d", replayed, caughtUp)
	if caughtUp > replayed/10 {
		t.Errorf("the catch-up after the reconnect took %d bytes from the server, the replay of the whole channel %d: it read the channel again", caughtUp, replayed)
	}
	for _, id := range []string{"earlier-0", fmt.Sprintf("earlier-%d", n-1)} {
		if got := b.state(id); got != status.Waiting {
			t.Errorf("status of %s after the reconnect: %s, want %s", id, got, status.Waiting)
		}
	}
}

// indexBehindProxy is a process answering lookups (its status index)
// through a servertest.Proxy, and a producer connected directly.
type indexBehindProxy struct {
	proxy           *servertest.Proxy
	index, producer *stan.Queue
	probe           *envelope.Envelope
}

func setupIndexBehindProxy(t *testing.T) *indexBehindProxy {
	t.Helper()
	srv := stanservertest.Start(t)
	b := &indexBehindProxy{proxy: servertest.StartProxy(t, srv.URL()), probe: &envelope.Envelope{ID: "probe", Function: "fn", AcceptedAt: time.Now().UTC(), DueAt: time.Now().Add(time.Hour)}}
	o := recoveryOptions(b.proxy.URL(), slog.New(slog.NewTextHandler(t.Output(), nil)))
	o.PublishTimeout = time.Minute
	index, err := stan.Open(stan.Options{Options: o, ClientID: "api"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = index.Close() })
	poll.Until(t, 10*time.Second, "the index's client connects", index.Connected)
	b.index = index
	b.producer = openRecovery(t, srv.URL(), "producer")
	return b
}

// state is id's state in the index, or the error looking it up.
func (b *indexBehindProxy) state(id string) string {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	s, err := b.index.Status(ctx, id)
	if err != nil {
		return err.Error()
	}
	return s.State
}

func (b *indexBehindProxy) record(t *testing.T, e *envelope.Envelope, st string) {
	t.Helper()
	if err := b.producer.RecordStatus(context.Background(), status.Of(e, st, time.Now())); err != nil {
		t.Fatal(err)
	}
}

// loseThenBreak records the probe in flight while the index's link loses
// every byte, waits for the server to have sent it into the link, then
// breaks the link; it returns when it broke it.
func (b *indexBehindProxy) loseThenBreak(t *testing.T) time.Time {
	t.Helper()
	b.proxy.Drop()
	b.record(t, b.probe, status.InFlight)
	poll.Until(t, 15*time.Second, "the server sends the index the second status, lost", func() bool {
		return b.proxy.Dropped([]byte(`"status":"` + status.InFlight + `"`))
	})
	b.proxy.Break()
	broken := time.Now()
	poll.Until(t, 15*time.Second, "the index reconnects", b.index.Connected)
	return broken
}

// A NATS Streaming store that is reset (a server on --store memory
// restarted, as OpenFaaS CE's; a wiped file store) starts its channels at
// sequence 1 again. The dead-letter index and the status index see the
// reset and rebuild themselves: they list the dead letters stored after
// it, not those that are gone, and count no message that is gone. Fault
// on the old code: the dead-letter index skipped every record at or below
// the last sequence it had seen, listing the gone ones and hiding the new
// one, and the status index kept counting a message that was gone.
func TestStoreResetRebuildsIndexes(t *testing.T) {
	t.Parallel()
	srv := stanservertest.StartWith(t, stanserver.Options{Memory: true})
	log := slog.New(slog.NewTextHandler(t.Output(), nil))
	q := openRecovery(t, srv.URL(), "api")
	store, err := deadletter.New(deadletter.Options{Queue: q, Limit: 100, Registerer: prometheus.NewRegistry(), Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = store.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })

	listed := func() string {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		page, err := store.List(ctx, deadletter.Filter{}, 0, 100)
		if err != nil {
			return err.Error()
		}
		var ids []string
		for _, e := range page.Items {
			ids = append(ids, e.ID)
		}
		return strings.Join(ids, " ")
	}
	waiting := func() string {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		counts, err := q.Waiting(ctx)
		if err != nil {
			return err.Error()
		}
		return fmt.Sprint(counts)
	}
	kill := func(id string) {
		t.Helper()
		e := &envelope.Envelope{ID: id, Function: "fn", Body: []byte(id), AcceptedAt: time.Now().UTC(), DueAt: time.Now(),
			Reason: envelope.ReasonMaxRetries, DeadAt: time.Now().UTC()}
		poll.Until(t, 15*time.Second, "dead letter "+id+" stored", func() bool { return q.DeadLetter(context.Background(), e) == nil })
	}
	wait := func(fn, id string) {
		t.Helper()
		e := &envelope.Envelope{ID: id, Function: fn, AcceptedAt: time.Now().UTC(), DueAt: time.Now().Add(time.Hour)}
		poll.Until(t, 15*time.Second, "status of "+id+" stored", func() bool {
			return q.RecordStatus(context.Background(), status.Of(e, status.Waiting, time.Now())) == nil
		})
	}

	for _, id := range []string{"old1", "old2", "old3"} {
		kill(id)
	}
	wait("gone", "old")
	until := func(what, want string, read func() string) {
		t.Helper()
		deadline := time.Now().Add(15 * time.Second)
		for got := read(); got != want; got = read() {
			if time.Now().After(deadline) {
				t.Fatalf("%s: %q, want %q", what, got, want)
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	until("dead letters listed before the reset", "old3 old2 old1", listed)
	until("messages counted before the reset", "map[gone:1]", waiting)

	srv.Restart(t) // on a memory store: everything is gone
	poll.Until(t, 15*time.Second, "client reconnects", q.Connected)
	kill("new1")
	wait("fn", "new1")
	wait("fn", "new2")
	until("messages counted after the reset", "map[fn:2]", waiting)
	until("dead letters listed after the reset", "new1", listed)
}

// After a reset, a log that has grown past the last seq a follower read
// still reads as reset: the record at that seq is another one (its server
// time differs). Fault it guards: following on from that seq would skip
// the new records before it.
func TestFollowAfterResetPastLastSeq(t *testing.T) {
	t.Parallel()
	srv := stanservertest.StartWith(t, stanserver.Options{Memory: true})
	q := openRecovery(t, srv.URL(), "api")
	store := func(n int, prefix string) {
		t.Helper()
		for i := range n {
			e := &envelope.Envelope{ID: fmt.Sprintf("%s%d", prefix, i), Function: "fn", AcceptedAt: time.Now().UTC(), DueAt: time.Now(),
				Reason: envelope.ReasonMaxRetries, DeadAt: time.Now().UTC()}
			poll.Until(t, 15*time.Second, "dead letter stored", func() bool { return q.DeadLetter(context.Background(), e) == nil })
		}
	}
	follow := func(after uint64, n int) (last uint64, err error) {
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		var mu sync.Mutex
		seen := 0
		done := make(chan error, 1)
		go func() {
			done <- q.FollowDeadLetters(ctx, after, func(r queue.Record) {
				mu.Lock()
				defer mu.Unlock()
				seen, last = seen+1, r.Seq
				if seen == n {
					cancel()
				}
			})
		}()
		select {
		case err = <-done:
		case <-time.After(15 * time.Second):
			t.Fatal("FollowDeadLetters did not return")
		}
		mu.Lock()
		defer mu.Unlock()
		return last, err
	}
	store(3, "old")
	last, err := follow(0, 3)
	if last != 3 {
		t.Fatalf("followed up to %d (%v), want 3", last, err)
	}
	srv.Restart(t) // on a memory store: everything is gone
	poll.Until(t, 15*time.Second, "client reconnects", q.Connected)
	store(5, "new")
	if _, err := follow(last, 5); !errors.Is(err, queue.ErrLogReset) {
		t.Fatalf("following on from %d after a reset: %v, want ErrLogReset", last, err)
	}
}

// Two live processes on one host share the default client id: the second
// cannot replace the first (the server finds it alive), so it takes a
// random suffix and both work. Fault it guards: a second process that
// never connects, or one that takes the id from a live one.
func TestTwoProcessesOnOneHost(t *testing.T) {
	t.Parallel()
	srv := stanservertest.Start(t)
	first := openRecovery(t, srv.URL(), "")
	second := openRecovery(t, srv.URL(), "")
	var a, b gotten
	consumeUntilEnd(t, first, a.handle)
	consumeUntilEnd(t, second, b.handle)
	scheduleNow(t, first, "from-first")
	scheduleNow(t, second, "from-second")
	poll.Until(t, 15*time.Second, "both messages delivered", func() bool { return a.count()+b.count() == 2 })
	if !first.Connected() || !second.Connected() {
		t.Fatal("one of the two lost its connection: the id was taken from a live process")
	}
}
