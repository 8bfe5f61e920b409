package jetstream_test

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"os/exec"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	natsjs "github.com/nats-io/nats.go/jetstream"

	"github.com/openfaas/mailbox/internal/envelope"
	"github.com/openfaas/mailbox/internal/jsserver/jsservertest"
	"github.com/openfaas/mailbox/internal/poll"
	"github.com/openfaas/mailbox/internal/queue"
	"github.com/openfaas/mailbox/internal/queue/jetstream"
)

// connectorHandlerTimeout is the connector's handler timeout with the
// default upstream_timeout (30 s): 2 × upstream_timeout + 5 s.
const connectorHandlerTimeout = 65 * time.Second

// recoveryBound is the most a message held by a connector that died may
// wait before another connector gets it (issue 12).
const recoveryBound = 15 * time.Second

// childEnv, when set, makes the test binary a connector process that a
// test can SIGKILL (runChild); its value says what the handler does.
const (
	childEnv    = "MAILBOX_JETSTREAM_TEST_CHILD"
	childURLEnv = "MAILBOX_JETSTREAM_TEST_URL"
)

func TestMain(m *testing.M) {
	if mode := os.Getenv(childEnv); mode != "" {
		os.Exit(runChild(mode, os.Getenv(childURLEnv)))
	}
	os.Exit(m.Run())
}

// runChild consumes with the connector's default handler timeout. Its
// handler never returns before the parent kills the process: with mode
// "hold" it only says "holding <id>"; with mode "retry", for a first
// attempt, it first stores the next attempt (as the connector does for a
// failed call) and says "stored <id> <Schedule's error>".
func runChild(mode, url string) int {
	q, err := jetstream.Open(jetstream.Options{Options: queue.Options{
		URL:            url,
		HandlerTimeout: connectorHandlerTimeout,
		Logger:         slog.New(slog.NewTextHandler(os.Stderr, nil)),
	}})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	var out sync.Mutex
	say := func(format string, args ...any) {
		out.Lock()
		defer out.Unlock()
		fmt.Printf(format+"\n", args...)
	}
	_ = q.Consume(context.Background(), func(ctx context.Context, e *envelope.Envelope) error {
		if mode == "retry" && e.Retries == 0 {
			say("stored %s %v", e.ID, q.Schedule(ctx, nextAttempt(e)))
		} else {
			say("holding %s", e.ID)
		}
		<-ctx.Done()
		return ctx.Err()
	})
	return 0
}

// nextAttempt is e's retry, due soon, as the connector stores it after a
// failed call.
func nextAttempt(e *envelope.Envelope) *envelope.Envelope {
	next := *e
	next.Retries++
	next.LastStatus = 500
	next.DueAt = time.Now().UTC().Add(500 * time.Millisecond)
	return &next
}

// child is a connector process started by startChild.
type child struct {
	cmd   *exec.Cmd
	lines chan string // what its handler says, one line each
}

func startChild(t *testing.T, url, mode string) *child {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), childEnv+"="+mode, childURLEnv+"="+url)
	cmd.Stderr = t.Output()
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	c := &child{cmd: cmd, lines: make(chan string, 1000)}
	go func() {
		s := bufio.NewScanner(stdout)
		for s.Scan() {
			c.lines <- s.Text()
		}
		_, _ = io.Copy(io.Discard, stdout)
	}()
	t.Cleanup(c.kill)
	return c
}

// kill ends the process with SIGKILL, as the kernel's OOM killer or a
// node failure would: it acknowledges, gives back and closes nothing.
func (c *child) kill() {
	_ = c.cmd.Process.Signal(syscall.SIGKILL)
	_ = c.cmd.Wait()
}

// await returns the next n lines the child's handler says, failing the
// test if they take longer than timeout.
func (c *child) await(t *testing.T, n int, timeout time.Duration) []string {
	t.Helper()
	var got []string
	deadline := time.After(timeout)
	for len(got) < n {
		select {
		case l := <-c.lines:
			got = append(got, l)
		case <-deadline:
			t.Fatalf("child said %q in %v, want %d lines", got, timeout, n)
		}
	}
	return got
}

