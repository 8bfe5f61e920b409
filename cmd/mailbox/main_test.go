package main

// Tests of the standalone binary. The process tests start the real main()
// as a child process (TestMain runs it when childEnv is set), so that they
// can SIGKILL and SIGTERM it; the others call run in-process.

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"io"
	"log"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/openfaas/mailbox/internal/envelope"
	"github.com/openfaas/mailbox/internal/gatewaytest"
	"github.com/openfaas/mailbox/internal/jsserver/jsservertest"
	"github.com/openfaas/mailbox/internal/logtest"
	"github.com/openfaas/mailbox/internal/poll"
)

// childEnv, when set to 1, makes the test binary run main() instead of the
// tests: os.Args[1:] are then the mailbox's own arguments.
const childEnv = "MAILBOX_TEST_RUN_MAIN"

func TestMain(m *testing.M) {
	if os.Getenv(childEnv) == "1" {
		main()
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// startGateway runs a stand-in for the OpenFaaS gateway until the test
// ends; functions are deployed on it by each test.
func startGateway(t *testing.T) *gatewaytest.Gateway {
	t.Helper()
	g, err := gatewaytest.Start(gatewaytest.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(g.Stop)
	return g
}

// child is a mailbox serve process running the test binary's main().
type child struct {
	cmd    *exec.Cmd
	addr   string          // the API's address, read from the "mailbox serving" log line
	exited chan struct{}   // closed once the process has been waited for
	err    error           // Wait's result, set before exited closes
	log    *logtest.Buffer // the child's stderr
	// natsURL is the embedded server's address.
	natsURL string
}

// startChild runs `mailbox serve` on dataDir, delivering through
// gatewayURL, with env (name=value) over the test's settings, and returns once its API listens. The port is chosen by the
// kernel (--listen 127.0.0.1:0) and read from the log, so that parallel
// tests cannot race for a port. The process is killed when the test ends.
func startChild(t *testing.T, dataDir, gatewayURL, backend string, env ...string) *child {
	t.Helper()
	cmd := exec.Command(os.Args[0], "serve",
		"--backend", backend,
		"--listen", "127.0.0.1:0",
		"--data-dir", dataDir,
		"--gateway-url", gatewayURL,
		"--nats-url=", // embedded, whatever the test's own environment says
	)
	cmd.Env = append(os.Environ(),
		childEnv+"=1",
		"log_format=json",
		"log_level=info",
		"upstream_timeout=10s",
	)
	cmd.Env = append(cmd.Env, env...)
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	c := &child{cmd: cmd, exited: make(chan struct{}), log: &logtest.Buffer{}}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	addr := make(chan string, 1)
	natsURL := make(chan string, 1)
	copied := make(chan struct{})
	go func() {
		defer close(copied)
		s := bufio.NewScanner(stderr)
		s.Buffer(make([]byte, 64<<10), 1<<20)
		for s.Scan() {
			line := s.Bytes()
			c.log.Write(append(line, '\n'))
			var entry struct {
				Msg    string `json:"msg"`
				Listen string `json:"listen"`
				URL    string `json:"url"`
			}
			if json.Unmarshal(line, &entry) != nil {
				continue
			}
			if entry.Msg == "mailbox serving" && entry.Listen != "" {
				select {
				case addr <- entry.Listen:
				default:
				}
			}
			if entry.Msg == "embedded NATS server started" && entry.URL != "" {
				select {
				case natsURL <- entry.URL:
				default:
				}
			}
		}
		_, _ = io.Copy(io.Discard, stderr)
	}()
	go func() {
		<-copied // Wait closes the pipe: read it to the end first
		c.err = cmd.Wait()
		close(c.exited)
	}()
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		<-c.exited
		if t.Failed() {
			t.Logf("mailbox (pid %d) stderr:\n%s", cmd.Process.Pid, c.log.String())
		}
	})
	select {
	case c.addr = <-addr:
		c.natsURL = <-natsURL // logged before the API listens
	case <-c.exited:
		t.Fatalf("mailbox exited before serving: %v", c.err)
	case <-time.After(30 * time.Second):
		t.Fatal("mailbox did not log its address within 30s")
	}
	return c
}

func (c *child) url() string { return "http://" + c.addr }

func (c *child) health() int {
	res, err := http.Get(c.url() + "/healthz")
	if err != nil {
		return 0
	}
	res.Body.Close()
	return res.StatusCode
}

func (c *child) waitHealthy(t *testing.T) {
	t.Helper()
	poll.Until(t, 30*time.Second, "mailbox /healthz answers 200", func() bool { return c.health() == http.StatusOK })
}

// requeue POSTs a message for fn and requires a 202 carrying its id in
// both the header and the JSON answer.
func (c *child) requeue(t *testing.T, fn, body string, headers ...string) string {
	t.Helper()
	req, err := http.NewRequest(http.MethodPost, c.url()+"/deadletter/"+fn, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i+1 < len(headers); i += 2 {
		req.Header.Set(headers[i], headers[i+1])
	}
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	var a struct {
		Status string `json:"status"`
		ID     string `json:"id"`
	}
	raw, _ := io.ReadAll(res.Body)
	if err := json.Unmarshal(raw, &a); err != nil {
		t.Fatalf("answer %d is not JSON: %q", res.StatusCode, raw)
	}
	id := res.Header.Get(envelope.HeaderMessageID)
	if res.StatusCode != http.StatusAccepted || id == "" || id != a.ID {
		t.Fatalf("requeue answered %d, %s %q, body %s; want 202 with the message id in both",
			res.StatusCode, envelope.HeaderMessageID, id, raw)
	}
	return id
}

// wait returns the exit status once the process ends, or fails the test
// after timeout.
func (c *child) wait(t *testing.T, timeout time.Duration) int {
	t.Helper()
	select {
	case <-c.exited:
	case <-time.After(timeout):
		t.Fatalf("mailbox did not exit within %v", timeout)
	}
	var exit *exec.ExitError
	if c.err != nil && !errors.As(c.err, &exit) {
		t.Fatalf("wait: %v", c.err)
	}
	return c.cmd.ProcessState.ExitCode() // -1 if killed by a signal
}

func (c *child) signal(t *testing.T, sig os.Signal) {
	t.Helper()
	if err := c.cmd.Process.Signal(sig); err != nil {
		t.Fatal(err)
	}
}

func TestSIGKILLLosesNothing(t *testing.T) {
	t.Parallel()
	for _, backend := range backends {
		t.Run(backend, func(t *testing.T) {
			t.Parallel()
			testSIGKILLLosesNothing(t, backend)
		})
	}
}

// backends are the values of --backend.
var backends = []string{"stan", "jetstream"}

func testSIGKILLLosesNothing(t *testing.T, backend string) {
	gw := startGateway(t)
	steady := gatewaytest.Record(nil)
	gw.Deploy("steady", steady, nil)
	dir := t.TempDir()

	first := startChild(t, dir, gw.URL(), backend)
	first.waitHealthy(t)
	const n = 20
	want := map[string]bool{}
	for i := range n {
		want[first.requeue(t, "steady", strconv.Itoa(i), "X-Delay-Duration", "2")] = true
	}
	first.signal(t, syscall.SIGKILL)
	if code := first.wait(t, 10*time.Second); code != -1 {
		t.Fatalf("exit status %d after SIGKILL, want -1 (killed)", code)
	}
	if got := steady.Distinct(); got == n {
		t.Fatalf("all %d messages were delivered before the kill: nothing left to lose, the test proves nothing", n)
	}

	// A new process on the same data: it reads the store the killed one
	// left. The embedded server first waits for the dead client's
	// heartbeats to fail before it hands that client's messages on.
	second := startChild(t, dir, gw.URL(), backend)
	second.waitHealthy(t)
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("%d of %d messages delivered", steady.Distinct(), n)
		}
	})
	poll.Until(t, 60*time.Second, "every message accepted before the kill delivered", func() bool {
		got := map[string]bool{}
		for _, id := range steady.IDs() {
			got[id] = true
		}
		for id := range want {
			if !got[id] {
				return false
			}
		}
		return true
	})
}

