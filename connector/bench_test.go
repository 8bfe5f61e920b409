package main

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/openfaas/mailbox/internal/envelope"
	"github.com/openfaas/mailbox/internal/poll"
	"github.com/openfaas/mailbox/internal/queue"
	"github.com/openfaas/mailbox/internal/queue/stan"
	"github.com/openfaas/mailbox/internal/stanserver/stanservertest"
)

// BenchmarkBacklogMemory stores b.N messages due in an hour, then starts
// the connector binary and reports its peak resident memory once it has
// taken all it is going to hold. Run it with a fixed count:
//
//	go test -run '^$' -bench BacklogMemory -benchtime 100000x ./connector
func BenchmarkBacklogMemory(b *testing.B) {
	bin := filepath.Join(b.TempDir(), "connector")
	if out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput(); err != nil {
		b.Fatalf("build: %v\n%s", err, out)
	}
	nats := stanservertest.Start(b)
	q, err := stan.Open(stan.Options{Options: queue.Options{URL: nats.URL(), Logger: slog.New(slog.DiscardHandler)}})
	if err != nil {
		b.Fatal(err)
	}
	defer q.Close()
	poll.Until(b, 10*time.Second, "connected", q.Connected)

	due := time.Now().Add(time.Hour)
	var next atomic.Int64
	var wg sync.WaitGroup
	for range 32 {
		wg.Go(func() {
			for i := next.Add(1); i <= int64(b.N); i = next.Add(1) {
				e := &envelope.Envelope{ID: strconv.FormatInt(i, 10), Function: "fn", Body: make([]byte, 256), Policy: envelope.Policy{MaxRetries: new(1)}, DueAt: due.Add(time.Duration(i) * time.Millisecond)}
				if err := q.Schedule(context.Background(), e); err != nil {
					b.Error(err)
					return
				}
			}
		})
	}
	wg.Wait()

	b.ResetTimer()
	port := freePort(b)
	cmd := exec.Command(bin)
	cmd.Env = append(os.Environ(), "nats_url="+nats.URL(), "gateway_url=http://127.0.0.1:1", "listen=127.0.0.1:"+port, "log_level=warn")
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	defer func() { _ = cmd.Process.Kill(); _ = cmd.Wait() }()
	poll.Until(b, 15*time.Second, "connector healthy", func() bool {
		res, err := http.Get("http://127.0.0.1:" + port + "/healthz")
		if err != nil {
			return false
		}
		res.Body.Close()
		return res.StatusCode == http.StatusOK
	})
	// Let it take what it will hold: resident memory stops growing.
	var rss, stable int
	for stable < 20 {
		time.Sleep(100 * time.Millisecond)
		now := status(b, cmd.Process.Pid, "VmHWM")
		if now == rss {
			stable++
		} else {
			rss, stable = now, 0
		}
	}
	b.StopTimer()
	b.ReportMetric(float64(rss)/1024, "peak-rss-MiB")
	b.ReportMetric(float64(status(b, cmd.Process.Pid, "Threads")), "threads")
}

// status reads a numeric field (kB for memory) of /proc/<pid>/status.
func status(b *testing.B, pid int, field string) int {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		b.Fatal(err)
	}
	for line := range strings.Lines(string(data)) {
		if v, ok := strings.CutPrefix(line, field+":"); ok {
			n, _ := strconv.Atoi(strings.Fields(v)[0])
			return n
		}
	}
	b.Fatalf("no %s in /proc/%d/status", field, pid)
	return 0
}

func freePort(b *testing.B) string {
	ln, err := (&net.ListenConfig{}).Listen(context.Background(), "tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	defer ln.Close()
	return strconv.Itoa(ln.Addr().(*net.TCPAddr).Port)
}
