// Package testcluster runs real walrus processes on loopback ports for the
// multi-node tests: it builds the binaries once, starts nodes, stops, kills
// and restarts them, and waits for the cluster to be ready. A failing test
// keeps its data directories and logs and says where they are.
package testcluster

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/walrus-edge/walrus/broker/protocol"
	"github.com/walrus-edge/walrus/tests/freeport"
)

var (
	buildOnce sync.Once
	binDir    string
	buildErr  error
)

// Binaries builds walrus and walrus-cli once per test process and returns
// the directory holding them.
func Binaries(t testing.TB) string {
	t.Helper()
	buildOnce.Do(func() {
		binDir, buildErr = os.MkdirTemp("", "walrus-test-bin-")
		if buildErr != nil {
			return
		}
		root := moduleRoot()
		cmd := exec.Command("go", "build", "-o", binDir+string(os.PathSeparator), "./cmd/walrus", "./cmd/walrus-cli")
		cmd.Dir = root
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if out, err := cmd.CombinedOutput(); err != nil {
			buildErr = fmt.Errorf("go build: %v\n%s", err, out)
		}
	})
	if buildErr != nil {
		t.Fatalf("build walrus: %v", buildErr)
	}
	return binDir
}

// Cleanup removes the built binaries; call it from TestMain after m.Run.
func Cleanup() {
	if binDir != "" {
		_ = os.RemoveAll(binDir) // a leftover temp dir only
	}
}

func moduleRoot() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Join(filepath.Dir(file), "..", "..")
}

// Options configure a test cluster.
type Options struct {
	Nodes             int      // default 3
	MaxSegmentEntries uint64   // WALRUS_MAX_SEGMENT_ENTRIES, default 1,000,000
	MonitorCheckMS    int      // WALRUS_MONITOR_CHECK_MS, default 200
	Args              []string // extra flags for every node
}

// Cluster is a set of walrus processes.
type Cluster struct {
	t     testing.TB
	dir   string
	bin   string
	opts  Options
	Nodes []*Node
}

// Node is one walrus process and its addresses.
type Node struct {
	ID         int
	ClientAddr string
	RaftAddr   string
	NATSURL    string
	DataDir    string
	args       []string
	env        []string
	logPath    string
	mu         sync.Mutex
	cmd        *exec.Cmd
	exited     chan struct{}
	stopping   bool     // the harness asked it to exit
	crashes    []string // unexpected exits
}

// New starts a cluster: node 1 bootstraps, the others join it, and New
// returns when every node reports the full membership and a leader.
func New(t testing.TB, opts Options) *Cluster {
	t.Helper()
	if opts.Nodes == 0 {
		opts.Nodes = 3
	}
	if opts.MonitorCheckMS == 0 {
		opts.MonitorCheckMS = 200
	}
	dir, err := os.MkdirTemp("", "walrus-cluster-")
	if err != nil {
		t.Fatal(err)
	}
	c := &Cluster{t: t, dir: dir, bin: Binaries(t), opts: opts}
	t.Cleanup(c.cleanup)
	for i := 1; i <= opts.Nodes; i++ {
		c.Nodes = append(c.Nodes, c.newNode(i))
	}
	for _, n := range c.Nodes {
		c.Start(n.ID)
		if n.ID == 1 {
			c.waitReady(30*time.Second, 1, 1) // node 1 bootstraps before the others join
		}
	}
	c.WaitReady(60 * time.Second)
	return c
}