func TestSIGTERMDrainsAndExitsCleanly(t *testing.T) {
	t.Parallel()
	for _, backend := range backends {
		t.Run(backend, func(t *testing.T) {
			t.Parallel()
			testSIGTERMDrainsAndExitsCleanly(t, backend)
		})
	}
}

func testSIGTERMDrainsAndExitsCleanly(t *testing.T, backend string) {
	gw := startGateway(t)
	// slow answers 200 after a second, counting the calls it finished and
	// those its caller gave up on first.
	var (
		mu            sync.Mutex
		done, aborted int
	)
	slow := gatewaytest.Record(func(w http.ResponseWriter, r *http.Request, _ int) {
		select {
		case <-time.After(time.Second):
			mu.Lock()
			done++
			mu.Unlock()
		case <-r.Context().Done():
			mu.Lock()
			aborted++
			mu.Unlock()
		}
	})
	gw.Deploy("slow", slow, nil)
	marker := gatewaytest.Record(nil)
	gw.Deploy("marker", marker, nil)
	dir := t.TempDir()

	first := startChild(t, dir, gw.URL(), backend)
	first.waitHealthy(t)
	id := first.requeue(t, "slow", "in flight", "X-Delay-Duration", "0")
	poll.Until(t, 15*time.Second, "slow function called", func() bool { return slow.Len() == 1 })
	first.signal(t, syscall.SIGTERM)
	if code := first.wait(t, 30*time.Second); code != 0 {
		t.Fatalf("exit status %d after SIGTERM, want 0", code)
	}
	mu.Lock()
	d, a := done, aborted
	mu.Unlock()
	if d != 1 || a != 0 {
		t.Fatalf("in-flight call: %d answered 200, %d abandoned; want it to finish once before the exit", d, a)
	}

	// Had the call not been acknowledged, the server would deliver it
	// again as soon as the new process joins the queue group, before any
	// newer message; the marker, due a second later, comes after it.
	second := startChild(t, dir, gw.URL(), backend)
	second.waitHealthy(t)
	markerID := second.requeue(t, "marker", "after restart", "X-Delay-Duration", "1")
	poll.Until(t, 30*time.Second, "marker delivered", func() bool { return marker.Len() == 1 })
	if calls := slow.IDs(); len(calls) != 1 || calls[0] != id {
		t.Fatalf("slow function called with %q, want only %q once: the drained call was delivered again", calls, id)
	}
	if got := marker.IDs(); got[0] != markerID {
		t.Fatalf("marker call carried id %q, want %q", got[0], markerID)
	}
	if backend == "jetstream" {
		// JetStream delivers an unacknowledged message again only after its
		// ack wait, so the marker proves nothing there: ask the server.
		poll.Until(t, 10*time.Second, "nothing left unacknowledged", func() bool {
			info := consumerInfo(t, second.natsURL)
			return info.NumAckPending == 0 && info.NumPending == 0 && info.NumRedelivered == 0
		})
	}
}

