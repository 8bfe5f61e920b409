// Command testfn serves the bed's test function (package testfn) on the
// host:port of upstream_url, as the bed's provider asks of every
// function.
package main

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/openfaas/mailbox/test/e2e/testfn"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	if err := run(ctx); err != nil {
		fmt.Fprintln(os.Stderr, "testfn:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context) error {
	u, err := url.Parse(os.Getenv("upstream_url"))
	if err != nil || u.Host == "" {
		return fmt.Errorf("upstream_url %q is not a URL with a host", os.Getenv("upstream_url"))
	}
	f, err := testfn.FromEnv(os.Getenv)
	if err != nil {
		return err
	}
	srv := &http.Server{Addr: u.Host, Handler: f, ReadHeaderTimeout: 10 * time.Second}
	go func() {
		<-ctx.Done()
		shutdown, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = srv.Shutdown(shutdown)
	}()
	if err := srv.ListenAndServe(); !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}
