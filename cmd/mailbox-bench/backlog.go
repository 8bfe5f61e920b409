package main

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/nats-io/nuid"

	"github.com/openfaas/mailbox/internal/envelope"
)

// storeWorkers store the backlog concurrently.
const storeWorkers = 64

// backlog is the connector binary's memory with messages waiting.
type backlog struct {
	Waiting   int
	StoreTook time.Duration // storing them all
	// ProcessRSSKiB is this process's resident memory once they are
	// stored: mostly the embedded server holding them.
	ProcessRSSKiB int
	Healthy       time.Duration // from starting the connector to /healthz 200
	PeakRSSKiB    int           // the connector's VmHWM once it settled
	RSSKiB        int           // its VmRSS then
	Threads       int
	// Settled is false when the peak was still growing at the timeout.
	Settled bool
}

func (b backlog) storeRate() float64 {
	if b.StoreTook <= 0 {
		return 0
	}
	return float64(b.Waiting) / b.StoreTook.Seconds()
}

// measureBacklog stores o.Waiting messages due in an hour, then starts the
// connector binary on them and reads its peak resident memory once it is
// healthy and the peak has not grown for o.Stable.
func measureBacklog(ctx context.Context, b *broker, o options, log *slog.Logger) (backlog, error) {
	// Nothing falls due, so the gateway is never called.
	const gateway = "http://127.0.0.1:1"
	cfg, err := b.config(gateway, o.Inflight)
	if err != nil {
		return backlog{}, err
	}
	q, err := openQueue(ctx, cfg)
	if err != nil {
		return backlog{}, err
	}
	defer q.Close()

	body := make([]byte, o.BodyBytes)
	var stored atomic.Int64
	start := time.Now()
	progress := time.NewTicker(15 * time.Second)
	defer progress.Stop()
	done := make(chan struct{})
	go func() {
		for {
			select {
			case <-done:
				return
			case <-progress.C:
				n := stored.Load()
				log.Info("storing the backlog", "stored", n, "per_second", round(float64(n)/time.Since(start).Seconds()))
			}
		}
	}()
	err = forEach(ctx, o.Waiting, storeWorkers, func(ctx context.Context, _ int) error {
		now := time.Now().UTC()
		err := q.Schedule(ctx, &envelope.Envelope{
			ID: nuid.Next(), Function: function, Body: body,
			Policy: envelope.Policy{MaxRetries: new(10), Delay: new(time.Hour)}, AcceptedAt: now, DueAt: now.Add(time.Hour),
		})
		stored.Add(1)
		return err
	})
	close(done)
	if err != nil {
		return backlog{}, fmt.Errorf("store: %w", err)
	}
	r := backlog{Waiting: o.Waiting, StoreTook: time.Since(start)}
	self, err := procStatus(os.Getpid())
	if err != nil {
		return backlog{}, err
	}
	r.ProcessRSSKiB = self["VmRSS"]

	port, err := freePort()
	if err != nil {
		return backlog{}, err
	}
	env := b.env(gateway, o.Inflight)
	env["listen"] = "127.0.0.1:" + port
	c, err := startProcess(ctx, o.Connector, nil, env)
	if err != nil {
		return backlog{}, err
	}
	defer func() { _ = c.stop() }()
	start = time.Now()
	if err := waitFor(ctx, time.Minute, "connector healthy", func() bool {
		return c.exited() || healthy("http://127.0.0.1:"+port+"/healthz")
	}); err != nil {
		return backlog{}, fmt.Errorf("%w; its log: %s", err, c.log())
	}
	if c.exited() {
		return backlog{}, fmt.Errorf("connector exited; its log: %s", c.log())
	}
	r.Healthy = time.Since(start)

	// The peak is read once it has not grown for o.Stable.
	deadline := time.Now().Add(o.Stable + time.Minute)
	var since time.Time
	for time.Now().Before(deadline) {
		st, err := procStatus(c.cmd.Process.Pid)
		if err != nil {
			return backlog{}, fmt.Errorf("%w; its log: %s", err, c.log())
		}
		if st["VmHWM"] != r.PeakRSSKiB {
			since = time.Now()
		}
		r.PeakRSSKiB, r.RSSKiB, r.Threads = st["VmHWM"], st["VmRSS"], st["Threads"]
		if time.Since(since) >= o.Stable {
			r.Settled = true
			break
		}
		select {
		case <-ctx.Done():
			return backlog{}, ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
	return r, nil
}

// process is a child process whose output is kept for error messages.
type process struct {
	cmd     *exec.Cmd
	out     *tailBuffer
	done    chan struct{}
	waitErr error // how it ended, once done is closed
}

// startProcess runs bin with args and exactly env as its environment.
func startProcess(ctx context.Context, bin string, args []string, env map[string]string) (*process, error) {
	cmd := exec.CommandContext(ctx, bin, args...)
	for k, v := range env {
		cmd.Env = append(cmd.Env, k+"="+v)
	}
	p := &process{cmd: cmd, out: &tailBuffer{max: 4 << 10}, done: make(chan struct{})}
	cmd.Stdout, cmd.Stderr = p.out, p.out
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	go func() {
		p.waitErr = cmd.Wait()
		close(p.done)
	}()
	return p, nil
}

func (p *process) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

func (p *process) log() string { return p.out.String() }

// stop asks the process to drain and end, and kills it after 10 s. It
// returns how the process ended: nil for a clean exit, an error if it
// failed or had to be killed.
func (p *process) stop() error {
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
		return p.waitErr
	case <-time.After(10 * time.Second):
		_ = p.cmd.Process.Kill()
		<-p.done
		return fmt.Errorf("did not end within 10 s of SIGTERM; killed")
	}
}

// tailBuffer keeps the last max bytes written to it.
type tailBuffer struct {
	mu  sync.Mutex
	max int
	b   []byte
}

func (t *tailBuffer) Write(p []byte) (int, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.b = append(t.b, p...)
	if over := len(t.b) - t.max; over > 0 {
		t.b = t.b[over:]
	}
	return len(p), nil
}

func (t *tailBuffer) String() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	return string(bytes.TrimSpace(t.b))
}

func healthy(url string) bool {
	res, err := http.Get(url)
	if err != nil {
		return false
	}
	res.Body.Close()
	return res.StatusCode == http.StatusOK
}

// procStatus reads the numeric fields of /proc/<pid>/status (memory in
// KiB).
func procStatus(pid int) (map[string]int, error) {
	data, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/status")
	if err != nil {
		return nil, err
	}
	fields := map[string]int{}
	for line := range strings.Lines(string(data)) {
		name, value, ok := strings.Cut(line, ":")
		if f := strings.Fields(value); ok && len(f) > 0 {
			if n, err := strconv.Atoi(f[0]); err == nil {
				fields[name] = n
			}
		}
	}
	return fields, nil
}

func freePort() (string, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer ln.Close()
	return strconv.Itoa(ln.Addr().(*net.TCPAddr).Port), nil
}
