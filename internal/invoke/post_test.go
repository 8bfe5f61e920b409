package invoke

import (
	"context"
	"errors"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/openfaas/mailbox/internal/callback"
)

// Post goes through the callback client only: without one it refuses,
// and with the policy's it reaches the gateway's functions only.
func TestPostUsesTheCallbackClient(t *testing.T) {
	b := setup(t, nil)
	inv := New(b.srv.URL, NewClient(5*time.Second, 1), "ua")
	if res := inv.Post(context.Background(), b.srv.URL+"/function/done", []byte("x"), nil); !errors.Is(res.Err, callback.ErrRefused) {
		t.Fatalf("Post without a callback client = %+v, want refused", res)
	}
	p, err := callback.New(callback.Options{GatewayURL: b.srv.URL})
	if err != nil {
		t.Fatal(err)
	}
	inv.WithCallbackClient(p.Client(5*time.Second, 1))
	if res := inv.Post(context.Background(), b.srv.URL+"/function/done", []byte("x"), http.Header{"X-A": {"1"}}); res.Err != nil || res.Status != http.StatusOK {
		t.Fatalf("Post to the gateway = %+v", res)
	}
	if r := b.next(t); r.Path != "/function/done" || r.Header.Get("X-A") != "1" || r.Header.Get("User-Agent") != "ua" {
		t.Errorf("the gateway saw %+v", r)
	}
}

// An error of Post never repeats the callback URL's query.
func TestPostErrorRedactsTheQuery(t *testing.T) {
	p, err := callback.New(callback.Options{GatewayURL: "http://127.0.0.1:1"})
	if err != nil {
		t.Fatal(err)
	}
	inv := New("http://127.0.0.1:1", NewClient(time.Second, 1), "ua").WithCallbackClient(p.Client(time.Second, 1))
	for _, u := range []string{"http://127.0.0.1:1/function/x?token=s3cret", "http://elsewhere.example/?token=s3cret"} {
		res := inv.Post(context.Background(), u, nil, nil)
		if res.Err == nil || strings.Contains(res.Err.Error(), "s3cret") {
			t.Errorf("Post(%s) error %v, want one without the query", u, res.Err)
		}
	}
}