// openQueue opens a client with the connector's default handler timeout,
// closed when the test ends.
func openQueue(t *testing.T, url string) *jetstream.Queue {
	t.Helper()
	q, err := jetstream.Open(jetstream.Options{Options: queue.Options{
		URL:            url,
		HandlerTimeout: connectorHandlerTimeout,
		Logger:         slog.New(slog.NewTextHandler(t.Output(), nil)),
	}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = q.Close() })
	poll.Until(t, 10*time.Second, "client connects", q.Connected)
	return q
}

// consumeUntilCleanup runs q.Consume with h until the test ends.
func consumeUntilCleanup(t *testing.T, q *jetstream.Queue, h queue.Handler) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = q.Consume(ctx, h)
	}()
	t.Cleanup(func() {
		cancel()
		<-done
	})
}

func recoveryMessage(id string) *envelope.Envelope {
	return &envelope.Envelope{
		ID:         id,
		Function:   "fn",
		Header:     http.Header{},
		Body:       []byte(id),
		Policy:     envelope.Policy{MaxRetries: new(3)},
		AcceptedAt: time.Now().UTC(),
		DueAt:      time.Now().UTC(),
	}
}

// calls counts handler calls per message id and attempt.
type calls struct {
	mu sync.Mutex
	n  map[string]int
	at map[string]time.Time // first call
}

func newCalls() *calls { return &calls{n: map[string]int{}, at: map[string]time.Time{}} }

func (c *calls) add(e *envelope.Envelope) {
	c.mu.Lock()
	defer c.mu.Unlock()
	k := fmt.Sprintf("%s/%d", e.ID, e.Retries)
	c.n[k]++
	if _, ok := c.at[k]; !ok {
		c.at[k] = time.Now()
	}
}

func (c *calls) count(id string, attempt int) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.n[fmt.Sprintf("%s/%d", id, attempt)]
}

func (c *calls) first(id string, attempt int) time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.at[fmt.Sprintf("%s/%d", id, attempt)]
}

// consumerInfo asks the server about the shared durable consumer.
func consumerInfo(t *testing.T, url string) *natsjs.ConsumerInfo {
	t.Helper()
	info, err := jsservertest.ConsumerInfo(url)
	if err != nil {
		t.Fatal(err)
	}
	return info
}

// A connector SIGKILLed while its handler calls hold messages (with the
// connector's default handler timeout) does not keep them from the other
// connectors for long: they are delivered to another within 15 s of the
// kill. With an ack wait sized for the longest call (274 s) they waited
// that long.
func TestKilledConnectorsMessagesComeBackQuickly(t *testing.T) {
	t.Parallel()
	srv := jsservertest.Start(t)
	producer := openQueue(t, srv.URL())
	dead := startChild(t, srv.URL(), "hold")
	const n = 5
	for i := range n {
		if err := producer.Schedule(context.Background(), recoveryMessage(fmt.Sprintf("held%d", i))); err != nil {
			t.Fatal(err)
		}
	}
	dead.await(t, n, 30*time.Second)

	got := newCalls()
	consumeUntilCleanup(t, openQueue(t, srv.URL()), func(_ context.Context, e *envelope.Envelope) error {
		got.add(e)
		return nil
	})
	dead.kill()
	killed := time.Now()
	poll.Until(t, recoveryBound+5*time.Second, "messages of the killed connector delivered to the other", func() bool {
		for i := range n {
			if got.count(fmt.Sprintf("held%d", i), 0) == 0 {
				return false
			}
		}
		return true
	})
	var last time.Duration
	for i := range n {
		last = max(last, got.first(fmt.Sprintf("held%d", i), 0).Sub(killed))
	}
	t.Logf("last message back %v after the kill", last.Round(time.Millisecond))
	if last > recoveryBound {
		t.Fatalf("the last message came back %v after the kill, want within %v", last, recoveryBound)
	}
}

