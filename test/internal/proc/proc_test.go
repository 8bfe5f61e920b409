package proc

import (
	"bytes"
	"context"
	"errors"
	"net"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// sh starts sh -c script with PATH and GREETING only, and stops it when
// the test ends.
func sh(t *testing.T, o Options, script string) *Process {
	t.Helper()
	p, err := o.Start("sh", "sh", []string{"PATH=" + os.Getenv("PATH"), "GREETING=hi"}, "-c", script)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = p.Stop(5 * time.Second) })
	return p
}

func TestLogFieldAndStop(t *testing.T) {
	t.Setenv("HOME", "/inherited") // must not reach the process
	var tee bytes.Buffer
	p := sh(t, Options{Tee: &tee}, `echo 'not json'
echo "{\"msg\":\"ready\",\"url\":\"x\",\"port\":4222,\"greeting\":\"$GREETING\",\"home\":\"${HOME:-unset}\"}"
exec sleep 30`)
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	for field, want := range map[string]string{"url": "x", "port": "4222", "greeting": "hi", "home": "unset"} {
		got, err := p.LogField(ctx, "ready", field)
		if err != nil || got != want {
			t.Errorf("LogField(ready, %s) = %q, %v; want %q", field, got, err, want)
		}
	}
	if p.Exited() {
		t.Fatal("exited before Stop")
	}
	if err := p.Stop(5 * time.Second); err != nil {
		t.Errorf("Stop: %v", err)
	}
	if !p.Exited() {
		t.Error("not exited after Stop")
	}
	select {
	case <-p.Done():
	default:
		t.Error("Done not closed after Stop")
	}
	if err := p.Wait(time.Second); err == nil || !strings.Contains(err.Error(), "terminated") {
		t.Errorf("Wait after SIGTERM = %v, want the signal", err)
	}
	if err := p.Signal(syscall.SIGTERM); !errors.Is(err, os.ErrProcessDone) {
		t.Errorf("Signal after exit = %v, want os.ErrProcessDone", err)
	}
	if tee.String() != p.Output() || !strings.HasPrefix(tee.String(), "not json\n") {
		t.Errorf("tee got %q, output is %q", tee.String(), p.Output())
	}
}

func TestStopKillsAfterGrace(t *testing.T) {
	// An ignored signal stays ignored across exec.
	p := sh(t, Options{}, `trap '' TERM; echo '{"msg":"trapped","ok":true}'; exec sleep 30`)
	if v, err := p.LogField(t.Context(), "trapped", "ok"); err != nil || v != "true" {
		t.Fatalf("LogField = %q, %v", v, err)
	}
	start := time.Now()
	if err := p.Stop(200 * time.Millisecond); err == nil || !strings.Contains(err.Error(), "killed") {
		t.Errorf("Stop = %v, want killed", err)
	}
	if !p.Exited() || time.Since(start) > 5*time.Second {
		t.Errorf("exited %v after %s", p.Exited(), time.Since(start))
	}
}

func TestLogFieldFails(t *testing.T) {
	exits := sh(t, Options{}, `echo '{"msg":"other","url":"x"}'; exit 3`)
	start := time.Now()
	if _, err := exits.LogField(t.Context(), "ready", "url"); err == nil || !strings.Contains(err.Error(), "exited") {
		t.Errorf("LogField on a process that exits = %v", err)
	}
	if time.Since(start) > 5*time.Second {
		t.Errorf("LogField took %s to see the exit", time.Since(start))
	}
	if err := exits.Wait(time.Second); err == nil || !strings.Contains(err.Error(), "exit status 3") {
		t.Errorf("Wait = %v, want exit status 3", err)
	}

	runs := sh(t, Options{}, `exec sleep 30`)
	ctx, cancel := context.WithTimeout(t.Context(), 100*time.Millisecond)
	defer cancel()
	if _, err := runs.LogField(ctx, "ready", "url"); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("LogField past the deadline = %v", err)
	}
	if err := runs.Wait(50 * time.Millisecond); err == nil || !strings.Contains(err.Error(), "still running") {
		t.Errorf("Wait on a running process = %v", err)
	}
}

func TestWaitListening(t *testing.T) {
	addr, err := FreeAddr()
	if err != nil {
		t.Fatal(err)
	}
	exits := sh(t, Options{}, `exit 0`)
	start := time.Now()
	if err := WaitListening(addr, 10*time.Second, exits); err == nil || time.Since(start) > 5*time.Second {
		t.Errorf("WaitListening for a process that exits = %v after %s", err, time.Since(start))
	}

	ln, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	if err := WaitListening(addr, 5*time.Second, nil); err != nil {
		t.Errorf("WaitListening with a listener: %v", err)
	}
}

