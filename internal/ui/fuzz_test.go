package ui_test

import (
	"io"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/openfaas/mailbox/internal/auth"
)

// FuzzLoginForm: whatever a sign-in form holds, the page never fails
// (5xx) and starts a session only for the token.
func FuzzLoginForm(f *testing.F) {
	b := setup(f)
	f.Add("application/x-www-form-urlencoded", "token="+token)
	f.Add("application/x-www-form-urlencoded", "token=guess&token="+token)
	f.Add("multipart/form-data; boundary=x", "--x\r\nContent-Disposition: form-data; name=\"token\"\r\n\r\n"+token+"\r\n--x--")
	f.Add("application/x-www-form-urlencoded", "%zz")
	f.Add("text/plain", strings.Repeat("a", 5000))
	f.Fuzz(func(t *testing.T, contentType, body string) {
		if strings.ContainsFunc(contentType, func(r rune) bool { return r < 0x20 && r != '\t' || r == 0x7f }) {
			return // no client sends it: http.Client refuses the header
		}
		// One attempt back in the throttle's bucket per input, so that
		// the form is read, not answered 429 before it, past the burst.
		b.clock.add(6 * time.Second)
		req, _ := http.NewRequest(http.MethodPost, b.srv.URL+"/ui/login", strings.NewReader(body))
		req.Header.Set("Content-Type", contentType)
		res, err := client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		_, _ = io.Copy(io.Discard, res.Body)
		res.Body.Close()
		if res.StatusCode >= 500 {
			t.Fatalf("answered %d", res.StatusCode)
		}
		for _, c := range res.Cookies() {
			if c.Name == auth.CookieSession && c.MaxAge > 0 && !strings.Contains(body, token) {
				t.Fatalf("a session for a form without the token: %q", body)
			}
		}
	})
}

// FuzzBulkForm: whatever a bulk form holds, the page never fails (5xx),
// and a purge without a filter starts nothing unless all=true.
func FuzzBulkForm(f *testing.F) {
	b := setup(f)
	f.Add("action=purge")
	f.Add("action=purge&all=true")
	f.Add("action=replay&function=fn&reason=rejected&q=x")
	f.Add("action=purge&function=&all=TRUE")
	f.Add("action=%zz")
	f.Fuzz(func(t *testing.T, body string) {
		c, err := b.sessions.Start(false)
		if err != nil {
			t.Fatal(err)
		}
		req, _ := http.NewRequest(http.MethodPost, b.srv.URL+"/ui/bulk", strings.NewReader(body))
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
		req.AddCookie(c)
		res, err := client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		_, _ = io.Copy(io.Discard, res.Body)
		res.Body.Close()
		if res.StatusCode >= 500 {
			t.Fatalf("answered %d", res.StatusCode)
		}
		form, perr := parseForm(body)
		if perr == nil && form.Get("action") == "purge" && form.Get("function") == "" && form.Get("reason") == "" &&
			form.Get("q") == "" && form.Get("all") != "true" && res.StatusCode != http.StatusBadRequest {
			t.Fatalf("a purge of everything without all=true answered %d", res.StatusCode)
		}
	})
}

func parseForm(body string) (url.Values, error) { return url.ParseQuery(body) }
