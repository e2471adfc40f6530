package cluster

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"runtime/pprof"
	"strings"
	"sync"
	"testing"
	"time"
)

// testLogWriter sends log lines to t.Output until the test's cleanups have
// run: Raft's untracked transport goroutines may log a line after Shutdown.
type testLogWriter struct {
	mu   sync.Mutex
	w    io.Writer
	done bool
}

func (w *testLogWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.done {
		return len(p), nil
	}
	return w.w.Write(p)
}

// testLogger logs at WALRUS_TEST_LOG's level (debug, info, warn, error;
// default warn) into the test's output, which is shown on failure.
func testLogger(t testing.TB) *slog.Logger {
	w := &testLogWriter{w: t.Output()}
	t.Cleanup(func() {
		w.mu.Lock()
		w.done = true
		w.mu.Unlock()
	})
	var level slog.Level
	if err := level.UnmarshalText([]byte(os.Getenv("WALRUS_TEST_LOG"))); err != nil {
		level = slog.LevelWarn
	}
	return slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: level}))
}

// checkGoroutines fails the test if goroutines started during it are still
// running after its cleanups (registered later, they run earlier).
func checkGoroutines(t *testing.T) {
	base := runtime.NumGoroutine()
	t.Cleanup(func() {
		deadline := time.Now().Add(5 * time.Second)
		for runtime.NumGoroutine() > base {
			if time.Now().After(deadline) {
				var b strings.Builder
				_ = pprof.Lookup("goroutine").WriteTo(&b, 1)
				t.Errorf("goroutine leak: %d running, %d before the test\n%s", runtime.NumGoroutine(), base, b.String())
				return
			}
			time.Sleep(10 * time.Millisecond)
		}
	})
}

// freeAddr returns a loopback address with a port that was free a moment
// ago (nodes keep their address across restarts).
func freeAddr(t testing.TB) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// waitFor retries f until it returns nil or timeout passes.
func waitFor(t testing.TB, timeout time.Duration, f func() error) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		err := f()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("after %s: %v", timeout, err)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// testCluster runs nodes on loopback with fast Raft timers. Each id keeps
// its directory and address across restarts.
type testCluster struct {
	t     *testing.T
	log   *slog.Logger
	dirs  map[NodeID]string
	addrs map[NodeID]string
	uuids map[NodeID]string
	// routes are the nodes' NATS route URLs (a test may change one before a
	// restart).
	routes map[NodeID]string
	nodes  map[NodeID]*Node
	base   string // the nodes' directories are under it
	tune   func(*Config)
}

func newTestCluster(t *testing.T) *testCluster {
	checkGoroutines(t)
	c := &testCluster{
		t: t, log: testLogger(t), base: t.TempDir(),
		dirs: map[NodeID]string{}, addrs: map[NodeID]string{}, uuids: map[NodeID]string{}, routes: map[NodeID]string{}, nodes: map[NodeID]*Node{},
	}
	// Registered after base's removal, so it runs before it: the nodes stop
	// before their directories go (a snapshot written meanwhile would make
	// the removal fail).
	t.Cleanup(func() {
		for id := range c.nodes {
			c.stop(id)
		}
	})
	return c
}

func (c *testCluster) config(id NodeID, join ...string) Config {
	if c.dirs[id] == "" {
		c.dirs[id] = filepath.Join(c.base, fmt.Sprintf("node%d", id))
		c.addrs[id] = freeAddr(c.t)
		c.uuids[id] = fmt.Sprintf("uuid-%d-%d", id, time.Now().UnixNano())
		c.routes[id] = fmt.Sprintf("nats-route://127.0.0.1:%d", 16000+id)
	}
	cfg := Config{
		ID:       id,
		Dir:      c.dirs[id],
		BindAddr: c.addrs[id],
		Self: NodeInfo{
			UUID:     c.uuids[id],
			RouteURL: c.routes[id],
		},
		Join:               join,
		JoinTimeout:        15 * time.Second,
		HeartbeatTimeout:   100 * time.Millisecond,
		ElectionTimeout:    100 * time.Millisecond,
		LeaderLeaseTimeout: 100 * time.Millisecond,
		CommitTimeout:      10 * time.Millisecond,
		WALSegmentSize:     1 << 20,
		Logger:             c.log.With("test_node", uint64(id)),
	}
	if c.tune != nil {
		c.tune(&cfg)
	}
	return cfg
}

