package service_test

import (
	"bytes"
	"encoding/json"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/openfaas/mailbox/internal/diskspace/diskspacetest"
	"github.com/openfaas/mailbox/internal/gatewaytest"
	"github.com/openfaas/mailbox/internal/poll"
)

// refusal is the answer to a requeue the mailbox should refuse.
type refusal struct {
	Code       int
	Error      string `json:"error"`
	Cause      string `json:"cause"`
	RetryAfter string
}

// wantRefused requeues to late and wants it refused with code, naming
// cause, with Retry-After.
func wantRefused(t *testing.T, b *bundle, code int, cause string) refusal {
	t.Helper()
	req, err := http.NewRequest(http.MethodPost, b.api.URL+"/deadletter/late", strings.NewReader("x"))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+apiToken)
	req.Header.Set("X-Delay-Duration", "1")
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	var r refusal
	if err := json.NewDecoder(res.Body).Decode(&r); err != nil {
		t.Fatalf("answer %d is not JSON: %v", res.StatusCode, err)
	}
	r.Code, r.RetryAfter = res.StatusCode, res.Header.Get("Retry-After")
	if r.Code != code || r.Error == "" || r.Cause != cause || r.RetryAfter == "" {
		t.Fatalf("requeue answered %+v, want %d naming cause %q, with Retry-After", r, code, cause)
	}
	return r
}

// distinctIDs counts the message ids rec was called with.
func distinctIDs(rec *gatewaytest.Recorder) int {
	ids := map[string]bool{}
	for _, c := range rec.Calls() {
		ids[c.ID()] = true
	}
	return len(ids)
}

// The NATS store's file system (a tmpfs) filled by another writer to
// below data_dir_reserve_bytes: requeues are refused with 507 naming the
// cause, with Retry-After, while every message accepted before is
// delivered, a retry included (it is stored in the reserve); once the
// filler is removed, requeues are accepted and delivered, without a
// restart. Before, requeues were accepted until the disk was full, when
// NATS Streaming panics (ending mailbox serve) and JetStream answers
// nothing and stops storing in that stream until it restarts.
func TestFullDiskRefusesRequeuesDeliversAccepted(t *testing.T) {
	t.Parallel()
	for _, backend := range backends {
		t.Run(backend, func(t *testing.T) {
			t.Parallel()
			fs := diskspacetest.Mount(t, 16<<20)
			b := setupIn(t, backend, map[string]string{"data_dir_reserve_bytes": "4194304"}, filepath.Join(fs, "store"))
			ok := b.deploy("ok", nil, nil)
			flaky := b.deploy("flaky", func(n int) int {
				if n == 1 {
					return http.StatusInternalServerError
				}
				return http.StatusOK
			}, nil)
			late := b.deploy("late", nil, nil)
			for range 3 {
				b.mustSchedule(t, "ok", bytes.Repeat([]byte("a"), 10<<10), "X-Delay-Duration", "1")
			}
			b.mustSchedule(t, "flaky", []byte("retry me"), "X-Delay-Duration", "1", "X-Max-Retries", "3")

			refill := diskspacetest.Fill(t, fs, 1<<20)
			wantRefused(t, b, http.StatusInsufficientStorage, "broker storage full")

			b.startConnector(t)
			poll.Until(t, 30*time.Second, "the accepted messages delivered, the failed one retried", func() bool {
				return distinctIDs(ok) == 3 && flaky.Len() >= 2
			})
			wantRefused(t, b, http.StatusInsufficientStorage, "broker storage full")
			if late.Len() != 0 {
				t.Fatalf("a refused requeue was delivered")
			}

			refill()
			a := b.mustSchedule(t, "late", []byte("after"), "X-Delay-Duration", "1")
			poll.Until(t, 20*time.Second, "the requeue after space came back delivered", func() bool {
				return len(callsWith(late, a.ID)) >= 1
			})
		})
	}
}

// JetStream's own limit on its store (max_file_store; the embedded
// server's default is 75% of the space free when it starts) refuses
// writes with "insufficient resources" (10023), which was answered 503
// "queue unavailable" as if the broker were down: it is 507 naming the
// cause, with Retry-After. The reserve check is off here, so that the
// server's answer is what the API reports.
func TestJetStreamStoreLimitAnswers507(t *testing.T) {
	t.Parallel()
	fs := diskspacetest.Mount(t, 16<<20)
	b := setupIn(t, "jetstream", nil, filepath.Join(fs, "store"))
	body := bytes.Repeat([]byte("x"), 256<<10)
	for i := 0; ; i++ {
		code, cause, retryAfter, err := rawRequeueBody(b, "fn", "3600", body)
		if err != nil {
			t.Fatal(err)
		}
		if code == http.StatusAccepted {
			if i > 64 { // 16 MiB
				t.Fatalf("%d requeues of 256 KiB accepted on a 16 MiB file system", i)
			}
			continue
		}
		if code != http.StatusInsufficientStorage || cause != "broker storage full" || retryAfter == "" {
			t.Fatalf("requeue %d answered %d cause %q Retry-After %q, want 507 broker storage full with Retry-After", i, code, cause, retryAfter)
		}
		t.Logf("refused after %d requeues of 256 KiB", i)
		break
	}
}
