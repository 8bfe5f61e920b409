package main

import (
	"bytes"
	"context"
	"encoding/xml"
	"errors"
	"io"
	"log"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestTinyRun runs every measurement on each backend at a tiny size: it
// proves the command works, not how fast anything is.
func TestTinyRun(t *testing.T) {
	// connector-sdk logs every invocation through the standard logger.
	log.SetOutput(io.Discard)
	t.Cleanup(func() { log.SetOutput(os.Stderr) })

	// The connector is built once, before the runs and without a deadline of
	// the test's own: on a machine with empty caches compiling it takes
	// minutes, and a test must not depend on how fast the machine compiles.
	connector := filepath.Join(t.TempDir(), "connector")
	if out, err := exec.CommandContext(t.Context(), "go", "build", "-o", connector, "github.com/openfaas/mailbox/connector").CombinedOutput(); err != nil {
		t.Fatalf("go build connector: %v\n%s", err, out)
	}

	for _, backend := range []string{"stan", "jetstream"} {
		t.Run(backend, func(t *testing.T) {
			t.Parallel()
			out := t.TempDir()
			var stdout bytes.Buffer
			err := run(t.Context(), []string{
				"-backends", backend, "-connector", connector,
				"-duration", "400ms", "-warmup", "100ms", "-rounds", "2",
				"-deliver", "200",
				"-late-rate", "200", "-late-for", "1s",
				"-waiting", "300", "-stable", "300ms",
				"-out", out,
			}, &stdout, slog.New(slog.DiscardHandler))
			if err != nil {
				t.Fatalf("run: %v\n%s", err, stdout.String())
			}
			for _, want := range []string{
				"raw durable publish", "requeue via HTTP API", "HTTP ceiling", "deliveries to sink",
				"lateness p99", "store waiting messages", "connector peak RSS",
			} {
				if !strings.Contains(stdout.String(), want) {
					t.Errorf("no %q in the table:\n%s", want, stdout.String())
				}
			}
			for _, name := range []string{latenessChart, ratesChart} {
				checkSVG(t, filepath.Join(out, name), backend)
			}
		})
	}
}

// TestTinyE2E runs the end-to-end mode on each backend, with statuses on
// and off, at a tiny size: every requeue is accepted and delivered once
// counted, the process is stopped cleanly, and the table shows it. It
// proves the mode works, not how fast anything is.
func TestTinyE2E(t *testing.T) {
	// Built once, before the runs and without a deadline of the test's
	// own, as in TestTinyRun.
	mailbox := filepath.Join(t.TempDir(), "mailbox")
	if out, err := exec.CommandContext(t.Context(), "go", "build", "-o", mailbox, "github.com/openfaas/mailbox/cmd/mailbox").CombinedOutput(); err != nil {
		t.Fatalf("go build mailbox: %v\n%s", err, out)
	}
	for _, backend := range []string{"stan", "jetstream"} {
		t.Run(backend, func(t *testing.T) {
			t.Parallel()
			o := options{
				Mode: "e2e", Backends: []string{backend}, Dir: t.TempDir(), Mailbox: mailbox,
				Clients: 8, Inflight: 16, Burst: 300, E2EBody: 1024, E2EDelay: 500 * time.Millisecond,
				PacedRate: 100, PacedFor: time.Second, Statuses: []bool{true, false},
			}
			results, err := runE2E(t.Context(), o, slog.New(slog.DiscardHandler))
			if err != nil {
				t.Fatal(err)
			}
			if len(results) != 2 {
				t.Fatalf("%d results, want 2 (statuses on, off)", len(results))
			}
			for i, r := range results {
				if r.Backend != backend || r.Statuses != o.Statuses[i] {
					t.Errorf("result %d is of %s, %s", i, r.Backend, statusesLabel(r.Statuses))
				}
				if len(r.Errs) > 0 || r.Stop != nil {
					t.Fatalf("%s: errors %v, stop %v", statusesLabel(r.Statuses), r.Errs, r.Stop)
				}
				b := r.Burst
				if b.Messages != o.Burst || len(b.Late) != o.Burst || b.Calls < o.Burst {
					t.Errorf("%s: burst of %d: %d messages, %d lateness figures, %d calls", statusesLabel(r.Statuses), o.Burst, b.Messages, len(b.Late), b.Calls)
				}
				// Nothing is due before the delay has passed since it
				// was sent (JetStream may fire a schedule a little early).
				if b.Ingest <= 0 || b.Delivered < o.E2EDelay/2 || b.Delivered < b.Ingest {
					t.Errorf("%s: ingest took %v, delivery %v, with a delay of %v", statusesLabel(r.Statuses), b.Ingest, b.Delivered, o.E2EDelay)
				}
				if p := r.Paced; p.Messages != 100 || len(p.Sorted) != 100 || p.Calls < 100 {
					t.Errorf("%s: paced: %d messages, %d lateness figures, %d calls, want 100", statusesLabel(r.Statuses), p.Messages, len(p.Sorted), p.Calls)
				}
				if r.PeakRSSKiB <= 0 || r.PeakRSSEndKiB < r.PeakRSSKiB || r.Threads <= 0 {
					t.Errorf("%s: peak RSS %d KiB, then %d KiB, %d threads", statusesLabel(r.Statuses), r.PeakRSSKiB, r.PeakRSSEndKiB, r.Threads)
				}
			}
			var out bytes.Buffer
			writeE2ETables(&out, results)
			for _, want := range []string{
				"ingest (burst)", "delivery, end to end", "burst lateness p99", "statuses dropped", "paced lateness p99", "mailbox serve peak RSS",
				backend + ": statuses cost",
			} {
				if !strings.Contains(out.String(), want) {
					t.Errorf("no %q in the table:\n%s", want, out.String())
				}
			}
		})
	}
}

func TestFlagsAreValidated(t *testing.T) {
	err := run(context.Background(), []string{"-backends", "kafka", "-waiting", "0", "-mode", "fast", "-statuses", "maybe", "-burst", "0"}, io.Discard, slog.New(slog.DiscardHandler))
	for _, flag := range []string{"-backends", "-waiting", "-mode", "-statuses", "-burst"} {
		if err == nil || !strings.Contains(err.Error(), flag) {
			t.Errorf("run with bad flags: %v, want an error naming %s", err, flag)
		}
	}
}

// checkSVG fails unless path is well-formed SVG naming backend.
func checkSVG(t *testing.T, path, backend string) {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	d := xml.NewDecoder(bytes.NewReader(data))
	root := ""
	for {
		tok, err := d.Token()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatalf("%s is not well-formed: %v", path, err)
		}
		if se, ok := tok.(xml.StartElement); ok && root == "" {
			root = se.Name.Local
		}
	}
	if root != "svg" || !bytes.Contains(data, []byte(backend)) {
		t.Fatalf("%s: root <%s>, want <svg> naming %s", path, root, backend)
	}
}

// A call that outlasts the whole window, as on a loaded machine, still
// gives a rate, over the time it took; an op that only fails is still an
// error.
func TestHammerOutlastedWindow(t *testing.T) {
	slow := func(ctx context.Context) error {
		select {
		case <-time.After(20 * time.Millisecond):
			return nil
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	l, err := hammer(t.Context(), 2, 0, time.Millisecond, slow)
	if err != nil || l.OK == 0 || l.Window < 20*time.Millisecond {
		t.Errorf("hammer of a call slower than the window: %+v, %v; want a success over at least 20ms", l, err)
	}
	failing := func(context.Context) error { return errors.New("refused") }
	if _, err := hammer(t.Context(), 2, 0, time.Millisecond, failing); err == nil {
		t.Error("hammer of an op that only fails: no error")
	}
}
