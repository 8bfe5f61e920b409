package chaos

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/openfaas/mailbox/test/e2e/bed"
)

// Faults of a JetStream cluster (bed.Cluster): a node SIGKILLed and
// started again at once; a node cut off from the other nodes and from
// every client; and the heal that lets it back in, a fault of its own: the
// node comes back having campaigned alone, at a higher term, and can
// unseat the leaders. Leader and follower are of the mailbox's stream at
// the time of the fault.
const (
	faultLeaderNode        = "cluster leader node"
	faultFollowerNode      = "cluster follower node"
	faultPartitionLeader   = "partition leader"
	faultPartitionFollower = "partition follower"
	faultHeal              = "heal partition"
)

// clusterScenario runs the mailbox on a 3-node JetStream cluster, its
// streams at 3 replicas, the gateway and the queue-worker on NATS
// Streaming as always. The short form injects one fault of each kind:
// the leader node killed, the leader cut off, the heal; the long form
// cycles through the follower's too.
func clusterScenario(s settings) scenario {
	faults := []string{faultLeaderNode, faultPartitionLeader, faultHeal}
	if s.duration > 0 {
		faults = []string{faultLeaderNode, faultFollowerNode, faultPartitionLeader, faultHeal,
			faultPartitionFollower, faultHeal}
	}
	return scenario{
		name:         "jetstream-cluster",
		backend:      bed.JetStream,
		clusterNodes: 3,
		faults:       faults,
		ready:        clusterWhole,
	}
}

// clusterTimeout bounds each wait on the cluster: a node's restart, its
// catching up, the mailbox's recovery with a node cut off.
const clusterTimeout = 2 * time.Minute

// injectCluster injects a cluster fault. A killed node is started again
// at once. A partition returns once the mailbox has recovered without the
// node (a requeue sent after the cut was delivered): with 3 replicas, one
// node cut off must not stop it. Heal lets every cut off node back in
// and returns once every node is healthy.
func injectCluster(ctx context.Context, b *bed.Bed, rec *record, fault string) error {
	c := b.Cluster
	if c == nil {
		return fmt.Errorf("%s: the bed has no cluster", fault)
	}
	if fault == faultHeal {
		// Running again once the cluster is whole: the healed node can
		// unseat leaders after its link is up.
		var errs []error
		for _, i := range c.Partitioned() {
			errs = append(errs, c.Heal(i))
		}
		if err := errors.Join(errs...); err != nil {
			return err
		}
		return clusterWhole(ctx, b)
	}
	leader, err := streamLeader(ctx, b)
	if err != nil {
		return err
	}
	node := leader
	if fault == faultFollowerNode || fault == faultPartitionFollower {
		node = (leader + 1) % c.Nodes()
	}
	switch fault {
	case faultLeaderNode, faultFollowerNode:
		if err := c.Kill(node); err != nil {
			return err
		}
		return c.Start(node)
	}
	at := time.Now()
	if err := c.Partition(node); err != nil {
		return err
	}
	// The cut took effect: from inside its namespace the node reaches
	// no other node.
	other := (node + 1) % c.Nodes()
	dialCtx, cancel := context.WithTimeout(ctx, 2*time.Second)
	conn, dialErr := c.Dial(dialCtx, node, c.RouteAddr(other))
	cancel()
	if dialErr == nil {
		conn.Close()
		return errors.Join(fmt.Errorf("partitioned %s still reaches %s", c.Name(node), c.Name(other)), c.Heal(node))
	}
	if err := poll(ctx, clusterTimeout, "a requeue sent after "+c.Name(node)+" was cut off delivered", func() error {
		if _, ok := rec.deliveredSentAfter(at); !ok {
			return errors.New("none yet")
		}
		return nil
	}); err != nil {
		return errors.Join(err, c.Heal(node))
	}
	return nil
}

// streamLeader is the node that leads the mailbox's stream.
func streamLeader(ctx context.Context, b *bed.Bed) (int, error) {
	var leader int
	err := poll(ctx, clusterTimeout, "the mailbox stream's leader", func() error {
		nc, js, err := connectJetStream(b.MailboxNATSURL())
		if err != nil {
			return err
		}
		defer nc.Close()
		ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
		s, err := js.Stream(ctx, bed.Stream)
		if err != nil {
			return err
		}
		info := s.CachedInfo()
		if info.Cluster == nil || info.Cluster.Leader == "" {
			return errors.New("no leader")
		}
		if leader = b.Cluster.Index(info.Cluster.Leader); leader < 0 {
			return fmt.Errorf("leader %q is no node of the bed's", info.Cluster.Leader)
		}
		return nil
	})
	return leader, err
}

// clusterWhole returns, unless a node is cut off, once the cluster is
// whole: every node answers /healthz with 200, and the mailbox's streams
// and its consumer each have a leader and both other replicas online,
// current and heard from within the last 2 s. /healthz alone is not
// enough: a node just healed answers 200 from what it knew before the
// cut, before it rejoins and unseats the leaders.
func clusterWhole(ctx context.Context, b *bed.Bed) error {
	if len(b.Cluster.Partitioned()) > 0 {
		return nil // the next fault is the heal
	}
	if err := b.Cluster.WaitHealthy(ctx, clusterTimeout); err != nil {
		return err
	}
	return poll(ctx, clusterTimeout, "every replica of the mailbox's streams and consumer current", func() error {
		return replicasCurrent(ctx, b)
	})
}

// replicasCurrent is nil when the mailbox's streams and its consumer
// each have a leader and every other replica is online, current and
// recently active.
func replicasCurrent(ctx context.Context, b *bed.Bed) error {
	nc, js, err := connectJetStream(b.MailboxNATSURL())
	if err != nil {
		return err
	}
	defer nc.Close()
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	check := func(what string, c *jetstream.ClusterInfo) error {
		if c == nil || c.Leader == "" {
			return fmt.Errorf("%s has no leader", what)
		}
		if len(c.Replicas) != b.Cluster.Nodes()-1 {
			return fmt.Errorf("%s has %d other replicas, want %d", what, len(c.Replicas), b.Cluster.Nodes()-1)
		}
		for _, r := range c.Replicas {
			if !r.Current || r.Offline || r.Active > 2*time.Second {
				return fmt.Errorf("%s: replica %s not caught up (current %t, offline %t, active %s ago)", what, r.Name, r.Current, r.Offline, r.Active)
			}
		}
		return nil
	}
	for _, name := range []string{bed.Stream, bed.DeadLetterStream, bed.Stream + "-status"} {
		st, err := js.Stream(ctx, name)
		if err != nil {
			return fmt.Errorf("stream %s: %w", name, err)
		}
		if err := check("stream "+name, st.CachedInfo().Cluster); err != nil {
			return err
		}
		if name != bed.Stream {
			continue
		}
		c, err := st.Consumer(ctx, "connector")
		if err != nil {
			return fmt.Errorf("consumer connector: %w", err)
		}
		if err := check("consumer connector", c.CachedInfo().Cluster); err != nil {
			return err
		}
	}
	return nil
}

// deliveredSentAfter is the first 2xx call of a message sent at or after
// t, and false while there is none.
func (r *record) deliveredSentAfter(t time.Time) (time.Time, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	var first time.Time
	for i := len(r.order) - 1; i >= 0 && !r.order[i].sent.Before(t); i-- {
		if d, ok := r.order[i].delivered(); ok && (first.IsZero() || d.Before(first)) {
			first = d
		}
	}
	return first, !first.IsZero()
}