func TestStartFails(t *testing.T) {
	if p, err := Start("missing", "/nonexistent/program", nil); err == nil {
		_ = p.Stop(time.Second)
		t.Fatal("started a missing program")
	}
}

func TestEnviron(t *testing.T) {
	got := Environ(map[string]string{"b": "2", "a": "1=x"})
	if strings.Join(got, " ") != "a=1=x b=2" {
		t.Errorf("Environ = %q", got)
	}
}

func TestWaitOutput(t *testing.T) {
	p := sh(t, Options{}, `echo starting; sleep 0.1; echo 'Server is ready'; exec sleep 30`)
	if err := p.WaitOutput(t.Context(), "Server is ready"); err != nil {
		t.Fatal(err)
	}
	exits := sh(t, Options{}, `echo other; exit 1`)
	if err := exits.WaitOutput(t.Context(), "Server is ready"); err == nil || !strings.Contains(err.Error(), "exited") {
		t.Errorf("WaitOutput on a process that exits = %v", err)
	}
}

func TestOutputSince(t *testing.T) {
	gate := filepath.Join(t.TempDir(), "gate")
	p := sh(t, Options{}, `echo before; while [ ! -e '`+gate+`' ]; do sleep 0.01; done; echo after; exec sleep 30`)
	if err := p.WaitOutput(t.Context(), "before"); err != nil {
		t.Fatal(err)
	}
	mark := p.Written()
	if got := p.OutputSince(mark); got != "" {
		t.Errorf("OutputSince(mark) = %q before anything more was written", got)
	}
	if err := os.WriteFile(gate, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := p.WaitOutput(t.Context(), "after"); err != nil {
		t.Fatal(err)
	}
	if got := p.OutputSince(mark); got != "after\n" {
		t.Errorf("OutputSince(mark) = %q, want after", got)
	}
	if got := p.OutputSince(0); got != "before\nafter\n" {
		t.Errorf("OutputSince(0) = %q, want it all", got)
	}
}

func TestOutputKeepsTheEnd(t *testing.T) {
	// 3 MiB of x, then a last line: the end is kept, within the bound.
	p := sh(t, Options{}, `head -c 3145728 /dev/zero | tr '\0' x; echo; echo last`)
	if err := p.Wait(10 * time.Second); err != nil {
		t.Fatal(err)
	}
	out := p.Output()
	if len(out) != maxOutput || !strings.HasSuffix(out, "x\nlast\n") {
		t.Errorf("kept %d bytes ending %q, want %d ending with the last line", len(out), out[max(0, len(out)-10):], maxOutput)
	}
}

func TestLineWriter(t *testing.T) {
	var lines []string
	w := &LineWriter{Line: func(l string) { lines = append(lines, l) }}
	for _, s := range []string{"one\r\ntw", "o\n", "\nthr", "ee"} {
		if n, err := w.Write([]byte(s)); n != len(s) || err != nil {
			t.Fatalf("Write(%q) = %d, %v", s, n, err)
		}
	}
	w.Flush()
	w.Flush()
	if got := strings.Join(lines, "|"); got != "one|two||three" {
		t.Errorf("lines %q, want one|two||three", got)
	}
	// Started with a LineWriter as Tee, the process's unterminated last
	// line arrives once it has exited.
	lines = nil
	p := sh(t, Options{Tee: w}, `printf 'a\nb'`)
	<-p.Done()
	if got := strings.Join(lines, "|"); got != "a|b" {
		t.Errorf("tee lines %q, want a|b", got)
	}
}

func TestWriteSecrets(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "secrets")
	if err := WriteSecrets(dir, map[string][]byte{"old": []byte("x")}); err != nil {
		t.Fatal(err)
	}
	if err := WriteSecrets(dir, map[string][]byte{"user": []byte("admin")}); err != nil {
		t.Fatal(err)
	}
	entries, err := os.ReadDir(dir)
	if err != nil || len(entries) != 1 || entries[0].Name() != "user" {
		t.Fatalf("dir holds %v (%v), want user alone", entries, err)
	}
	if b, err := os.ReadFile(filepath.Join(dir, "user")); string(b) != "admin" || err != nil {
		t.Errorf("user = %q, %v", b, err)
	}
}
