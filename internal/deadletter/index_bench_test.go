package deadletter

import (
	"fmt"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/openfaas/mailbox/internal/envelope"
	"github.com/openfaas/mailbox/internal/queue"
)

// indexed returns an index of n dead letters as a busy mailbox keeps
// them: 32-hex-digit ids, 20 functions, a 120-byte last error.
func indexed(b *testing.B, n int) *index {
	b.Helper()
	x := newIndex(n)
	lastError := strings.Repeat("e", 120)
	for i := range n {
		data, err := envelope.Encode(&envelope.Envelope{
			ID: fmt.Sprintf("%032x", i), Function: fmt.Sprintf("function-%02d", i%20),
			Reason: envelope.ReasonMaxRetries, Retries: 10, LastStatus: 429, LastError: lastError,
			AcceptedAt: t0, DeadAt: t0.Add(time.Duration(i) * time.Millisecond), Body: make([]byte, 256),
		})
		if err != nil {
			b.Fatal(err)
		}
		x.apply(queue.Record{Seq: uint64(i + 1), Time: t0, Data: data})
	}
	return x
}

// BenchmarkIndexMemory reports the heap an index keeps per dead letter
// (bytes/entry) at the default dead_letter_limit.
func BenchmarkIndexMemory(b *testing.B) {
	const n = 100_000
	for b.Loop() {
		runtime.GC()
		var before, after runtime.MemStats
		runtime.ReadMemStats(&before)
		x := indexed(b, n)
		runtime.GC()
		runtime.ReadMemStats(&after)
		b.ReportMetric(float64(after.HeapAlloc-before.HeapAlloc)/n, "bytes/entry")
		runtime.KeepAlive(x)
	}
}

// BenchmarkListPage is one page of 50 of 100,000 dead letters: the first
// page, a filtered one, and one deep in the list.
func BenchmarkListPage(b *testing.B) {
	x := indexed(b, 100_000)
	for _, c := range []struct {
		name   string
		f      Filter
		before uint64
	}{
		{"newest", Filter{}, 0},
		{"function", Filter{Function: "function-07"}, 0},
		{"query", Filter{Query: "00ff"}, 0},
		{"deep", Filter{}, 1_000},
	} {
		b.Run(c.name, func(b *testing.B) {
			for b.Loop() {
				x.page(c.f, c.before, 50)
			}
		})
	}
}

// BenchmarkIndexRemoveAll removes 100,000 dead letters, oldest first, as a
// bulk purge or a catch-up through removals does.
func BenchmarkIndexRemoveAll(b *testing.B) {
	const n = 100_000
	for b.Loop() {
		b.StopTimer()
		x := indexed(b, n)
		b.StartTimer()
		for i := range n {
			x.apply(queue.Record{Seq: uint64(n + i + 1), Removal: &queue.Removal{Seq: uint64(i + 1), Cause: queue.RemovedPurged}})
		}
	}
}
