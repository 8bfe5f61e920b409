package testfn

import (
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
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
