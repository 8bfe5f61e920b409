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

func TestFlagsAreValidated(t *testing.T) {
	err := run(context.Background(), []string{"-backends", "kafka", "-waiting", "0"}, io.Discard, slog.New(slog.DiscardHandler))
	if err == nil || !strings.Contains(err.Error(), "-backends") || !strings.Contains(err.Error(), "-waiting") {
		t.Fatalf("run with bad flags: %v, want errors naming -backends and -waiting", err)
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
