package bed

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/openfaas/mailbox/test/internal/proc"
)

// A JetStream cluster in the bed (Config.ClusterNodes): each node is a
// nats-server of its own in a network namespace of its own, so that one
// can be cut off from the others and from every client by taking a link
// down, as a network partition would.
//
//	bed's namespace: mailbox-fn, connector ─┐
//	                                         │ bridge mbr0 10.99.0.1/24
//	          ┌──────────────┬───────────────┤
//	        mbn1           mbn2            mbn3      (the nodes' links, bed side)
//	          │              │               │
//	  node-1 10.99.0.11  node-2 10.99.0.12  node-3 10.99.0.13
//	  (own namespace)    (own namespace)    (own namespace)
//
// Each node's namespace is held open by a process that only sleeps, so
// that the node can be SIGKILLed and started again in the same namespace
// with the same address. Every process is in the bed's pid namespace, so
// nothing outlives the bed; the links and the bridge go with the
// namespaces. It needs ip (iproute2) and nsenter (util-linux).
const (
	clusterName   = "mailbox"
	clusterBridge = "mbr0"
	clusterSubnet = "10.99.0."
	// Ports on each node's own address.
	clusterClientPort  = 4222
	clusterRoutePort   = 6222
	clusterMonitorPort = 8222
)

// Cluster is the bed's JetStream cluster: nodes 0 to n-1.
type Cluster struct {
	bin, dir string
	log      io.Writer

	mu    sync.Mutex
	nodes []*clusterNode
}

// clusterNode is one node of the cluster.
type clusterNode struct {
	name   string
	addr   string // its IPv4 address
	link   string // its link's end in the bed's namespace
	holder *exec.Cmd
	netns  string // the holder's network namespace, /proc/<pid>/ns/net
	p      *proc.Process
	cut    bool // partitioned
}

// startCluster sets up the network of n nodes and starts them, each in
// its namespace; on error what was set up is for Close to remove.
func startCluster(n int, bin, dir string, log io.Writer) (*Cluster, error) {
	c := &Cluster{bin: bin, dir: dir, log: log}
	if n < 1 || n > 9 {
		return c, fmt.Errorf("cluster of %d nodes: want 1 to 9", n)
	}
	if err := ipCmd("", "link", "add", clusterBridge, "type", "bridge"); err != nil {
		return c, err
	}
	if err := ipCmd("", "addr", "add", clusterSubnet+"1/24", "dev", clusterBridge); err != nil {
		return c, err
	}
	if err := ipCmd("", "link", "set", clusterBridge, "up"); err != nil {
		return c, err
	}
	for i := range n {
		node, err := c.addNode(i)
		if node != nil {
			c.nodes = append(c.nodes, node)
		}
		if err != nil {
			return c, err
		}
	}
	// All at once: each waits for the others' routes before it elects a
	// meta leader.
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() { errs[i] = c.Start(i) })
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return c, err
	}
	// Whole before its clients come: routes set up, a meta leader
	// elected. A client that creates its streams meanwhile can lose each
	// request's answer (10 s each) while the routes are still sorting
	// out duplicates.
	for i := range n {
		if err := c.waitHealthy(context.Background(), i, startTimeout); err != nil {
			return c, err
		}
	}
	return c, nil
}

