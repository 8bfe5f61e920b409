package auth_test

import (
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/openfaas/mailbox/internal/auth"
)

func ExampleGuard() {
	token, _ := auth.NewToken("s3cret-token") // auth.Load(cfg.SecretMountPath, cfg.AuthTokenSecret)
	guard, _ := auth.NewGuard(token, prometheus.NewRegistry())
	targets, _ := auth.NewTargets([]string{"orders"}, nil, "mailbox")

	requeue := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, err := auth.ReadBody(w, r, 1<<20) // for X-Mailbox-Signature
		if err != nil {
			http.Error(w, "body too large", http.StatusRequestEntityTooLarge)
			return
		}
		if !guard.Authorize(w, r, auth.Requeue, body) {
			return // 401 answered and counted
		}
		if err := targets.Check(strings.TrimPrefix(r.URL.Path, "/deadletter/")); err != nil {
			http.Error(w, err.Error(), http.StatusForbidden)
			return
		}
		fmt.Fprintf(w, "stored %s", body)
	})

	for _, tc := range []struct{ path, authorization string }{
		{"/deadletter/orders", "Bearer s3cret-token"},
		{"/deadletter/orders", "Bearer guess"},
		{"/deadletter/mailbox", "Bearer s3cret-token"},
	} {
		r := httptest.NewRequest(http.MethodPost, tc.path, strings.NewReader(`{"id":1}`))
		r.Header.Set("Authorization", tc.authorization)
		w := httptest.NewRecorder()
		requeue.ServeHTTP(w, r)
		fmt.Print(w.Code, " ", strings.TrimSpace(w.Body.String()), "\n")
	}
	// Output:
	// 200 stored {"id":1}
	// 401 {"error":"bad token: Authorization is not Bearer <the mailbox's token>","field":"Authorization"}
	// 403 refused: "mailbox" is the mailbox itself (mailbox_function): a message to it would loop
}
