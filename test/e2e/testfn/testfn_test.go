package testfn

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/openfaas/mailbox/internal/auth"
)

func TestFlakyCallsByMessage(t *testing.T) {
	f, err := FromEnv(env{"behaviour": Flaky, "fail_times": "2"}.get)
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(f)
	defer srv.Close()
	call := func(id, retries string) {
		t.Helper()
		req, _ := http.NewRequest(http.MethodPost, srv.URL, strings.NewReader("body-"+id))
		req.Header.Set("X-Mailbox-Message-Id", id)
		req.Header.Set("X-Retries", retries)
		res, err := srv.Client().Do(req)
		if err != nil {
			t.Fatal(err)
		}
		res.Body.Close()
	}
	for _, r := range []string{"0", "1", "2", "3"} {
		call("a", r)
	}
	call("b", "0")
	call("c", "0")

	got, err := CallsOf(t.Context(), srv.Client(), srv.URL, "a", "b", "missing")
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 3 || len(got["missing"]) != 0 {
		t.Errorf("calls for a, b and missing: %+v", got)
	}
	var a []string
	for _, c := range got["a"] {
		a = append(a, c.Retries+":"+http.StatusText(c.Status))
	}
	if strings.Join(a, " ") != "0:Too Many Requests 1:Too Many Requests 2:OK 3:OK" {
		t.Errorf("message a: %v", a)
	}
	if b := got["b"]; len(b) != 1 || b[0].Status != http.StatusTooManyRequests || b[0].Body != "body-b" || b[0].MessageID != "b" {
		t.Errorf("message b: %+v, want its own first call, refused", b)
	}
}

func TestFromEnvRefusesUnknownBehaviour(t *testing.T) {
	if _, err := FromEnv(env{"behaviour": "odd"}.get); err == nil {
		t.Fatal("want an error")
	}
}

type env map[string]string

func (e env) get(k string) string { return e[k] }

// TestSignedRequeuesItselfSigned: signed verifies each call with the token,
// requeues an unsigned one under a new id and a signed one with its id
// and retries, signed both times, until requeue_times; it refuses an
// unsigned call for a message it requeued and takes a callback.
func TestSignedRequeuesItselfSigned(t *testing.T) {
	const token = "testfn-token"
	tok, err := auth.NewToken(token)
	if err != nil {
		t.Fatal(err)
	}
	type requeued struct{ id, retries string }
	var got []requeued
	mailbox := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		if err := tok.CheckRequeue(r, body, time.Now(), time.Minute); err != nil || r.URL.Path != "/deadletter/"+Signed {
			http.Error(w, fmt.Sprintf("%s: %v", r.URL.Path, err), http.StatusUnauthorized)
			return
		}
		id := r.Header.Get("X-Mailbox-Message-Id")
		if id == "" {
			id = "m-1"
		}
		got = append(got, requeued{id, r.Header.Get("X-Retries")})
		w.WriteHeader(http.StatusAccepted)
		fmt.Fprintf(w, `{"status":"scheduled","id":%q,"function":%q}`, id, Signed)
	}))
	defer mailbox.Close()
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "mailbox-token"), []byte(token+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	f, err := FromEnv(env{"behaviour": Signed, "secret_mount_path": dir, "token_secret": "mailbox-token",
		"mailbox_url": mailbox.URL, "requeue_times": "2"}.get)
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(f)
	defer srv.Close()
	call := func(h map[string]string, signed bool) int {
		t.Helper()
		req, _ := http.NewRequest(http.MethodPost, srv.URL, strings.NewReader("work"))
		for k, v := range h {
			req.Header.Set(k, v)
		}
		if signed {
			req.Header.Set("X-Mailbox-Function", Signed)
			sign := tok.SignDelivery
			if h["X-Mailbox-Outcome"] != "" {
				sign = tok.SignCallback
			}
			if err := sign(req.Header, []byte("work"), time.Now()); err != nil {
				t.Fatal(err)
			}
		}
		res, err := srv.Client().Do(req)
		if err != nil {
			t.Fatal(err)
		}
		res.Body.Close()
		return res.StatusCode
	}
	steps := []struct {
		h      map[string]string
		signed bool
		want   int
	}{
		{map[string]string{"X-Mailbox-Message-Id": "caller", "X-Retries": "0"}, false, http.StatusAccepted},
		{map[string]string{"X-Mailbox-Message-Id": "m-1", "X-Retries": "1"}, true, http.StatusAccepted},
		{map[string]string{"X-Mailbox-Message-Id": "m-1", "X-Retries": "2"}, true, http.StatusOK},
		{map[string]string{"X-Mailbox-Message-Id": "m-1", "X-Retries": "1"}, false, http.StatusUnauthorized},
		{map[string]string{"X-Mailbox-Message-Id": "m-1", "X-Mailbox-Outcome": "delivered"}, true, http.StatusOK},
	}
	for i, s := range steps {
		if status := call(s.h, s.signed); status != s.want {
			t.Fatalf("call %d (%v, signed %v) answered %d, want %d", i, s.h, s.signed, status, s.want)
		}
	}
	if want := []requeued{{"m-1", "1"}, {"m-1", "2"}}; !slices.Equal(got, want) {
		t.Fatalf("requeues (id, X-Retries) %v, want %v", got, want)
	}
	calls, err := CallsOf(t.Context(), srv.Client(), srv.URL, "caller", "m-1")
	if err != nil {
		t.Fatal(err)
	}
	if c := calls["caller"]; len(c) != 1 || c[0].Verified || !strings.Contains(c[0].NotVerified, "no X-Mailbox-Delivery-Signature") || c[0].Requeued != "m-1" {
		t.Errorf("the caller's call: %+v, want not verified, requeued as m-1", c)
	}
	var verified []bool
	for _, c := range calls["m-1"] {
		verified = append(verified, c.Verified)
	}
	if !slices.Equal(verified, []bool{true, true, false, true}) || calls["m-1"][3].Outcome != "delivered" {
		t.Errorf("calls for m-1: %+v, want verified but the unsigned one, the last a callback", calls["m-1"])
	}
}

