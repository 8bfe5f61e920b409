package bed

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"os/signal"
	"path/filepath"
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
	if !inOwnNetwork(t) {
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

// inOwnNetwork runs the calling test again in a network namespace of its
// own, and reports whether this process is that run: only then may the
// test go on. The outer run fails with the inner one's output, or skips
// without root.
func inOwnNetwork(t *testing.T) bool {
	t.Helper()
	if InOwnNetwork() {
		if err := LoopbackUp(); err != nil {
			t.Fatal(err)
		}
		return true
	}
	cmd, err := ownNetworkCommand([]string{"-test.run=^" + t.Name() + "$", "-test.v"})
	if err != nil {
		t.Fatal(err)
	}
	out, err := cmd.CombinedOutput()
	switch {
	case errors.Is(err, syscall.EPERM):
		t.Skip("needs root for a network namespace of its own")
	case err != nil:
		t.Fatalf("in its own network namespace: %v\n%s", err, out)
	}
	return false
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