func (c *Cluster) newNode(id int) *Node {
	ports := freeport.Get(c.t, 4)
	n := &Node{
		ID:         id,
		ClientAddr: fmt.Sprintf("127.0.0.1:%d", ports[0]),
		RaftAddr:   fmt.Sprintf("127.0.0.1:%d", ports[1]),
		NATSURL:    fmt.Sprintf("nats://127.0.0.1:%d", ports[2]),
		DataDir:    filepath.Join(c.dir, fmt.Sprintf("data%d", id)),
		logPath:    filepath.Join(c.dir, fmt.Sprintf("node%d.log", id)),
	}
	n.args = []string{
		"--node-id", strconv.Itoa(id),
		"--data-dir", n.DataDir,
		"--raft-host", "127.0.0.1", "--raft-port", strconv.Itoa(ports[1]),
		"--client-host", "127.0.0.1", "--client-port", strconv.Itoa(ports[0]),
		"--nats-port", strconv.Itoa(ports[2]), "--nats-cluster-port", strconv.Itoa(ports[3]),
		"--raft-heartbeat-timeout-ms", "500", "--raft-election-timeout-ms", "500",
		"--lease-timeout-ms", "1500", "--failover-timeout-ms", "3000",
		"--log-level", "debug",
	}
	if id > 1 {
		n.args = append(n.args, "--join", c.Nodes[0].RaftAddr)
	}
	n.args = append(n.args, c.opts.Args...)
	n.env = []string{"WALRUS_MONITOR_CHECK_MS=" + strconv.Itoa(c.opts.MonitorCheckMS)}
	if c.opts.MaxSegmentEntries > 0 {
		n.env = append(n.env, fmt.Sprintf("WALRUS_MAX_SEGMENT_ENTRIES=%d", c.opts.MaxSegmentEntries))
	}
	return n
}

// Node returns node id (1-based).
func (c *Cluster) Node(id int) *Node { return c.Nodes[id-1] }

// Start starts node id (again) with its original flags.
func (c *Cluster) Start(id int) {
	c.t.Helper()
	n := c.Node(id)
	n.mu.Lock()
	defer n.mu.Unlock()
	logf, err := os.OpenFile(n.logPath, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
	if err != nil {
		c.t.Fatal(err)
	}
	cmd := exec.Command(filepath.Join(c.bin, "walrus"), n.args...)
	cmd.Env = append(os.Environ(), n.env...)
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		_ = logf.Close()
		c.t.Fatalf("start node %d: %v", id, err)
	}
	exited := make(chan struct{})
	go func() {
		err := cmd.Wait()
		_ = logf.Close()
		n.mu.Lock()
		if !n.stopping {
			n.crashes = append(n.crashes, fmt.Sprintf("node %d exited on its own (%v):\n%s", n.ID, err, tail(n.logPath, 30)))
		}
		n.mu.Unlock()
		close(exited)
	}()
	n.cmd, n.exited, n.stopping = cmd, exited, false
}

// checkCrashes fails the test for every node that exited without being
// asked to: a crash is a bug, never an accepted fault.
func (c *Cluster) checkCrashes() {
	for _, n := range c.Nodes {
		n.mu.Lock()
		crashes := n.crashes
		n.crashes = nil
		n.mu.Unlock()
		for _, msg := range crashes {
			c.t.Errorf("%s", msg)
		}
	}
}

// crashed reports whether any node exited without being asked to.
func (c *Cluster) crashed() bool {
	for _, n := range c.Nodes {
		n.mu.Lock()
		k := len(n.crashes)
		n.mu.Unlock()
		if k > 0 {
			return true
		}
	}
	return false
}

// Stop sends SIGTERM to node id and waits (bounded) for a clean exit.
func (c *Cluster) Stop(id int) { c.signal(id, syscall.SIGTERM, 20*time.Second) }

// Kill sends SIGKILL to node id and waits for it to die.
func (c *Cluster) Kill(id int) { c.signal(id, syscall.SIGKILL, 10*time.Second) }

func (c *Cluster) signal(id int, sig syscall.Signal, wait time.Duration) {
	c.t.Helper()
	n := c.Node(id)
	n.mu.Lock()
	cmd, exited := n.cmd, n.exited
	n.stopping = true
	n.mu.Unlock()
	if cmd == nil {
		return
	}
	_ = cmd.Process.Signal(sig) // it may have exited already
	select {
	case <-exited:
	case <-time.After(wait):
		_ = cmd.Process.Kill()
		<-exited
		c.t.Errorf("node %d did not exit within %v of %v", id, wait, sig)
	}
	if sig == syscall.SIGTERM && cmd.ProcessState != nil && !cmd.ProcessState.Success() {
		c.t.Errorf("node %d exited with %v after SIGTERM", id, cmd.ProcessState)
	}
	n.mu.Lock()
	n.cmd = nil
	n.mu.Unlock()
}

// Running reports whether node id's process is up.
func (c *Cluster) Running(id int) bool {
	n := c.Node(id)
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.cmd == nil {
		return false
	}
	select {
	case <-n.exited:
		return false
	default:
		return true
	}
}

