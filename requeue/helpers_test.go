package requeue_test

import (
	"net/http"
	"time"

	"github.com/openfaas/mailbox/internal/auth"
)

// signAsTheMailbox signs h and body as the connector signs a delivery
// with token.
func signAsTheMailbox(h http.Header, body []byte, token string) {
	t, err := auth.NewToken(token)
	if err != nil {
		panic(err)
	}
	if err := t.SignDelivery(h, body, time.Now()); err != nil {
		panic(err)
	}
}