// waitHealthy returns once node i's /healthz answers 200 (in the
// cluster, a meta leader known, its replicas current), or the error after
// timeout.
func (c *Cluster) waitHealthy(ctx context.Context, i int, timeout time.Duration) error {
	end := time.Now().Add(timeout)
	for {
		status, body, err := c.Monitor(ctx, i, "/healthz")
		if err == nil && status == http.StatusOK {
			return nil
		}
		if err == nil {
			err = fmt.Errorf("/healthz: %d %s", status, body)
		}
		if time.Now().After(end) {
			return fmt.Errorf("%s not healthy after %s: %w", c.nodes[i].name, timeout, err)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// WaitHealthy returns once every node answers /healthz with 200, or the
// error after timeout.
func (c *Cluster) WaitHealthy(ctx context.Context, timeout time.Duration) error {
	end := time.Now().Add(timeout)
	for i := range c.nodes {
		if err := c.waitHealthy(ctx, i, time.Until(end)); err != nil {
			return err
		}
	}
	return nil
}

// addNode makes node i's namespace and its link to the bridge.
func (c *Cluster) addNode(i int) (*clusterNode, error) {
	n := &clusterNode{
		name: "node-" + strconv.Itoa(i+1),
		addr: clusterSubnet + strconv.Itoa(11+i),
		link: "mbn" + strconv.Itoa(i+1),
	}
	n.holder = exec.Command("sleep", "infinity")
	// No Pdeathsig: it would fire when the thread that started the
	// holder ends, and Dial ends threads. The bed's pid namespace ends it.
	n.holder.SysProcAttr = &syscall.SysProcAttr{Cloneflags: syscall.CLONE_NEWNET}
	if err := n.holder.Start(); err != nil {
		return nil, fmt.Errorf("%s: namespace: %w", n.name, err)
	}
	host, err := hostPIDOf(n.holder.Process.Pid)
	if err != nil {
		return n, fmt.Errorf("%s: %w", n.name, err)
	}
	n.netns = "/proc/" + strconv.Itoa(host) + "/ns/net"
	peer := "mbp" + strconv.Itoa(i+1)
	steps := [][]string{
		{"", "link", "add", n.link, "type", "veth", "peer", "name", peer},
		// A pid here is read in ip's pid namespace, the bed's.
		{"", "link", "set", peer, "netns", strconv.Itoa(n.holder.Process.Pid)},
		{"", "link", "set", n.link, "master", clusterBridge},
		{"", "link", "set", n.link, "up"},
		{n.netns, "addr", "add", n.addr + "/24", "dev", peer},
		{n.netns, "link", "set", peer, "up"},
		{n.netns, "link", "set", "lo", "up"},
	}
	for _, s := range steps {
		if err := ipCmd(s[0], s[1:]...); err != nil {
			return n, fmt.Errorf("%s: %w", n.name, err)
		}
	}
	return n, nil
}

// ipCmd runs ip with args, in the network namespace netns ("" for the
// bed's).
func ipCmd(netns string, args ...string) error {
	name, argv := "ip", args
	if netns != "" {
		name, argv = "nsenter", append([]string{"--net=" + netns, "--", "ip"}, args...)
	}
	out, err := exec.Command(name, argv...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s %s: %w: %s", name, strings.Join(argv, " "), err, strings.TrimSpace(string(out)))
	}
	return nil
}

// hostPIDOf is the machine's pid of the process that is pid in this
// process's pid namespace: /proc is the machine's, so a namespace's path
// in it needs that one.
func hostPIDOf(pid int) (int, error) {
	own, err := os.Readlink("/proc/self/ns/pid")
	if err != nil {
		return 0, err
	}
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return 0, err
	}
	for _, e := range entries {
		host, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if ns, err := os.Readlink(filepath.Join("/proc", e.Name(), "ns", "pid")); err != nil || ns != own {
			continue
		}
		status, err := os.ReadFile(filepath.Join("/proc", e.Name(), "status"))
		if err != nil {
			continue
		}
		for line := range strings.Lines(string(status)) {
			if rest, ok := strings.CutPrefix(line, "NSpid:"); ok {
				f := strings.Fields(rest)
				if len(f) > 0 && f[len(f)-1] == strconv.Itoa(pid) {
					return host, nil
				}
			}
		}
	}
	return 0, fmt.Errorf("no process %d of this pid namespace in /proc", pid)
}

// Nodes is the number of nodes.
func (c *Cluster) Nodes() int { return len(c.nodes) }

// Name is node i's server name.
func (c *Cluster) Name(i int) string { return c.nodes[i].name }

// Index is the node of server name, or -1.
func (c *Cluster) Index(name string) int {
	for i, n := range c.nodes {
		if n.name == name {
			return i
		}
	}
	return -1
}

// URL lists every node's client URL, comma-separated, as the mailbox's
// nats_url.
func (c *Cluster) URL() string {
	var urls []string
	for _, n := range c.nodes {
		urls = append(urls, fmt.Sprintf("nats://%s:%d", n.addr, clusterClientPort))
	}
	return strings.Join(urls, ",")
}

// Start starts node i unless it is running, in its namespace with its
// stored data, and returns once it accepts clients.
func (c *Cluster) Start(i int) error {
	n := c.nodes[i]
	c.mu.Lock()
	running := n.p != nil && !n.p.Exited()
	c.mu.Unlock()
	if running {
		return nil
	}
	var routes []string
	for j, o := range c.nodes {
		if j != i {
			routes = append(routes, fmt.Sprintf("nats://%s:%d", o.addr, clusterRoutePort))
		}
	}
	args := []string{"--net=" + n.netns, "--", c.bin,
		"-n", n.name, "-js", "-sd", filepath.Join(c.dir, n.name),
		"-a", n.addr, "-p", strconv.Itoa(clusterClientPort), "-m", strconv.Itoa(clusterMonitorPort),
		"--cluster_name", clusterName, "--cluster", fmt.Sprintf("nats://%s:%d", n.addr, clusterRoutePort),
		"--routes", strings.Join(routes, ","),
	}
	tee := &proc.LineWriter{Line: func(line string) { _, _ = io.WriteString(c.log, n.name+": "+line+"\n") }}
	// nsenter enters the namespace and execs the server: the process is
	// the server's, and a signal to it reaches the server.
	p, err := proc.Options{Tee: tee}.Start(n.name, "nsenter", nil, args...)
	if err != nil {
		return err
	}
	if err := logged("Server is ready")(p); err != nil {
		_ = p.Stop(5 * time.Second)
		return fmt.Errorf("%s: %w\n%s", n.name, err, p.Output())
	}
	c.mu.Lock()
	n.p = p
	c.mu.Unlock()
	return nil
}

// Kill SIGKILLs node i and returns once it has exited.
func (c *Cluster) Kill(i int) error {
	c.mu.Lock()
	p := c.nodes[i].p
	c.nodes[i].p = nil
	c.mu.Unlock()
	if p == nil {
		return fmt.Errorf("%s is not running", c.nodes[i].name)
	}
	_ = p.Signal(os.Kill)
	return p.Stop(stopGrace)
}

// Partition cuts node i off from the other nodes and from every client
// (its link to the bridge down): its connections stay open, and what
// they send is lost, as in a partition.
func (c *Cluster) Partition(i int) error {
	if err := ipCmd("", "link", "set", c.nodes[i].link, "down"); err != nil {
		return err
	}
	c.mu.Lock()
	c.nodes[i].cut = true
	c.mu.Unlock()
	return nil
}

// Heal ends node i's partition.
func (c *Cluster) Heal(i int) error {
	if err := ipCmd("", "link", "set", c.nodes[i].link, "up"); err != nil {
		return err
	}
	c.mu.Lock()
	c.nodes[i].cut = false
	c.mu.Unlock()
	return nil
}

// Partitioned lists the nodes cut off now.
func (c *Cluster) Partitioned() []int {
	c.mu.Lock()
	defer c.mu.Unlock()
	var cut []int
	for i, n := range c.nodes {
		if n.cut {
			cut = append(cut, i)
		}
	}
	return cut
}

// Dial connects to addr from inside node i's network namespace, as the
// node itself would.
func (c *Cluster) Dial(ctx context.Context, i int, addr string) (net.Conn, error) {
	type result struct {
		conn net.Conn
		err  error
	}
	ch := make(chan result, 1)
	go func() {
		// The thread moves to the node's namespace and is never given
		// back: it ends with this goroutine. A socket belongs to the
		// namespace it was made in, whichever thread uses it later.
		runtime.LockOSThread()
		conn, err := func() (net.Conn, error) {
			f, err := os.Open(c.nodes[i].netns)
			if err != nil {
				return nil, err
			}
			defer f.Close()
			if err := unix.Setns(int(f.Fd()), unix.CLONE_NEWNET); err != nil {
				return nil, fmt.Errorf("enter %s's network namespace: %w", c.nodes[i].name, err)
			}
			var d net.Dialer
			return d.DialContext(ctx, "tcp", addr)
		}()
		ch <- result{conn, err}
	}()
	r := <-ch
	return r.conn, r.err
}

// RouteAddr is node i's cluster (route) address.
func (c *Cluster) RouteAddr(i int) string {
	return net.JoinHostPort(c.nodes[i].addr, strconv.Itoa(clusterRoutePort))
}

// Monitor GETs path (such as /healthz or /routez) from node i's
// monitoring port, from inside its namespace: it answers while the node
// is cut off.
func (c *Cluster) Monitor(ctx context.Context, i int, path string) (int, []byte, error) {
	client := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{
		DialContext:       func(ctx context.Context, _, addr string) (net.Conn, error) { return c.Dial(ctx, i, addr) },
		DisableKeepAlives: true,
	}}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet,
		fmt.Sprintf("http://%s:%d%s", c.nodes[i].addr, clusterMonitorPort, path), nil)
	if err != nil {
		return 0, nil, err
	}
	res, err := client.Do(req)
	if err != nil {
		return 0, nil, err
	}
	defer res.Body.Close()
	body, err := io.ReadAll(io.LimitReader(res.Body, 1<<20))
	return res.StatusCode, body, err
}

// Process is node i's process, or nil when it is not running.
func (c *Cluster) Process(i int) *proc.Process {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.nodes[i].p
}

// Close stops every node and its namespace's holder, and removes the
// links and the bridge.
func (c *Cluster) Close() {
	c.mu.Lock()
	nodes := c.nodes
	c.mu.Unlock()
	var wg sync.WaitGroup
	for _, n := range nodes {
		wg.Go(func() {
			c.mu.Lock()
			p := n.p
			n.p = nil
			c.mu.Unlock()
			if p != nil {
				_ = p.Stop(stopGrace)
			}
			if n.holder != nil && n.holder.Process != nil {
				_ = n.holder.Process.Kill()
				_ = n.holder.Wait()
			}
		})
	}
	wg.Wait()
	// The bed's own namespace stays as long as the bed: the links and the
	// bridge are removed so that another bed's cluster in it can be set
	// up. A link would go with its node's namespace, but the kernel frees
	// a namespace later, in the background.
	for _, n := range nodes {
		_ = ipCmd("", "link", "del", n.link)
	}
	_ = ipCmd("", "link", "del", clusterBridge)
}
