package chaos

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nuid"
	stango "github.com/nats-io/stan.go"

	"github.com/openfaas/mailbox/internal/envelope"
	"github.com/openfaas/mailbox/internal/queue"
	"github.com/openfaas/mailbox/internal/queue/stan"
	"github.com/openfaas/mailbox/test/e2e/bed"
)

// deadLetters reads the mailbox's dead letters from the bed's NATS, as
// anything with access to NATS could, a little more at each read: every
// read returns all it has seen. Unlike the helpers of jsservertest and
// stanservertest it returns errors, for the caller's poll to try again:
// a loaded machine's NATS may answer late.
type deadLetters struct {
	backend string
	url     string // of the mailbox's NATS
	prefix  string // the channel prefix and JetStream stream
	last    uint64 // the last sequence read
	ids     map[string]bool
}

func newDeadLetters(backend, url, prefix string) *deadLetters {
	return &deadLetters{backend: backend, url: url, prefix: prefix, ids: map[string]bool{}}
}

func (d *deadLetters) read(ctx context.Context) (map[string]bool, error) {
	var err error
	if d.backend == bed.Stan {
		err = d.readStan()
	} else {
		err = d.readJetStream(ctx)
	}
	return d.ids, err
}

// add records the dead letter stored at seq as data.
func (d *deadLetters) add(seq uint64, t time.Time, data []byte) error {
	d.last = max(d.last, seq)
	if r, err := queue.DecodeRecord(seq, t, data); err == nil && r.Data == nil {
		return nil // a removal or a marker
	}
	e, err := envelope.Decode(data)
	if err != nil {
		return fmt.Errorf("dead letter %d: %w", seq, err)
	}
	d.ids[e.ID] = true
	return nil
}

func (d *deadLetters) readJetStream(ctx context.Context) error {
	nc, js, err := connectJetStream(d.url)
	if err != nil {
		return err
	}
	defer nc.Close()
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	st, err := js.Stream(ctx, d.prefix+"-deadletter") // the mailbox names it after its stream
	if err != nil {
		return err
	}
	info, err := st.Info(ctx)
	if err != nil {
		return err
	}
	for seq := max(d.last+1, info.State.FirstSeq); seq <= info.State.LastSeq && info.State.Msgs > 0; seq++ {
		m, err := st.GetMsg(ctx, seq)
		if errors.Is(err, jetstream.ErrMsgNotFound) {
			d.last = seq
			continue // deleted
		}
		if err != nil {
			// Read again at the next call: on a cluster electing a
			// leader a read fails for a while, and a sequence skipped
			// would hide its dead letter for good.
			return fmt.Errorf("dead letter %d: %w", seq, err)
		}
		if err := d.add(seq, m.Time, m.Data); err != nil {
			return err
		}
	}
	return nil
}

// readStan reads the dead-letter channel from after the last sequence
// read until nothing more came for a while.
func (d *deadLetters) readStan() error {
	sc, err := stango.Connect("faas-cluster", "chaos-reader-"+nuid.Next(), stango.NatsURL(d.url),
		stango.ConnectWait(10*time.Second))
	if err != nil {
		return err
	}
	defer sc.Close()
	var (
		mu      sync.Mutex
		last    = time.Now()
		readErr error
	)
	sub, err := sc.Subscribe(stan.DeadLetterChannel(d.prefix), func(m *stango.Msg) {
		mu.Lock()
		defer mu.Unlock()
		if err := d.add(m.Sequence, time.Unix(0, m.Timestamp), m.Data); err != nil && readErr == nil {
			readErr = err
		}
		last = time.Now()
	}, stango.StartAtSequence(d.last+1))
	if err != nil {
		return err
	}
	defer sub.Close()
	for {
		time.Sleep(100 * time.Millisecond)
		mu.Lock()
		quiet := time.Since(last) > time.Second
		mu.Unlock()
		if quiet {
			break
		}
	}
	// Closed before the fields are read: the callback no longer runs.
	_ = sub.Close()
	mu.Lock()
	defer mu.Unlock()
	return readErr
}

// connectJetStream connects to the NATS server at url, waiting up to 10 s,
// for a fault or a check to read or change its streams.
func connectJetStream(url string) (*nats.Conn, jetstream.JetStream, error) {
	nc, err := nats.Connect(url, nats.Timeout(10*time.Second))
	if err != nil {
		return nil, nil, err
	}
	js, err := jetstream.New(nc)
	if err != nil {
		nc.Close()
		return nil, nil, err
	}
	return nc, js, nil
}
