package signature

import (
	"bytes"
	"net/http"
	"testing"
	"time"
)

func TestKeysDifferPerPurpose(t *testing.T) {
	t.Parallel()
	token := []byte("t")
	r, s, d := Key(token, PurposeRequest), Key(token, PurposeSession), Key(token, PurposeDelivery)
	if bytes.Equal(r, s) || bytes.Equal(r, d) || bytes.Equal(s, d) || bytes.Equal(r, token) {
		t.Fatal("two purposes share a key, or a key is the token")
	}
	if !bytes.Equal(Key(token, PurposeRequest), r) {
		t.Fatal("Key is not deterministic")
	}
}

// Requests that differ anywhere signed read differently.
func TestCanonicalFormsTellRequestsApart(t *testing.T) {
	t.Parallel()
	base := func() (string, string, string, http.Header, []byte) {
		return "POST", "/deadletter/fn", "1800000000", http.Header{"X-Max-Retries": {"3"}}, []byte("b")
	}
	m, p, ts, h, b := base()
	want, err := Request(m, p, ts, h, b)
	if err != nil {
		t.Fatal(err)
	}
	for name, change := range map[string]func(m, p, ts *string, h http.Header, b *[]byte){
		"method":        func(m, _, _ *string, _ http.Header, _ *[]byte) { *m = "PUT" },
		"path":          func(_, p, _ *string, _ http.Header, _ *[]byte) { *p = "/deadletter/fn2" },
		"timestamp":     func(_, _, ts *string, _ http.Header, _ *[]byte) { *ts = "1800000001" },
		"header value":  func(_, _, _ *string, h http.Header, _ *[]byte) { h.Set("X-Max-Retries", "4") },
		"header empty":  func(_, _, _ *string, h http.Header, _ *[]byte) { h.Set("X-Retries", "") },
		"header twice":  func(_, _, _ *string, h http.Header, _ *[]byte) { h.Add("X-Max-Retries", "3") },
		"header gone":   func(_, _, _ *string, h http.Header, _ *[]byte) { h.Del("X-Max-Retries") },
		"body":          func(_, _, _ *string, _ http.Header, b *[]byte) { *b = []byte("c") },
		"path into ts":  func(_, p, ts *string, _ http.Header, _ *[]byte) { *p, *ts = "/deadletter/fn\n1800000000", "" },
		"other header ": func(_, _, _ *string, h http.Header, _ *[]byte) { h.Set("X-Delay-Duration", "3") },
		"content type":  func(_, _, _ *string, h http.Header, _ *[]byte) { h.Set("Content-Type", "text/plain") },
	} {
		m, p, ts, h, b := base()
		change(&m, &p, &ts, h, &b)
		got, err := Request(m, p, ts, h, b)
		if err == nil && got == want {
			t.Errorf("%s changed, the canonical request did not", name)
		}
	}
	// A header the mailbox does not read is not covered.
	_, _, _, h2, _ := base()
	h2.Set("X-Other", "1")
	if got, _ := Request(m, p, ts, h2, b); got != want {
		t.Error("an uncovered header changed the canonical request")
	}
	if _, err := Request("POST", "/x", "1", http.Header{"X-Retries": {"1\nx-max-retries:9"}}, nil); err != ErrMalformed {
		t.Errorf("a line break in a signed value: %v, want ErrMalformed", err)
	}
	if _, err := Delivery("1\n2", nil, nil); err != ErrMalformed {
		t.Errorf("a line break in the timestamp: %v, want ErrMalformed", err)
	}
}

func TestSignAndEqual(t *testing.T) {
	t.Parallel()
	k := Key([]byte("t"), PurposeRequest)
	sig := Sign(k, "c")
	if !Equal(k, "c", sig) || Equal(k, "d", sig) || Equal(Key([]byte("t"), PurposeDelivery), "c", sig) ||
		Equal(k, "c", sig[3:]) || Equal(k, "c", "v1=") || Equal(k, "c", "v1=zz") || Equal(k, "c", "") {
		t.Fatal("Equal accepts what it must not, or refuses the signature")
	}
}

func TestCheckTime(t *testing.T) {
	t.Parallel()
	now := time.Unix(1_800_000_000, 0)
	for ts, ok := range map[string]bool{
		"1800000000": true, "1799999700": true, "1800000300": true,
		"1799999699": false, "1800000301": false, "": false, "-1": false, "1e9": false,
		" 1800000000": false, "99999999999999999999": false, "9223372036854775807": false, "0": false,
	} {
		if err := CheckTime(ts, now, 5*time.Minute); (err == nil) != ok {
			t.Errorf("CheckTime(%q) = %v, want ok %v", ts, err, ok)
		}
	}
}