// start starts node id (joining through join, if any) and fails the test if
// it does not start.
func (c *testCluster) start(id NodeID, join ...string) *Node {
	c.t.Helper()
	n, err := c.tryStart(c.config(id, join...))
	if err != nil {
		c.t.Fatalf("start node %d: %v", id, err)
	}
	return n
}

func (c *testCluster) tryStart(cfg Config) (*Node, error) {
	n, err := New(cfg)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := n.Start(ctx); err != nil {
		return nil, err
	}
	c.nodes[cfg.ID] = n
	return n, nil
}

// startAll starts the given nodes concurrently (a restarted cluster needs a
// quorum before any Start returns).
func (c *testCluster) startAll(ids ...NodeID) {
	c.t.Helper()
	type res struct {
		id  NodeID
		n   *Node
		err error
	}
	out := make(chan res, len(ids))
	cfgs := make([]Config, len(ids))
	for i, id := range ids {
		cfgs[i] = c.config(id)
	}
	for _, cfg := range cfgs {
		go func() {
			n, err := New(cfg)
			if err == nil {
				ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
				err = n.Start(ctx)
				cancel()
			}
			out <- res{cfg.ID, n, err}
		}()
	}
	var errs []string
	for range ids {
		r := <-out
		if r.err != nil {
			errs = append(errs, r.err.Error())
			continue
		}
		c.nodes[r.id] = r.n
	}
	if len(errs) > 0 {
		c.t.Fatalf("start: %s", strings.Join(errs, "; "))
	}
}

func (c *testCluster) stop(id NodeID) {
	n := c.nodes[id]
	if n == nil {
		return
	}
	delete(c.nodes, id)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := n.Shutdown(ctx); err != nil {
		c.t.Errorf("shutdown node %d: %v", id, err)
	}
}

// leader waits until the running nodes agree on one leader and returns it.
func (c *testCluster) leader() *Node {
	c.t.Helper()
	var leader *Node
	waitFor(c.t, 10*time.Second, func() error {
		leader = nil
		for id, n := range c.nodes {
			lid, _ := n.Leader()
			if lid == 0 {
				return fmt.Errorf("node %d knows no leader", id)
			}
			if leader != nil && leader.ID() != lid {
				return fmt.Errorf("nodes disagree on the leader")
			}
			if l := c.nodes[lid]; l == nil || !l.IsLeader() {
				return fmt.Errorf("leader %d is not running or not leading", lid)
			} else {
				leader = l
			}
		}
		if leader == nil {
			return fmt.Errorf("no nodes")
		}
		return nil
	})
	return leader
}

// converged waits until every running node's metadata equals want's.
func (c *testCluster) converged(want *Node) {
	c.t.Helper()
	waitFor(c.t, 10*time.Second, func() error {
		m := want.Metadata()
		for id, n := range c.nodes {
			ctx, cancel := context.WithTimeout(context.Background(), time.Second)
			err := n.WaitIndex(ctx, m.Index)
			cancel()
			if err != nil {
				return fmt.Errorf("node %d: %w", id, err)
			}
			if !metadataEqual(n.Metadata(), m) {
				return fmt.Errorf("node %d: metadata %+v, want %+v", id, dump(n.Metadata()), dump(m))
			}
		}
		return nil
	})
}

// propose applies cmd through whichever node leads, retrying while
// leadership moves (the machine may be loaded enough for elections). A
// retry after an unknown outcome may find the command already applied.
func (c *testCluster) propose(cmd Command) Result {
	c.t.Helper()
	var res Result
	waitFor(c.t, 15*time.Second, func() error {
		leader := c.leader()
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		var err error
		res, err = leader.Propose(ctx, cmd)
		return err
	})
	return res
}

// createTopic creates a topic through the leader.
func (c *testCluster) createTopic(name string, leader NodeID) Result {
	c.t.Helper()
	res := c.propose(Command{Type: CmdCreateTopic, Topic: name, NodeID: leader, MaxEntries: 100})
	if !res.Applied && res.Reason != "topic exists" {
		c.t.Fatalf("create topic %s: not applied: %s", name, res.Reason)
	}
	return res
}
