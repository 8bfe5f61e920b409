package chaos

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/openfaas/mailbox/test/e2e/bed"
)

// faultDisk fills the file system of the NATS store (a tmpfs,
// scenario.storeSize) with a filler file under load, until the mailbox
// refuses requeues, then removes it.
const faultDisk = "disk"

// diskScenario puts the NATS store of backend on a small tmpfs and fills
// it once, under load, with requeues going to the bed's mailbox function
// through the gateway: black box, as anything outside NATS sees it.
// On JetStream its own storage limit is filled first (storelimit_test.go).
func diskScenario(backend string) scenario {
	faults := []string{faultDisk}
	if backend == bed.JetStream {
		faults = []string{faultStoreLimit, faultDisk}
	}
	return scenario{name: "disk-" + backend, backend: backend, storeSize: 64 << 20, faults: faults}
}

// recoverBound is how long requeues have to be accepted again after the
// filler is removed before the NATS server is restarted, as its
// supervisor would (NATS Streaming exits on a full disk; a JetStream
// stream that failed a write stores nothing until the server restarts).
const recoverBound = 30 * time.Second

// store is the NATS server's store directory, a tmpfs of its own.
type store struct {
	dir  string
	nats string // the bed's component that stores there
}

// mountStore mounts a tmpfs of size bytes where the bed in dir keeps the
// store of backend's NATS server (the bed names the directory after the
// component), unmounted when the test ends. It needs root, as the bed
// does.
func mountStore(t *testing.T, dir, backend string, size int64) *store {
	s := &store{nats: bed.NATSStreaming}
	if backend == bed.JetStream {
		s.nats = bed.NATSJetStream
	}
	s.dir = filepath.Join(dir, s.nats)
	if err := os.Mkdir(s.dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Mount("tmpfs", s.dir, "tmpfs", 0, "size="+strconv.FormatInt(size, 10)); err != nil {
		t.Fatalf("mount a tmpfs on %s: %v", s.dir, err)
	}
	// Registered after t.TempDir's cleanup, so it runs before it.
	t.Cleanup(func() {
		if err := syscall.Unmount(s.dir, syscall.MNT_DETACH); err != nil {
			t.Errorf("unmount %s: %v", s.dir, err)
		}
	})
	return s
}

// fill writes a filler file until the file system is full.
func (s *store) fill() (string, error) {
	path := filepath.Join(s.dir, "filler")
	f, err := os.OpenFile(path, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return path, err
	}
	defer f.Close()
	block := make([]byte, 64<<10)
	for {
		if _, err := f.Write(block); err != nil {
			if errors.Is(err, syscall.ENOSPC) {
				return path, nil
			}
			return path, err
		}
	}
}

// fault fills the store's file system under load and checks, from
// outside, that requeues are refused with 507 or 503 naming the cause,
// with Retry-After, in bounded time; then removes the filler and waits
// for requeues to be accepted again, restarting the NATS server only if
// they are not within recoverBound. The mailbox function and the
// connector must not have been restarted.
func (s *store) fault(ctx context.Context, t *testing.T, b *bed.Bed, rec *record) error {
	fnBefore, err := processes(binaries.Functions[bed.Mailbox])
	if err != nil {
		return err
	}
	connector := b.Process(bed.Connector)
	at := time.Now()
	path, err := s.fill()
	if err != nil {
		return fmt.Errorf("fill %s: %w", s.dir, err)
	}
	filled := time.Now()
	t.Logf("disk: %s filled in %s", s.dir, filled.Sub(at).Round(time.Millisecond))
	err = poll(ctx, 2*time.Minute, "a requeue refused with 507 or 503, a cause and Retry-After", func() error {
		if n := len(rec.refusedSince(filled)); n == 0 {
			return errors.New("no requeue sent since the disk filled was refused with 507 or 503, a cause and Retry-After")
		}
		return nil
	})
	if err != nil {
		return err
	}
	// A little more load against the full disk, to see its answers.
	select {
	case <-time.After(5 * time.Second):
	case <-ctx.Done():
	}
	if err := os.Remove(path); err != nil {
		return err
	}
	removed := time.Now()
	restarted := ""
	if err := poll(ctx, recoverBound, "a requeue accepted with the filler removed", func() error {
		if a, _, _ := rec.resumed(removed); a.IsZero() {
			return errors.New("none")
		}
		return nil
	}); err != nil {
		restarted = fmt.Sprintf("; the NATS server restarted (%s): %v", b.NATS(), err)
		if p := b.Process(s.nats); p == nil || !p.Exited() {
			if err := b.Stop(s.nats, true); err != nil {
				return err
			}
		}
		if err := b.Start(s.nats); err != nil {
			return err
		}
	}
	t.Logf("disk: filler removed %s after the disk filled%s", removed.Sub(filled).Round(time.Millisecond), restarted)
	if err := answeredWhileFull(ctx, t, rec, filled, removed); err != nil {
		return err
	}
	fnAfter, err := processes(binaries.Functions[bed.Mailbox])
	if err != nil {
		return err
	}
	if len(fnBefore) != 1 || len(fnAfter) != 1 || fnBefore[0].hostPID != fnAfter[0].hostPID {
		return fmt.Errorf("mailbox-fn restarted during the disk fault: processes %v, then %v", fnBefore, fnAfter)
	}
	if b.Process(bed.Connector) != connector || connector.Exited() {
		return errors.New("the connector exited during the disk fault")
	}
	return nil
}

// answeredWhileFull waits until every requeue sent from t0 to t1, while
// the store was full, has its answer, logs them and fails if any had none:
// the load's client gives up after 15 s, so a requeue may not hang.
func answeredWhileFull(ctx context.Context, t *testing.T, rec *record, t0, t1 time.Time) error {
	var summary string
	var unanswered int
	_ = poll(ctx, 20*time.Second, "every requeue sent while the store was full answered", func() error {
		summary, unanswered = rec.answersBetween(t0, t1)
		if unanswered > 0 {
			return errors.New("not yet")
		}
		return nil
	})
	t.Logf("answers while the store was full: %s", summary)
	if unanswered > 0 {
		return fmt.Errorf("%d requeues sent while the store was full had no answer within the load's 15 s", unanswered)
	}
	return nil
}

// refusedSince is the requeues sent at or after t refused with 507 or 503
// naming a cause, with Retry-After.
func (r *record) refusedSince(t time.Time) []*message {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []*message
	for i := len(r.order) - 1; i >= 0 && !r.order[i].sent.Before(t.Add(-10*time.Second)); i-- {
		m := r.order[i]
		if !m.sent.Before(t) && (m.status == http.StatusInsufficientStorage || m.status == http.StatusServiceUnavailable) &&
			m.cause != "" && m.retryAfter != "" {
			out = append(out, m)
		}
	}
	return out
}

// answersBetween sums up the answers to the requeues sent from t0 to t1:
// how many of each status and cause, and the longest wait for one; and
// how many have no answer (yet, or the load's client gave up).
func (r *record) answersBetween(t0, t1 time.Time) (summary string, unanswered int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	counts := map[string]int{}
	var longest time.Duration
	for _, m := range r.order {
		if m.sent.Before(t0) || m.sent.After(t1) {
			continue
		}
		if m.answer.IsZero() || m.status == 0 {
			unanswered++
		}
		k := strconv.Itoa(m.status)
		if m.cause != "" {
			k += " " + m.cause + " (Retry-After " + m.retryAfter + ")"
		}
		counts[k]++
		if !m.answer.IsZero() {
			longest = max(longest, m.answer.Sub(m.sent))
		}
	}
	var parts []string
	for k, n := range counts {
		parts = append(parts, fmt.Sprintf("%d × %s", n, k))
	}
	sort.Strings(parts)
	return strings.Join(parts, ", ") + fmt.Sprintf("; the longest answered in %s", longest.Round(10*time.Millisecond)), unanswered
}
