package bed

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// fakes stand in for components in TestStartFailureStopsEverything: the
// test binary, started through a symlink named after a fake, listens
// where that component would, prints its ready line and waits for
// SIGTERM.
var fakes = map[string]struct{ addr, ready string }{
	"fake-nats-streaming": {hostPort(NATSStreamingURL), "Streaming Server is ready"},
	"fake-provider":       {"127.0.0.1:" + strconv.Itoa(providerPort), "listening"},
}

func hostPort(u string) string {
	p, err := url.Parse(u)
	if err != nil {
		panic(err)
	}
	return p.Host
}

func TestMain(m *testing.M) {
	if fake, ok := fakes[filepath.Base(os.Args[0])]; ok {
		os.Exit(runFake(fake.addr, fake.ready))
	}
	if isNamespaceInit() {
		os.Exit(namespaceInit())
	}
	os.Exit(m.Run())
}

func runFake(addr, ready string) int {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM)
	defer stop()
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer ln.Close()
	fmt.Println(ready)
	<-ctx.Done()
	return 0
}

func TestStartRefusesUnknownBackend(t *testing.T) {
	if b, err := Start(t.Context(), Config{Backend: "kafka"}); err == nil || b != nil {
		t.Fatalf("Start with backend kafka = %v, %v; want an error", b, err)
	}
}

// A bed that fails half-way stops what it started: nothing keeps running
// or listening on the bed's fixed addresses for the next bed.
func TestStartFailureStopsEverything(t *testing.T) {
	if inner, _ := inOwnNamespaces(t); !inner {
		return
	}
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	bin := Binaries{Tools: Tools{Gateway: filepath.Join(dir, "no-gateway")}}
	for name, path := range map[string]*string{"fake-nats-streaming": &bin.StreamingServer, "fake-provider": &bin.Provider} {
		*path = filepath.Join(dir, name)
		if err := os.Symlink(self, *path); err != nil {
			t.Fatal(err)
		}
	}

	bin.Stack = filepath.Join(dir, "stack.yml")
	if err := os.WriteFile(bin.Stack, []byte("version: 1.0\nprovider:\n  name: openfaas\nfunctions: {}\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	b, err := Start(t.Context(), Config{Backend: Stan, Bin: bin, Dir: dir, Log: t.Output()})
	if err == nil || b != nil || !strings.Contains(err.Error(), "no-gateway") {
		t.Fatalf("Start = %v, %v; want the gateway's missing binary", b, err)
	}
	for _, addr := range []string{prometheusAddress, apiAddress, fakes["fake-nats-streaming"].addr, fakes["fake-provider"].addr} {
		if c, err := net.DialTimeout("tcp", addr, time.Second); err == nil {
			c.Close()
			t.Errorf("%s still accepts connections", addr)
		}
	}
	if kids := children(t); len(kids) > 0 {
		t.Errorf("processes %v still run", kids)
	}
}

// A process the bed leaves running is killed when the bed exits, however
// it exits: it is in the bed's pid namespace, which ends with it.
func TestLeftoversDieWithTheBed(t *testing.T) {
	if inner, out := inOwnNamespaces(t); !inner {
		pid := loggedPID(t, out)
		if err := syscall.Kill(pid, 0); !errors.Is(err, syscall.ESRCH) {
			t.Fatalf("pid %d left running by the bed: signal 0 = %v, want ESRCH", pid, err)
		}
		return
	}
	// Started and forgotten: never stopped nor waited for.
	pid := startShell(t, printHostPID+"; exec sleep 600")
	t.Logf("pid %d", pid)
}

// A process whose parent exits is re-parented to the namespace's pid 1,
// which reaps it when it exits instead of leaving a zombie.
func TestOrphansAreReaped(t *testing.T) {
	if inner, _ := inOwnNamespaces(t); !inner {
		return
	}
	// The subshell outlives its parent, then exits in turn.
	orphan := startShell(t, "("+printHostPID+"; exec sleep 0.2) & exit 0")
	deadline := time.Now().Add(10 * time.Second)
	for {
		stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", orphan))
		if errors.Is(err, os.ErrNotExist) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("orphan %d not reaped after 10s: %s (%v)", orphan, stat, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// printHostPID prints the pid of the shell that runs it as the machine
// sees it (/proc is the machine's).
const printHostPID = "read pid rest < /proc/self/stat; echo $pid"

// startShell starts sh -c script, which must print a pid first, and
// returns that pid.
func startShell(t *testing.T, script string) int {
	t.Helper()
	cmd := exec.Command("sh", "-c", script)
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	var pid int
	if _, err := fmt.Fscan(out, &pid); err != nil {
		t.Fatal(err)
	}
	return pid
}

var pidLine = regexp.MustCompile(`bed_test.go:\d+: pid (\d+)`)

// loggedPID is the pid the inner run of the test logged in its output.
func loggedPID(t *testing.T, out string) int {
	t.Helper()
	m := pidLine.FindStringSubmatch(out)
	if m == nil {
		t.Fatalf("the inner run logged no pid:\n%s", out)
	}
	pid, _ := strconv.Atoi(m[1])
	return pid
}

// inOwnNamespaces runs the calling test again in namespaces of its own, as
// runInOwnNamespaces does, and reports whether this process is that inner
// run, which alone may go on; the outer run gets its output. The outer
// run fails when the inner one does, or skips without root.
func inOwnNamespaces(t *testing.T) (inner bool, out string) {
	t.Helper()
	if isBed() {
		return true, ""
	}
	cmd, err := ownNamespacesCommand([]string{"-test.run=^" + t.Name() + "$", "-test.v"})
	if err != nil {
		t.Fatal(err)
	}
	b, err := cmd.CombinedOutput()
	switch {
	case errors.Is(err, syscall.EPERM):
		t.Skip("needs root for namespaces of its own")
	case err != nil:
		t.Fatalf("in namespaces of its own: %v\n%s", err, b)
	}
	return false, string(b)
}

// children lists this process's child processes.
func children(t *testing.T) []string {
	t.Helper()
	files, err := filepath.Glob("/proc/self/task/*/children")
	if err != nil {
		t.Fatal(err)
	}
	var pids []string
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		pids = append(pids, strings.Fields(string(b))...)
	}
	return pids
}
