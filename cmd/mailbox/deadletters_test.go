package main

import (
	"bytes"
	"context"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

// TestDeadLettersCommand runs mailbox deadletters (and dl) through
// command, against a stand-in for the management API; internal/cli tests
// the commands themselves.
func TestDeadLettersCommand(t *testing.T) {
	t.Parallel()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		switch {
		case r.Header.Get("Authorization") != "Bearer t":
			w.WriteHeader(http.StatusUnauthorized)
			w.Write([]byte(`{"error":"wrong token"}`))
		case r.URL.Path == "/deadletters":
			w.Write([]byte(`{"items":[{"seq":1,"id":"a1","function":"fn1","reason":"rejected","retries":0,"last_status":400,"dead_at":"2026-01-02T15:04:05.5Z","body_bytes":2}],"total":1,"counts":[{"function":"fn1","reason":"rejected","count":1}]}`))
		default:
			w.WriteHeader(http.StatusNotFound)
			w.Write([]byte(`{"error":"deadletter: not found: zz","field":"id"}`))
		}
	}))
	defer srv.Close()
	environ := []string{"mailbox_url=" + srv.URL, "mailbox_token=t"}

	for _, tc := range []struct {
		args     []string
		code     int
		stdout   string
		errorOut string
	}{
		{[]string{"deadletters", "list"}, 0, "a1  fn1       rejected  0        400          2026-01-02T15:04:05Z\n", ""},
		{[]string{"dl", "list", "-o", "json"}, 0, `"id": "a1"`, ""},
		{[]string{"dl", "show", "zz"}, 1, "", "404 Not Found: deadletter: not found: zz (field id)"},
		{[]string{"dl", "list", "--token", "x"}, 1, "", "401 Unauthorized: wrong token"},
		{[]string{"dl", "list", "--limit", "0x"}, 2, "", `invalid value "0x" for flag -limit`},
		{[]string{"dl"}, 2, "", "missing command"},
	} {
		var stdout, stderr bytes.Buffer
		err := command(context.Background(), tc.args, environ, strings.NewReader(""), &stdout, &stderr)
		if code := exitCode(tc.args, err); code != tc.code {
			t.Errorf("%q: exit code %d (err %v), want %d", tc.args, code, err, tc.code)
		}
		if !strings.Contains(stdout.String(), tc.stdout) {
			t.Errorf("%q: stdout %q, want %q in it", tc.args, stdout.String(), tc.stdout)
		}
		if tc.errorOut != "" && (err == nil || !strings.Contains(err.Error(), tc.errorOut)) {
			t.Errorf("%q: err %v, want %q", tc.args, err, tc.errorOut)
		}
	}
}

func TestUsageNamesDeadLetters(t *testing.T) {
	var stderr bytes.Buffer
	err := command(context.Background(), []string{"bogus"}, nil, strings.NewReader(""), &stderr, &stderr)
	if exitCode([]string{"bogus"}, err) != 2 || !strings.Contains(stderr.String(), "mailbox deadletters list|show|replay|purge") {
		t.Errorf("err %v, usage %q: want exit code 2 and a usage naming deadletters", err, stderr.String())
	}
}
