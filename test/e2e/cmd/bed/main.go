// Command bed runs the e2e test bed by hand: real OpenFaaS CE gateway,
// queue-worker, NATS and the mailbox, in a network namespace of its own
// (it needs root). From the repository:
//
//	cd test && go run ./e2e/cmd/bed                 # NATS Streaming; Ctrl-C stops it
//	cd test && go run ./e2e/cmd/bed -backend jetstream
//	cd test && go run ./e2e/cmd/bed -shell          # a shell inside the bed
//
// The bed's addresses exist only in its namespace: use -shell, or enter
// it with the nsenter command it prints.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"

	"github.com/openfaas/mailbox/test/e2e/bed"
)

func main() {
	backend := flag.String("backend", bed.Stan, "the mailbox's queue: stan or jetstream")
	shell := flag.Bool("shell", false, "run $SHELL in the bed's network namespace and stop the bed when it exits")
	root := flag.String("root", "..", "the repository (the parent of test/)")
	flag.Parse()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	os.Exit(bed.Main(ctx, *root, func(bin bed.Binaries) int {
		if err := run(ctx, *backend, *shell, bin); err != nil {
			fmt.Fprintln(os.Stderr, "bed:", err)
			return 1
		}
		return 0
	}))
}

func run(ctx context.Context, backend string, shell bool, bin bed.Binaries) (err error) {
	dir, err := os.MkdirTemp("", "mailbox-bed-run-")
	if err != nil {
		return err
	}
	logs, err := os.Create(filepath.Join(dir, "bed.log"))
	if err != nil {
		return err
	}
	defer func() {
		logs.Close()
		if err != nil {
			// Kept, with the servers' data, to see what went wrong.
			err = fmt.Errorf("%w\nEvery component's output: %s", err, logs.Name())
			return
		}
		os.RemoveAll(dir)
	}()
	startCtx, cancel := context.WithTimeout(ctx, 3*time.Minute)
	defer cancel()
	b, err := bed.Start(startCtx, bed.Config{Backend: backend, Bin: bin, Dir: dir, Log: logs})
	if err != nil {
		return err
	}
	defer b.Close()

	fmt.Printf(`The bed is up (backend %s). Every component's output: %s

  gateway    %s   (user %s, password %s)
  connector  %s/metrics
  functions  mailbox, ratelimited, flaky, failing, slow

  export OPENFAAS_URL=%[3]s
  curl -i $OPENFAAS_URL/function/mailbox/deadletter/flaky -H 'X-Delay-Duration: 1' -d hello
  curl -s "$OPENFAAS_URL/function/flaky/calls?id=<the id it answered>"
  curl -s -u %[4]s:%[5]s $OPENFAAS_URL/system/functions

`, backend, logs.Name(), bed.GatewayURL, b.User, b.Password, bed.ConnectorURL)
	if shell {
		sh := os.Getenv("SHELL")
		if sh == "" {
			sh = "/bin/sh"
		}
		cmd := exec.CommandContext(ctx, sh)
		cmd.Env = append(os.Environ(), "OPENFAAS_URL="+bed.GatewayURL, "PS1=(mailbox-bed) \\w# ")
		cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, os.Stdout, os.Stderr
		return cmd.Run()
	}
	// os.Getpid is this process's pid in the bed's pid namespace; nsenter
	// runs outside it.
	pid, err := bed.HostPID()
	if err != nil {
		return err
	}
	fmt.Printf("From another terminal: nsenter --net=/proc/%d/ns/net bash\nCtrl-C stops the bed.\n", pid)
	<-ctx.Done()
	return nil
}