// consumerInfo describes the connectors' durable JetStream consumer.
func consumerInfo(t *testing.T, natsURL string) *jetstream.ConsumerInfo {
	t.Helper()
	info, err := jsservertest.ConsumerInfo(natsURL)
	if err != nil {
		t.Fatal(err)
	}
	return info
}

// runRejected calls run where it is expected to fail before serving. Should
// it serve after all (a regression), it does so in a temporary directory
// and stops at once, for its context is already cancelled; the test then
// fails on the nil error instead of hanging. Not parallel: it changes the
// working directory.
func runRejected(t *testing.T, args, environ []string) (stderr string, err error) {
	t.Helper()
	t.Chdir(t.TempDir())
	restoreLogging(t)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	var out logtest.Buffer
	err = run(ctx, args, environ, &out, nil)
	return out.String(), err
}

func TestRunRejectsUnknownCommand(t *testing.T) {
	for _, args := range [][]string{nil, {"bogus"}, {"--listen", "127.0.0.1:0"}} {
		stderr, err := runRejected(t, args, nil)
		if err == nil || !strings.Contains(err.Error(), "serve") {
			t.Errorf("run(%q) = %v, want an error asking for serve", args, err)
		}
		if !strings.Contains(stderr, "usage: mailbox serve") {
			t.Errorf("run(%q) printed %q, want the usage", args, stderr)
		}
	}
}

func TestRunBadFlagValueNamesSetting(t *testing.T) {
	_, err := runRejected(t, []string{"serve", "--max-inflight=abc"}, nil)
	if err == nil || !strings.Contains(err.Error(), `max_inflight: "abc"`) {
		t.Fatalf("run = %v, want an error naming max_inflight and its value", err)
	}
}

