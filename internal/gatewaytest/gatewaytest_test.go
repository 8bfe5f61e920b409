package gatewaytest_test

import (
	"context"
	"errors"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/openfaas/faas-provider/auth"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/openfaas/mailbox/internal/catalog"
	"github.com/openfaas/mailbox/internal/gatewaytest"
)

func start(t *testing.T, o gatewaytest.Options) *gatewaytest.Gateway {
	t.Helper()
	g, err := gatewaytest.Start(o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(g.Stop)
	return g
}

func newCatalog(t *testing.T, g *gatewaytest.Gateway, creds *auth.BasicAuthCredentials) *catalog.Catalog {
	t.Helper()
	c, err := catalog.New(catalog.Options{
		GatewayURL: g.URL(), Credentials: creds, MissRefresh: time.Nanosecond,
		Registerer: prometheus.NewRegistry(),
	})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// The catalog, the connector's reader of the gateway's API, sees what is
// deployed, with its annotations, and what is removed.
func TestCatalogReadsDeployedFunctions(t *testing.T) {
	g := start(t, gatewaytest.Options{User: "admin", Password: "secret"})
	g.Deploy("fn", nil, map[string]string{catalog.AnnotationMaxRetries: "2", catalog.AnnotationRate: "5/s"})
	g.Deploy("other.elsewhere", nil, nil)
	c := newCatalog(t, g, &auth.BasicAuthCredentials{User: "admin", Password: "secret"})
	ctx := context.Background()

	fn, found, err := c.Lookup(ctx, "fn")
	if err != nil || !found || fn.Namespace != gatewaytest.Namespace || fn.Policy.MaxRetries == nil ||
		*fn.Policy.MaxRetries != 2 || fn.Limits.Rate != 5 || fn.Limits.Per != time.Second {
		t.Fatalf("Lookup(fn) = %+v, %v, %v; want it with its annotations", fn, found, err)
	}
	if _, found, err := c.Lookup(ctx, "other.elsewhere"); err != nil || !found {
		t.Fatalf("Lookup(other.elsewhere) = %v, %v; want found", found, err)
	}
	if _, found, err := c.Lookup(ctx, "absent"); err != nil || found {
		t.Fatalf("Lookup(absent) = %v, %v; want not found", found, err)
	}
	g.Remove("fn")
	if _, found, err := c.Recheck(ctx, "fn"); err != nil || found {
		t.Fatalf("Recheck(fn) after Remove = %v, %v; want not found", found, err)
	}
	if g.Lookups() == 0 || g.Denied() != 0 {
		t.Fatalf("lookups %d, denied %d", g.Lookups(), g.Denied())
	}

	wrong := newCatalog(t, g, &auth.BasicAuthCredentials{User: "admin", Password: "wrong"})
	if _, _, err := wrong.Lookup(ctx, "other.elsewhere"); !errors.Is(err, catalog.ErrCredentials) {
		t.Fatalf("Lookup with wrong credentials = %v, want ErrCredentials", err)
	}
	if g.Denied() != 1 {
		t.Fatalf("denied %d, want 1", g.Denied())
	}
}

func TestFunctionRoutes(t *testing.T) {
	g := start(t, gatewaytest.Options{User: "admin", Password: "secret"})
	rec := gatewaytest.Record(func(w http.ResponseWriter, r *http.Request, n int) {
		body, _ := io.ReadAll(r.Body)
		_, _ = io.WriteString(w, r.URL.RequestURI()+" "+string(body))
	})
	g.Deploy("fn", rec, nil)
	g.Deploy("fn.team", gatewaytest.Record(nil), nil)

	for _, tc := range []struct{ path, want string }{
		{"/function/fn", "/ x"},
		{"/function/fn/a/b%2Fc?q=1", "/a/b%2Fc?q=1 x"},
		{"/function/fn.openfaas-fn/rest", "/rest x"},
	} {
		code, body := post(t, g.URL()+tc.path)
		if code != http.StatusOK || body != tc.want {
			t.Errorf("POST %s = %d %q, want 200 %q", tc.path, code, body, tc.want)
		}
	}
	if code, body := post(t, g.URL()+"/function/fn.team"); code != http.StatusOK || body != "" {
		t.Errorf("POST /function/fn.team = %d %q, want 200 from the other function", code, body)
	}
	if code, body := post(t, g.URL()+"/function/nope"); code != http.StatusNotFound || strings.TrimSpace(body) != "error finding function nope" {
		t.Errorf("POST to an unknown function = %d %q, want the gateway's 404", code, body)
	}
	if calls := rec.Calls(); len(calls) != 3 || string(calls[0].Body) != "x" || calls[0].At.IsZero() {
		t.Errorf("recorded %+v, want the 3 calls to fn", calls)
	}

	g.Stop()
	if _, err := http.Post(g.URL()+"/function/fn", "text/plain", strings.NewReader("x")); err == nil {
		t.Fatal("answered while stopped")
	}
	if err := g.Restart(); err != nil {
		t.Fatal(err)
	}
	if code, _ := post(t, g.URL()+"/function/fn"); code != http.StatusOK || rec.Len() != 4 {
		t.Fatalf("after Restart: %d, %d calls; want the function still deployed", code, rec.Len())
	}
}

func post(t *testing.T, url string) (int, string) {
	t.Helper()
	res, err := http.Post(url, "text/plain", strings.NewReader("x"))
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	body, _ := io.ReadAll(res.Body)
	return res.StatusCode, string(body)
}