// A call longer than the ack wait (three times it) is not handed to a
// second connector while the first is still waiting on it: the consumer
// tells the server the message is in progress.
func TestSlowCallNotHandedToAnotherConnector(t *testing.T) {
	t.Parallel()
	srv := jsservertest.Start(t)
	producer := openQueue(t, srv.URL())
	got := newCalls()
	var ackWait atomic.Int64 // set before any call
	slow := func(ctx context.Context, e *envelope.Envelope) error {
		got.add(e)
		select {
		case <-time.After(3 * time.Duration(ackWait.Load())):
			return nil
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	// Two connectors, either of which may take the message, and which
	// the server would give it to again were its ack wait to pass.
	consumeUntilCleanup(t, openQueue(t, srv.URL()), slow)
	consumeUntilCleanup(t, openQueue(t, srv.URL()), slow)
	var info *natsjs.ConsumerInfo
	poll.Until(t, 10*time.Second, "consumer created", func() bool {
		info = consumerInfoOrNil(srv.URL())
		return info != nil
	})
	ackWait.Store(int64(info.Config.AckWait))
	t.Logf("ack wait %v", info.Config.AckWait)
	if err := producer.Schedule(context.Background(), recoveryMessage("slow")); err != nil {
		t.Fatal(err)
	}
	poll.Until(t, 10*time.Second, "slow call started", func() bool { return got.count("slow", 0) > 0 })
	started := got.first("slow", 0)
	call := 3 * info.Config.AckWait
	poll.Until(t, call+connectorHandlerTimeout, "slow call acknowledged", func() bool {
		info := consumerInfo(t, srv.URL())
		return info.NumAckPending == 0 && info.NumPending == 0
	})
	if took := time.Since(started); took < call {
		t.Fatalf("acknowledged %v after the call started, before the call (%v) could end", took, call)
	}
	if n := got.count("slow", 0); n != 1 {
		t.Fatalf("the slow message was handed to a connector %d times, want 1", n)
	}
	if info := consumerInfo(t, srv.URL()); info.NumRedelivered != 0 {
		t.Fatalf("the server delivered %d messages again, want none", info.NumRedelivered)
	}
}

func consumerInfoOrNil(url string) *natsjs.ConsumerInfo {
	info, _ := jsservertest.ConsumerInfo(url)
	return info
}

// A connector that stored a message's retry and was SIGKILLed before
// acknowledging the message: the message comes back to another connector,
// which stores the same retry again. The retry is stored once: its first
// copy has already been delivered (and removed from the work stream), so
// only the de-duplication window refuses the second, and the window (2
// minutes) is longer than the message took to come back. With an ack wait
// of 274 s it was not, and the retry was delivered twice.
func TestRetryStoredAgainAfterCrashStoredOnce(t *testing.T) {
	t.Parallel()
	srv := jsservertest.Start(t)
	producer := openQueue(t, srv.URL())
	dead := startChild(t, srv.URL(), "retry")
	if err := producer.Schedule(context.Background(), recoveryMessage("crash")); err != nil {
		t.Fatal(err)
	}
	said := dead.await(t, 1, 30*time.Second)[0]
	if said != "stored crash <nil>" {
		t.Fatalf("child said %q, want its retry stored", said)
	}
	dead.kill()

	q := openQueue(t, srv.URL())
	got := newCalls()
	var (
		mu    sync.Mutex
		again []error // Schedule of the retry after the redelivery
	)
	consumeUntilCleanup(t, q, func(ctx context.Context, e *envelope.Envelope) error {
		got.add(e)
		if e.Retries == 0 {
			// The first attempt, delivered again: its call fails again
			// and its retry is stored again, as the connector does.
			err := q.Schedule(ctx, nextAttempt(e))
			mu.Lock()
			again = append(again, err)
			mu.Unlock()
			if err != nil && !errors.Is(err, queue.ErrRepeat) {
				return err
			}
		}
		return nil
	})
	poll.Until(t, recoveryBound+5*time.Second, "first attempt delivered again and its retry stored again", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(again) > 0
	})
	mu.Lock()
	first := again[0]
	mu.Unlock()
	if !errors.Is(first, queue.ErrRepeat) {
		t.Fatalf("the retry stored again after the crash: Schedule = %v, want queue.ErrRepeat", first)
	}
	// Nothing else is waiting or held: the retry was not stored twice.
	poll.Until(t, 10*time.Second, "everything delivered and acknowledged", func() bool {
		info := consumerInfo(t, srv.URL())
		return info.NumAckPending == 0 && info.NumPending == 0
	})
	if n := got.count("crash", 1); n != 1 {
		t.Fatalf("the retry was delivered %d times, want 1", n)
	}
}
