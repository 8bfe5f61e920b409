package bed

import (
	"fmt"
	"path/filepath"

	"github.com/openfaas/mailbox/test/internal/proc"
)

// Replicas of the standalone binary, mailbox serve (API and connector in
// one process), which StartServe runs beside the bed's mailbox function
// and connector: on the bed's NATS server of its backend, with a queue of
// their own (ServePrefix), delivering through the gateway, as two
// replicas of a user's would.
const (
	ServeA = "serve-a"
	ServeB = "serve-b"
)

// ServePrefix is the replicas' channel prefix on NATS Streaming and their
// JetStream stream, apart from the bed's mailbox function's.
const ServePrefix = "serve"

// ServeTokenSecret is the name of the replicas' token secret: requeues
// need it (requeue_auth is on by default).
const ServeTokenSecret = "mailbox-token"

// serveListen is where each replica listens.
var serveListen = map[string]string{ServeA: "127.0.0.1:8092", ServeB: "127.0.0.1:8093"}

// ServeURL is the base URL of the replica name.
func ServeURL(name string) string { return "http://" + serveListen[name] }

// serveSecrets is the replicas' secret_mount_path.
func (b *Bed) serveSecrets() string { return filepath.Join(b.cfg.Dir, "serve-secrets") }

// StartServe gives the replicas the gateway's credentials and a new token,
// starts both and returns the token.
func (b *Bed) StartServe() (token string, err error) {
	if token, err = randomHex(32); err != nil {
		return "", err
	}
	b.mu.Lock()
	secrets := map[string][]byte{"basic-auth-user": []byte(b.User), "basic-auth-password": []byte(b.password), ServeTokenSecret: []byte(token)}
	b.mu.Unlock()
	if err := proc.WriteSecrets(b.serveSecrets(), secrets); err != nil {
		return "", fmt.Errorf("secrets of mailbox serve: %w", err)
	}
	for _, name := range []string{ServeA, ServeB} {
		if err := b.Start(name); err != nil {
			return "", err
		}
	}
	return token, nil
}

// serveComponent is how the bed runs the replica name: on the bed's NATS
// (nats_url), each with a NATS Streaming client id of its own (two
// replicas on one host would otherwise share the default id, and the
// second could not connect while the first lives), and with the token.
// Config.MailboxEnv is put over its settings.
func (b *Bed) serveComponent(name string) (component, bool) {
	env := append(b.mailboxEnv(),
		"channel_prefix="+ServePrefix,
		"jetstream_stream="+ServePrefix,
		"nats_client_id="+name,
		"data_dir="+filepath.Join(b.cfg.Dir, name),
		"gateway_url="+GatewayURL,
		"basic_auth=true",
		"secret_mount_path="+b.serveSecrets(),
		"auth_token_secret="+ServeTokenSecret,
		"listen="+serveListen[name],
		"upstream_timeout=30s",
		"log_format=json",
		"log_level=debug",
	)
	return component{
		bin:   b.cfg.Bin.Serve,
		args:  []string{"serve"},
		env:   proc.Environ(withEnv(envMap(env), b.cfg.MailboxEnv...)),
		ready: listening(serveListen[name]),
	}, true
}