// TestRandomReportsEachCall: random fails about fail_ratio of its calls,
// reports every call before answering it, and answers 503 when the report
// fails.
func TestRandomReportsEachCall(t *testing.T) {
	var (
		mu      sync.Mutex
		reports []Report
		refuse  bool
	)
	recorder := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		defer mu.Unlock()
		var rep Report
		if refuse || json.NewDecoder(r.Body).Decode(&rep) != nil {
			http.Error(w, "no", http.StatusInternalServerError)
			return
		}
		reports = append(reports, rep)
	}))
	defer recorder.Close()
	f, err := FromEnv(env{"behaviour": Random, "fail_ratio": "0.33", "report_url": recorder.URL}.get)
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(f)
	defer srv.Close()
	call := func(id string) int {
		t.Helper()
		req, _ := http.NewRequest(http.MethodPost, srv.URL, strings.NewReader("x"))
		req.Header.Set("X-Mailbox-Message-Id", id)
		req.Header.Set("X-Retries", "2")
		res, err := srv.Client().Do(req)
		if err != nil {
			t.Fatal(err)
		}
		res.Body.Close()
		return res.StatusCode
	}
	const n = 600
	failed := 0
	for i := range n {
		id := fmt.Sprint("m-", i)
		status := call(id)
		if status == http.StatusInternalServerError {
			failed++
		} else if status != http.StatusOK {
			t.Fatalf("call %d answered %d, want 200 or 500", i, status)
		}
		mu.Lock()
		rep, got := reports[len(reports)-1], len(reports)
		mu.Unlock()
		if got != i+1 || rep.MessageID != id || rep.Retries != "2" || rep.Status != status {
			t.Fatalf("call %d answered %d, reported %+v (%d reports)", i, status, rep, got)
		}
	}
	// 0.33 of 600 is 198; 120 to 280 is over seven standard deviations.
	if failed < 120 || failed > 280 {
		t.Errorf("%d of %d calls failed, want about a third", failed, n)
	}
	mu.Lock()
	refuse = true
	mu.Unlock()
	if status := call("unreported"); status != http.StatusServiceUnavailable {
		t.Errorf("with the report refused the call answered %d, want 503", status)
	}
	for _, bad := range []string{"", "1.5", "-0.1", "x"} {
		if _, err := FromEnv(env{"behaviour": Random, "fail_ratio": bad, "report_url": recorder.URL}.get); err == nil {
			t.Errorf("fail_ratio %q accepted", bad)
		}
	}
}
