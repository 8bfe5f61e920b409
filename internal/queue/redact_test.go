package queue_test

import (
	"strings"
	"testing"

	"github.com/openfaas/mailbox/internal/queue"
)

func TestRedactURL(t *testing.T) {
	t.Parallel()
	for in, want := range map[string]string{
		"nats://nats:4222":                    "nats://nats:4222",
		"nats://alice:s3cret@nats:4222":       "nats://[redacted]@nats:4222",
		"nats://t0ken@nats:4222":              "nats://[redacted]@nats:4222", // a token in the user part
		"tls://alice:p@ss@nats:4222/x?y=@z":   "tls://[redacted]@nats:4222/x?y=@z",
		"nats://a:b@n1:4222,nats://c:d@n2:42": "nats://[redacted]@n1:4222,nats://[redacted]@n2:42",
		"nats://a:b@n1:4222, n2:4222":         "nats://[redacted]@n1:4222, n2:4222",
		"alice:s3cret@nats:4222":              "[redacted]@nats:4222",
		"":                                    "",
	} {
		got := queue.RedactURL(in)
		if got != want {
			t.Errorf("RedactURL(%q) = %q, want %q", in, got, want)
		}
		for _, secret := range []string{"s3cret", "t0ken", "p@ss"} {
			if strings.Contains(got, secret) {
				t.Errorf("RedactURL(%q) = %q shows %s", in, got, secret)
			}
		}
	}
}
