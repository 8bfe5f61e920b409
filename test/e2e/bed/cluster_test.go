package bed

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// envTestNATSServer passes the nats-server binary, built outside, to
// TestCluster's run in the bed's namespaces.
const envTestNATSServer = "MAILBOX_BED_TEST_NATS_SERVER"

// The cluster's nodes route to each other across their namespaces; a
// partitioned node reaches nobody and nobody reaches it, and after the
// heal it is back in the cluster; a killed node starts again in its
// namespace; nothing is left once the cluster is closed.
func TestCluster(t *testing.T) {
	if testing.Short() {
		t.Skip("-short: builds nats-server")
	}
	if !isBed() {
		for _, tool := range []string{"ip", "nsenter"} {
			if _, err := exec.LookPath(tool); err != nil {
				t.Fatalf("the cluster needs %s: %v", tool, err)
			}
		}
		dir := t.TempDir()
		toolsDir, err := filepath.Abs(filepath.Join("..", "..", "tools"))
		if err != nil {
			t.Fatal(err)
		}
		if err := goBuild(t.Context(), toolsDir, dir, "github.com/nats-io/nats-server/v2"); err != nil {
			t.Fatal(err)
		}
		cmd, err := ownNamespacesCommand([]string{"-test.run=^TestCluster$", "-test.v"},
			envTestNATSServer+"="+filepath.Join(dir, "nats-server"))
		if err != nil {
			t.Fatal(err)
		}
		out, err := cmd.CombinedOutput()
		switch {
		case errors.Is(err, syscall.EPERM):
			t.Skip("needs root for namespaces of its own")
		case err != nil:
			t.Fatalf("in namespaces of its own: %v\n%s", err, out)
		}
		t.Logf("%s", out)
		return
	}

	ctx := t.Context()
	c, err := startCluster(3, os.Getenv(envTestNATSServer), t.TempDir(), t.Output())
	if err != nil {
		c.Close()
		t.Fatal(err)
	}
	closed := false
	defer func() {
		if !closed {
			c.Close()
		}
	}()
	for i := range 3 {
		waitFor(t, fmt.Sprintf("%s routed to both others", c.Name(i)), func() error { return routes(ctx, c, i, 2) })
	}

	if err := c.Partition(0); err != nil {
		t.Fatal(err)
	}
	// Cut off both ways, from the other nodes and from clients.
	if err := dialsFrom(ctx, c, 0, c.RouteAddr(1)); err == nil {
		t.Errorf("a partitioned node reaches another")
	}
	if err := dialsFrom(ctx, c, 1, c.RouteAddr(0)); err == nil {
		t.Errorf("a node reaches the partitioned one")
	}
	if conn, err := net.DialTimeout("tcp", c.nodes[0].addr+":4222", time.Second); err == nil {
		conn.Close()
		t.Errorf("a client reaches the partitioned node")
	}
	if err := dialsFrom(ctx, c, 1, c.RouteAddr(2)); err != nil {
		t.Errorf("the others no longer reach each other: %v", err)
	}
	if err := c.Heal(0); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the healed node reached again", func() error { return dialsFrom(ctx, c, 1, c.RouteAddr(0)) })

	if err := c.Kill(1); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "node-1 seeing its route to the killed node-2 gone", func() error { return routes(ctx, c, 0, 1) })
	if err := c.Start(1); err != nil {
		t.Fatal(err)
	}
	for i := range 3 {
		waitFor(t, fmt.Sprintf("%s routed to both others again", c.Name(i)), func() error { return routes(ctx, c, i, 2) })
	}

	c.Close()
	closed = true
	if kids := children(t); len(kids) > 0 {
		t.Errorf("processes %v still run", kids)
	}
	if err := ipCmd("", "link", "show", clusterBridge); err == nil {
		t.Errorf("the bridge %s is still there", clusterBridge)
	}
	if err := ipCmd("", "link", "show", c.nodes[0].link); err == nil {
		t.Errorf("link %s is still there", c.nodes[0].link)
	}
}

// routes is nil once node i's /routez shows want routes.
func routes(ctx context.Context, c *Cluster, i, want int) error {
	status, body, err := c.Monitor(ctx, i, "/routez")
	if err != nil {
		return err
	}
	var r struct {
		NumRoutes int `json:"num_routes"`
		Routes    []struct {
			RemoteName string `json:"remote_name"`
		} `json:"routes"`
	}
	if err := json.Unmarshal(body, &r); err != nil || status != 200 {
		return fmt.Errorf("/routez: %d %v: %s", status, err, body)
	}
	// Servers may hold more than one route (pooled) to the same peer.
	peers := map[string]bool{}
	for _, x := range r.Routes {
		peers[x.RemoteName] = true
	}
	if len(peers) != want {
		return fmt.Errorf("%s routes to %d servers, want %d", c.Name(i), len(peers), want)
	}
	return nil
}

// dialsFrom connects from node i's namespace to addr, within a second.
func dialsFrom(ctx context.Context, c *Cluster, i int, addr string) error {
	ctx, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	conn, err := c.Dial(ctx, i, addr)
	if err != nil {
		return err
	}
	return conn.Close()
}

// waitFor polls cond for up to a minute.
func waitFor(t *testing.T, what string, cond func() error) {
	t.Helper()
	end := time.Now().Add(time.Minute)
	for {
		err := cond()
		if err == nil {
			return
		}
		if time.Now().After(end) {
			t.Fatalf("waiting a minute for %s: %v", what, strings.TrimSpace(err.Error()))
		}
		time.Sleep(100 * time.Millisecond)
	}
}