// Metrics is the part of a node's METRICS reply the harness reads.
type Metrics struct {
	State            string  `json:"state"`
	CurrentLeader    *uint64 `json:"current_leader"`
	LastLogIndex     *uint64 `json:"last_log_index"`
	MembershipConfig struct {
		Membership struct {
			Configs [][]uint64                   `json:"configs"`
			Nodes   map[string]map[string]string `json:"nodes"`
		} `json:"membership"`
	} `json:"membership_config"`
}

// NodeMetrics asks node id for METRICS.
func (c *Cluster) NodeMetrics(ctx context.Context, id int) (Metrics, error) {
	cl, err := protocol.Dial(ctx, c.Node(id).ClientAddr)
	if err != nil {
		return Metrics{}, err
	}
	defer func() { _ = cl.Close() }()
	raw, err := cl.Metrics(ctx)
	if err != nil {
		return Metrics{}, err
	}
	var m Metrics
	return m, json.Unmarshal(raw, &m)
}

// WaitReady waits until every running node reports a leader and every node
// of the cluster as a voter.
func (c *Cluster) WaitReady(within time.Duration) {
	c.t.Helper()
	var ids []int
	for _, n := range c.Nodes {
		if c.Running(n.ID) {
			ids = append(ids, n.ID)
		}
	}
	c.waitReady(within, len(c.Nodes), ids...)
}

func (c *Cluster) waitReady(within time.Duration, want int, ids ...int) {
	c.t.Helper()
	defer c.checkCrashes()
	deadline := time.Now().Add(within)
	var last string
	for _, id := range ids {
		for {
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			m, err := c.NodeMetrics(ctx, id)
			cancel()
			switch {
			case err != nil:
				last = err.Error()
			case m.CurrentLeader == nil:
				last = "no leader"
			case len(m.MembershipConfig.Membership.Configs) == 0 || len(m.MembershipConfig.Membership.Configs[0]) < want:
				last = fmt.Sprintf("voters %v", m.MembershipConfig.Membership.Configs)
			default:
				last = ""
			}
			if last == "" {
				break
			}
			if c.crashed() {
				c.checkCrashes()
				c.t.Fatalf("a node exited while waiting for node %d to be ready: %s", id, last)
			}
			if time.Now().After(deadline) {
				c.t.Fatalf("node %d not ready within %v: %s", id, within, last)
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
}

// Leader returns the id of the Raft leader as node 1..n see it.
func (c *Cluster) Leader(ctx context.Context) (int, error) {
	for _, n := range c.Nodes {
		if !c.Running(n.ID) {
			continue
		}
		m, err := c.NodeMetrics(ctx, n.ID)
		if err == nil && m.CurrentLeader != nil {
			return int(*m.CurrentLeader), nil
		}
	}
	return 0, fmt.Errorf("no node reports a leader")
}

// Client dials node id's native protocol port. The connection is closed at
// the end of the test.
func (c *Cluster) Client(id int) *protocol.Client {
	c.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	cl, err := protocol.Dial(ctx, c.Node(id).ClientAddr)
	if err != nil {
		c.t.Fatalf("dial node %d: %v", id, err)
	}
	c.t.Cleanup(func() { _ = cl.Close() })
	return cl
}

// CLI returns the path of the walrus-cli binary.
func (c *Cluster) CLI() string { return filepath.Join(c.bin, "walrus-cli") }

// cleanup stops every node; it keeps the directory of a failed test.
func (c *Cluster) cleanup() {
	c.checkCrashes()
	for _, n := range c.Nodes {
		if c.Running(n.ID) {
			c.signal(n.ID, syscall.SIGKILL, 10*time.Second)
		}
	}
	if c.t.Failed() {
		c.t.Logf("keeping data and logs of the failed run in %s", c.dir)
		for _, n := range c.Nodes {
			c.t.Logf("--- node %d log (tail) ---\n%s", n.ID, tail(n.logPath, 40))
		}
		return
	}
	_ = os.RemoveAll(c.dir) // best effort: a leftover temp dir only
}

func tail(path string, lines int) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return err.Error()
	}
	all := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(all) > lines {
		all = all[len(all)-lines:]
	}
	return strings.Join(all, "\n")
}