func TestRunUnexpectedArgument(t *testing.T) {
	_, err := runRejected(t, []string{"serve", "extra"}, nil)
	if err == nil || !strings.Contains(err.Error(), "extra") {
		t.Fatalf("run = %v, want an error naming the stray argument", err)
	}
}

func TestRunReadsSettingFromEnvironment(t *testing.T) {
	_, err := runRejected(t, []string{"serve"}, []string{"max_inflight=abc"})
	if err == nil || !strings.Contains(err.Error(), `max_inflight: "abc"`) {
		t.Fatalf("run = %v, want the error naming max_inflight from the environment", err)
	}
}

func TestRunFlagBeatsEnvironment(t *testing.T) {
	// An invalid flag over a valid env value: the flag's value is the one
	// checked.
	_, err := runRejected(t, []string{"serve", "--max-inflight=xyz"}, []string{"max_inflight=4"})
	if err == nil || !strings.Contains(err.Error(), `max_inflight: "xyz"`) {
		t.Fatalf("run = %v, want the flag's value rejected", err)
	}
	// A valid flag over an invalid env value hides it: only the other
	// (deliberately invalid) setting is reported.
	_, err = runRejected(t, []string{"serve", "--max-inflight=4", "--max-body-bytes=0"}, []string{"max_inflight=abc"})
	if err == nil || !strings.Contains(err.Error(), "max_body_bytes") || strings.Contains(err.Error(), "max_inflight") {
		t.Fatalf("run = %v, want only max_body_bytes reported: --max-inflight=4 must hide max_inflight=abc", err)
	}
}

// TestRunServesFromEnvironmentUntilCancelled runs the whole server
// in-process with every setting from the environment: the address it
// listens on (not the default 127.0.0.1:8090) and its text log show that
// the environment was read. It is not parallel: serve sets the process's
// default logger, which is restored afterwards, and it runs in a temporary
// working directory, where the default data_dir would go were the
// environment ignored.
func TestRunServesFromEnvironmentUntilCancelled(t *testing.T) {
	t.Chdir(t.TempDir())
	restoreLogging(t)
	gw := startGateway(t)
	environ := []string{
		"listen=127.0.0.1:0",
		"data_dir=" + t.TempDir(),
		"gateway_url=" + gw.URL(),
		"nats_url=",
		"log_format=text",
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var stderr logtest.Buffer
	addrs := make(chan string, 1)
	done := make(chan error, 1)
	go func() { done <- run(ctx, []string{"serve"}, environ, &stderr, func(addr string) { addrs <- addr }) }()

	var addr string
	select {
	case addr = <-addrs:
	case err := <-done:
		t.Fatalf("run returned before serving: %v\n%s", err, stderr.String())
	case <-time.After(30 * time.Second):
		t.Fatal("run did not report its address within 30s")
	}
	host, port, err := net.SplitHostPort(addr)
	if err != nil || host != "127.0.0.1" || port == "0" || port == "8090" {
		t.Fatalf("serving on %q, want 127.0.0.1 on a kernel-chosen port", addr)
	}
	poll.Until(t, 30*time.Second, "/healthz answers 200", func() bool {
		res, err := http.Get("http://" + addr + "/healthz")
		if err != nil {
			return false
		}
		res.Body.Close()
		return res.StatusCode == http.StatusOK
	})
	if !regexp.MustCompile(`(?m)^time=\S+ level=INFO msg="mailbox serving" listen=` + regexp.QuoteMeta(addr)).MatchString(stderr.String()) {
		t.Fatalf("log is not text with the address; got:\n%s", stderr.String())
	}

	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("run after cancel = %v, want nil", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("run did not return within 30s of its context ending")
	}
	if _, err := http.Get("http://" + addr + "/healthz"); err == nil {
		t.Fatal("still serving after run returned")
	}
}

// restoreLogging puts back the process's default slog logger and the
// standard logger's output, which serve replaces.
func restoreLogging(t *testing.T) {
	prev, out, flags := slog.Default(), log.Writer(), log.Flags()
	level := slog.SetLogLoggerLevel(slog.LevelInfo) // returns the level it replaces
	t.Cleanup(func() {
		slog.SetDefault(prev)
		log.SetOutput(out)
		log.SetFlags(flags)
		slog.SetLogLoggerLevel(level)
	})
}
