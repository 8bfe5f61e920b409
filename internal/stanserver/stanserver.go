// Package stanserver runs an embedded NATS Streaming server on a file store,
// for the standalone mailbox and for tests.
package stanserver

import (
	"fmt"
	"strings"
	"time"

	stand "github.com/nats-io/nats-streaming-server/server"
	"github.com/nats-io/nats-streaming-server/stores"
)

// Options configure the embedded server.
type Options struct {
	// Dir holds the file store. Required.
	Dir string
	// Host to listen on. Defaults to 127.0.0.1.
	Host string
	// Port to listen on; -1 picks a free port. Defaults to -1.
	Port int
	// ClusterID of the streaming server. Defaults to faas-cluster.
	ClusterID string
	// MaxPayload is the largest NATS message. Defaults to 8 MiB so that a
	// 1 MiB body plus envelope and protocol overhead always fits.
	MaxPayload int32
	// Retention is how long any message is kept, acknowledged or not. It
	// must exceed the longest delay plus the longest connector outage to
	// be tolerated, because NATS Streaming discards by age even unacked
	// messages. Defaults to 30 days.
	Retention time.Duration
	// DeadLetterChannel holds the dead-letter log. Defaults to
	// mailbox.deadletter.
	DeadLetterChannel string
	// DeadLetterRetention is how long the mailbox keeps a dead letter
	// before it removes it itself, with a removal that is counted. The
	// channel drops records DeadLetterRetention + 24h old, a backstop for
	// what the mailbox missed. Zero (the default) sets no age limit: dead
	// letters are never dropped silently.
	DeadLetterRetention time.Duration
	// StatusChannel holds message statuses, which are worth keeping only
	// while GET /messages/<id> may still answer them: StatusMaxAge, and
	// the last StatusMaxMsgs, so that an index replaying it stays quick.
	// Default to mailbox.status, Retention (its most) and 1,000,000.
	StatusChannel string
	StatusMaxAge  time.Duration
	StatusMaxMsgs int
	// HeartbeatInterval, HeartbeatTimeout and HeartbeatFailCount are how
	// the server finds a client that died without closing (SIGKILL, a
	// lost node): it asks every HeartbeatInterval, waits HeartbeatTimeout
	// for the answer, and drops the client after HeartbeatFailCount
	// unanswered, which hands its unacknowledged messages to the other
	// members of its queue groups. Default to 1s, 1s and 3 (a dead client
	// dropped within about 6 s), nats-streaming-server's --hbi 1s --hbt 1s
	// --hbf 3; the server's own defaults (30s, 10s, 10) take about 5
	// minutes.
	HeartbeatInterval  time.Duration
	HeartbeatTimeout   time.Duration
	HeartbeatFailCount int
	// Memory keeps everything in memory instead of a file store in Dir:
	// a restart loses every message and client, as NATS Streaming run
	// with --store memory (OpenFaaS CE's). Defaults to false.
	Memory bool
}

// Server is a running embedded NATS Streaming server.
type Server struct {
	stan *stand.StanServer
}

// Start runs the server and returns once it accepts clients.
func Start(o Options) (*Server, error) {
	if o.Dir == "" {
		return nil, fmt.Errorf("stanserver: Dir is required")
	}
	if o.Host == "" {
		o.Host = "127.0.0.1"
	}
	if o.Port == 0 {
		o.Port = -1
	}
	if o.ClusterID == "" {
		o.ClusterID = "faas-cluster"
	}
	if o.MaxPayload == 0 {
		o.MaxPayload = 8 << 20
	}
	if o.Retention == 0 {
		o.Retention = 30 * 24 * time.Hour
	}
	if o.DeadLetterChannel == "" {
		o.DeadLetterChannel = "mailbox.deadletter"
	}

	if o.StatusChannel == "" {
		o.StatusChannel = "mailbox.status"
	}
	if o.StatusMaxAge == 0 || o.StatusMaxAge > o.Retention {
		// A channel's limit may not exceed the server's.
		o.StatusMaxAge = o.Retention
	}
	if o.StatusMaxMsgs == 0 {
		o.StatusMaxMsgs = 1_000_000
	}
	if o.HeartbeatInterval <= 0 {
		o.HeartbeatInterval = time.Second
	}
	if o.HeartbeatTimeout <= 0 {
		o.HeartbeatTimeout = time.Second
	}
	if o.HeartbeatFailCount <= 0 {
		o.HeartbeatFailCount = 3
	}

	sopts := stand.GetDefaultOptions()
	sopts.ID = o.ClusterID
	sopts.StoreType = stores.TypeFile
	sopts.FilestoreDir = o.Dir
	if o.Memory {
		sopts.StoreType = stores.TypeMemory
	}
	// Limits by count or size would let the server discard messages that
	// are still waiting; only age bounds the store.
	sopts.MaxChannels = 0
	sopts.MaxMsgs = 0
	sopts.MaxBytes = 0
	sopts.MaxAge = o.Retention
	sopts.MaxSubscriptions = 0
	sopts.PerChannel = perChannel(o)
	// Detect a dead client within seconds rather than the default five
	// minutes, so its unacknowledged messages go to a live replica.
	sopts.ClientHBInterval = o.HeartbeatInterval
	sopts.ClientHBTimeout = o.HeartbeatTimeout
	sopts.ClientHBFailCount = o.HeartbeatFailCount

	nopts := stand.NewNATSOptions()
	nopts.Host = o.Host
	nopts.Port = o.Port
	nopts.MaxPayload = o.MaxPayload
	nopts.NoLog = true
	nopts.NoSigs = true

	s, err := stand.RunServerWithOpts(sopts, nopts)
	if err != nil && !o.Memory && strings.Contains(err.Error(), "unexpected EOF") {
		// A crash or a full disk left a record cut short at the end of a
		// file. It was never synced (file_sync is on), so never
		// acknowledged: no message answered 202 is in it, and a cut
		// subscription record at worst sends a message again. The
		// server's remedy is one start that truncates it; it refuses two
		// such starts in a row, and the next normal start clears that.
		sopts.FileStoreOpts.TruncateUnexpectedEOF = true
		s, err = stand.RunServerWithOpts(sopts, nopts)
	}
	if err != nil {
		return nil, fmt.Errorf("stanserver: start: %w", err)
	}
	return &Server{stan: s}, nil
}

// deadLetterBackstop is how much longer than DeadLetterRetention the
// dead-letter channel keeps a record.
const deadLetterBackstop = 24 * time.Hour

// perChannel is the limits of the channels that differ from the server's.
// A channel's age limit may exceed the server's; a negative one means
// none at all.
func perChannel(o Options) map[string]*stores.ChannelLimits {
	deadLetterAge := time.Duration(-1)
	if o.DeadLetterRetention > 0 {
		deadLetterAge = o.DeadLetterRetention + deadLetterBackstop
	}
	return map[string]*stores.ChannelLimits{
		o.DeadLetterChannel: {MsgStoreLimits: stores.MsgStoreLimits{MaxAge: deadLetterAge}},
		o.StatusChannel:     {MsgStoreLimits: stores.MsgStoreLimits{MaxAge: o.StatusMaxAge, MaxMsgs: o.StatusMaxMsgs}},
	}
}

// URL is the nats:// address clients connect to.
func (s *Server) URL() string { return s.stan.ClientURL() }

// ClusterID is the streaming cluster id.
func (s *Server) ClusterID() string { return s.stan.ClusterID() }

// Shutdown stops the server; the file store keeps every message.
func (s *Server) Shutdown() { s.stan.Shutdown() }
