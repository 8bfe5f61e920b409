package main

import (
	"encoding/json"
	"net/http"
	"strings"
	"testing"

	"github.com/openfaas/mailbox/internal/diskspace/diskspacetest"
)

// mailbox serve watches its embedded server's file system: with less than
// data_dir_reserve_bytes free, a requeue is refused with 507 naming the
// cause, and accepted again once space is given back, without a restart.
func TestServeKeepsDataDirReserve(t *testing.T) {
	t.Parallel()
	for _, backend := range []string{"stan", "jetstream"} {
		t.Run(backend, func(t *testing.T) {
			t.Parallel()
			dataDir := diskspacetest.Mount(t, 32<<20)
			c := startChild(t, dataDir, startGateway(t).URL(), backend, "data_dir_reserve_bytes=4194304")
			c.waitHealthy(t)
			c.requeue(t, "fn", "before", "X-Delay-Duration", "3600")

			free := diskspacetest.Fill(t, dataDir, 1<<20)
			res, err := http.Post(c.url()+"/deadletter/fn", "text/plain", strings.NewReader("full"))
			if err != nil {
				t.Fatal(err)
			}
			var a struct {
				Error string `json:"error"`
				Cause string `json:"cause"`
			}
			err = json.NewDecoder(res.Body).Decode(&a)
			res.Body.Close()
			if err != nil || res.StatusCode != http.StatusInsufficientStorage || a.Cause != "broker storage full" || res.Header.Get("Retry-After") == "" {
				t.Fatalf("requeue with 1 MiB free answered %d %+v (%v), Retry-After %q; want 507 broker storage full with Retry-After",
					res.StatusCode, a, err, res.Header.Get("Retry-After"))
			}

			free()
			c.requeue(t, "fn", "after", "X-Delay-Duration", "3600")
		})
	}
}
