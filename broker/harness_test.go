package broker_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/walrus-edge/walrus/broker"
	"github.com/walrus-edge/walrus/storage"
	"github.com/walrus-edge/walrus/tests/freeport"
)

// The harness runs broker.Server nodes in the test process, so that
// `go test -race ./broker/` sees every goroutine of every node: the TCP
// handlers, the NATS RPC handlers, the background loops and Raft.
//
// Logs go to a per-test buffer that is printed only when the test fails
// (WALRUS_TEST_LOG sets the level: debug, info, warn, error; default info).

// TestMain fails the run if goroutines of the nodes (the broker, cluster,
// bridge, Raft or NATS) outlive the tests: every test shuts its nodes down.
func TestMain(m *testing.M) {
	code := m.Run()
	if code == 0 {
		deadline := time.Now().Add(10 * time.Second)
		for {
			leaked := nodeGoroutines()
			if leaked == "" {
				break
			}
			if time.Now().After(deadline) {
				fmt.Fprintf(os.Stderr, "goroutines of the nodes outlived the tests:\n%s\n", leaked)
				code = 1
				break
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	os.Exit(code)
}

// nodeGoroutines returns the stacks of live goroutines running code of a
// node.
func nodeGoroutines() string {
	buf := make([]byte, 4<<20)
	buf = buf[:runtime.Stack(buf, true)]
	var out []string
	for _, g := range strings.Split(string(buf), "\n\n") {
		if strings.Contains(g, "broker_test.nodeGoroutines(") {
			continue
		}
		for _, pkg := range []string{"walrus-edge/walrus/", "github.com/nats-io/", "github.com/hashicorp/raft"} {
			if strings.Contains(g, pkg) {
				out = append(out, g)
				break
			}
		}
	}
	return strings.Join(out, "\n\n")
}

// testLog collects the log lines of one test's nodes.
type testLog struct {
	mu   sync.Mutex
	buf  bytes.Buffer
	done bool
}

// maxLogBytes bounds what a test keeps; the oldest half is dropped beyond.
const maxLogBytes = 4 << 20

func (l *testLog) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.done {
		return len(p), nil
	}
	if l.buf.Len()+len(p) > maxLogBytes {
		keep := l.buf.Bytes()[l.buf.Len()/2:]
		if i := bytes.IndexByte(keep, '\n'); i >= 0 {
			keep = keep[i+1:]
		}
		rest := append([]byte("... (older lines dropped)\n"), keep...)
		l.buf.Reset()
		l.buf.Write(rest)
	}
	l.buf.Write(p)
	return len(p), nil
}

// newTestLogger returns a logger whose output is shown if t fails. It is
// registered first, so its cleanup runs after the nodes' shutdowns.
func newTestLogger(t *testing.T) *slog.Logger {
	l := &testLog{}
	t.Cleanup(func() {
		l.mu.Lock()
		defer l.mu.Unlock()
		l.done = true
		if t.Failed() && l.buf.Len() > 0 {
			t.Logf("node logs:\n%s", l.buf.String())
		}
	})
	level := slog.LevelInfo
	if v := os.Getenv("WALRUS_TEST_LOG"); v != "" {
		if err := level.UnmarshalText([]byte(v)); err != nil {
			t.Fatalf("WALRUS_TEST_LOG=%q: %v", v, err)
		}
	}
	return slog.New(slog.NewTextHandler(l, &slog.HandlerOptions{Level: level}))
}

// Fast timing for the tests.
const (
	leaseTimeout    = time.Second
	failoverTimeout = 2 * time.Second
	requestTimeout  = 5 * time.Second
)

// node is one in-process broker and the configuration it restarts with.
type node struct {
	id  uint64
	cfg broker.Config
	srv *broker.Server // nil while stopped
}

// cluster is a set of in-process nodes. Node ids are 1..n; node 1
// bootstraps and the others join it.
type cluster struct {
	t     *testing.T
	log   *slog.Logger
	nodes []*node
	// tune adjusts every node's configuration before its first start.
	tune func(*broker.Config)
	base string // the nodes' data directories are under it
}

// newCluster starts n nodes and waits until every node sees all n voters
// and a leader. tune (optional) adjusts each node's configuration.
func newCluster(t *testing.T, n int, tune func(*broker.Config)) *cluster {
	t.Helper()
	c := &cluster{t: t, log: newTestLogger(t), tune: tune, base: t.TempDir()}
	// Registered after base's removal, so it runs first: the nodes stop
	// before their directories are removed.
	t.Cleanup(c.shutdownAll)
	for i := 1; i <= n; i++ {
		c.add()
	}
	c.waitMembers(n)
	return c
}

// config builds node id's configuration on fresh ports and a fresh
// directory.
func (c *cluster) config(id uint64) broker.Config {
	p := freeport.Get(c.t, 4)
	cfg := broker.Config{
		NodeID:            id,
		DataDir:           filepath.Join(c.base, fmt.Sprintf("node%d", id)),
		RaftHost:          "127.0.0.1",
		RaftPort:          p[0],
		ClientHost:        "127.0.0.1",
		ClientPort:        p[1],
		NATSPort:          p[2],
		NATSClusterPort:   p[3],
		MonitorInterval:   50 * time.Millisecond,
		LeaseTimeout:      leaseTimeout,
		FailoverTimeout:   failoverTimeout,
		HeartbeatInterval: 100 * time.Millisecond,
		RequestTimeout:    requestTimeout,
		RaftTiming: broker.RaftTiming{
			HeartbeatTimeout:   200 * time.Millisecond,
			ElectionTimeout:    200 * time.Millisecond,
			LeaderLeaseTimeout: 100 * time.Millisecond,
			CommitTimeout:      10 * time.Millisecond,
		},
		// No pre-written zeros per segment: the rollover tests open many.
		Storage: storage.Options{PreallocBytes: -1},
		Logger:  c.log.With("test_node", id),
	}
	if id > 1 {
		cfg.Join = []string{c.nodes[0].raftAddr()}
	}
	if c.tune != nil {
		c.tune(&cfg)
	}
	return cfg
}

func (n *node) raftAddr() string {
	return net.JoinHostPort(n.cfg.RaftHost, strconv.Itoa(n.cfg.RaftPort))
}

// add starts one more node (joining node 1 unless it is node 1).
func (c *cluster) add() *node {
	c.t.Helper()
	n := &node{id: uint64(len(c.nodes) + 1)}
	c.nodes = append(c.nodes, n)
	n.cfg = c.config(n.id)
	c.start(n)
	return n
}

// start starts n with its configuration; the test fails if it cannot.
func (c *cluster) start(n *node) {
	c.t.Helper()
	srv, err := startServer(n.cfg, 30*time.Second)
	if err != nil {
		c.t.Fatalf("start node %d: %v", n.id, err)
	}
	n.srv = srv
}

// startServer creates and starts a server within timeout.
func startServer(cfg broker.Config, timeout time.Duration) (*broker.Server, error) {
	srv, err := broker.New(cfg)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	if err := srv.Start(ctx); err != nil {
		return nil, err
	}
	return srv, nil
}

// restart starts a stopped node again on its directory and ports. A node
// with Raft state needs no Join: it restarts from its log.
func (c *cluster) restart(n *node) {
	c.t.Helper()
	if n.srv != nil {
		c.t.Fatalf("restart node %d: still running", n.id)
	}
	n.cfg.Join = nil
	c.start(n)
}

// stop shuts node n down (bounded).
func (c *cluster) stop(n *node) {
	c.t.Helper()
	if n.srv == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := n.srv.Shutdown(ctx); err != nil {
		c.t.Errorf("shutdown node %d: %v", n.id, err)
	}
	n.srv = nil
}

func (c *cluster) shutdownAll() {
	var wg sync.WaitGroup
	for _, n := range c.nodes {
		if n.srv == nil {
			continue
		}
		wg.Go(func() {
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			if err := n.srv.Shutdown(ctx); err != nil {
				c.t.Errorf("shutdown node %d: %v", n.id, err)
			}
		})
	}
	wg.Wait()
	for _, n := range c.nodes {
		n.srv = nil
	}
}

// node returns node id (1-based).
func (c *cluster) node(id uint64) *node { return c.nodes[id-1] }

// srv returns the running server of node id.
func (c *cluster) srv(id uint64) *broker.Server {
	c.t.Helper()
	n := c.node(id)
	if n.srv == nil {
		c.t.Fatalf("node %d is not running", id)
	}
	return n.srv
}

// running returns the running nodes.
func (c *cluster) running() []*node {
	var out []*node
	for _, n := range c.nodes {
		if n.srv != nil {
			out = append(out, n)
		}
	}
	return out
}

// waitMembers waits until every running node reports want voters and a
// leader.
func (c *cluster) waitMembers(want int) {
	c.t.Helper()
	waitFor(c.t, 30*time.Second, func() error {
		for _, n := range c.running() {
			m := metricsOf(c.t, n.srv)
			if len(m.Membership.Membership.Configs) != 1 || len(m.Membership.Membership.Configs[0]) != want {
				return fmt.Errorf("node %d: voters %v, want %d", n.id, m.Membership.Membership.Configs, want)
			}
			if m.CurrentLeader == nil {
				return fmt.Errorf("node %d: no leader", n.id)
			}
		}
		return nil
	})
}

// raftLeader returns the running node that is the Raft leader, as the
// running nodes agree, waiting for one.
func (c *cluster) raftLeader() *node {
	c.t.Helper()
	var leader *node
	waitFor(c.t, 20*time.Second, func() error {
		leader = nil
		for _, n := range c.running() {
			m := metricsOf(c.t, n.srv)
			if m.State == "Leader" {
				leader = n
			}
		}
		if leader == nil {
			return errors.New("no running node is the raft leader")
		}
		for _, n := range c.running() {
			m := metricsOf(c.t, n.srv)
			if m.CurrentLeader == nil || *m.CurrentLeader != leader.id {
				return fmt.Errorf("node %d does not follow node %d yet", n.id, leader.id)
			}
		}
		return nil
	})
	return leader
}

// metrics is the part of the METRICS JSON the tests read.
type metrics struct {
	ID            uint64  `json:"id"`
	CurrentTerm   uint64  `json:"current_term"`
	State         string  `json:"state"`
	CurrentLeader *uint64 `json:"current_leader"`
	LastLogIndex  *uint64 `json:"last_log_index"`
	Membership    struct {
		Membership struct {
			Configs [][]uint64 `json:"configs"`
			Nodes   map[string]struct {
				Addr string `json:"addr"`
			} `json:"nodes"`
		} `json:"membership"`
	} `json:"membership_config"`
	Walrus struct {
		StorageBackend string `json:"storage_backend"`
		Topics         int    `json:"topics"`
		MetadataIndex  uint64 `json:"metadata_index"`
		DataDirUUID    string `json:"data_dir_uuid"`
	} `json:"walrus"`
}

func metricsOf(t testing.TB, s *broker.Server) metrics {
	t.Helper()
	b, err := s.Metrics()
	if err != nil {
		t.Fatalf("node %d: Metrics: %v", s.NodeID(), err)
	}
	var m metrics
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatalf("node %d: METRICS is not JSON: %v\n%s", s.NodeID(), err, b)
	}
	return m
}

// topicState is the STATE JSON.
type topicState struct {
	CurrentSegment        uint64            `json:"current_segment"`
	LeaderNode            uint64            `json:"leader_node"`
	LastSealedEntryOffset uint64            `json:"last_sealed_entry_offset"`
	SealedSegments        map[string]uint64 `json:"sealed_segments"`
	SegmentLeaders        map[string]uint64 `json:"segment_leaders"`
	PendingSegments       []uint64          `json:"pending_segments"`
	Cursor                uint64            `json:"cursor"`
	CurrentEpoch          uint64            `json:"current_epoch"`
}

func stateOf(t testing.TB, s *broker.Server, topic string) topicState {
	t.Helper()
	b, err := s.State(topic)
	if err != nil {
		t.Fatalf("node %d: State(%s): %v", s.NodeID(), topic, err)
	}
	var st topicState
	if err := json.Unmarshal(b, &st); err != nil {
		t.Fatalf("node %d: STATE is not JSON: %v\n%s", s.NodeID(), err, b)
	}
	return st
}

// waitFor retries f every 10ms until it returns nil, failing the test with
// its last error after timeout.
func waitFor(t testing.TB, timeout time.Duration, f func() error) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		err := f()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("after %v: %v", timeout, err)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// testCtx returns a context cancelled after d or at the end of the test.
func testCtx(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

// rec builds a one-record batch.
func rec(v string) []storage.Record { return []storage.Record{{Value: []byte(v)}} }

// seq returns prefix-000 .. prefix-(n-1).
func seq(prefix string, n int) []string {
	out := make([]string, n)
	for i := range out {
		out[i] = fmt.Sprintf("%s-%03d", prefix, i)
	}
	return out
}

// putAll writes values one by one through s.
func putAll(t *testing.T, ctx context.Context, s *broker.Server, topic string, values []string) {
	t.Helper()
	for _, v := range values {
		if _, err := s.Put(ctx, topic, rec(v)); err != nil {
			t.Fatalf("node %d: Put(%s, %s): %v", s.NodeID(), topic, v, err)
		}
	}
}

// drain reads topic through s until it is empty (at most limit entries).
func drain(t *testing.T, ctx context.Context, s *broker.Server, topic string, limit int) []string {
	t.Helper()
	var out []string
	for len(out) <= limit {
		e, ok, err := s.Get(ctx, topic)
		if err != nil {
			t.Fatalf("node %d: Get(%s) after %d entries: %v", s.NodeID(), topic, len(out), err)
		}
		if !ok {
			return out
		}
		out = append(out, string(e.Value))
	}
	t.Fatalf("Get(%s) returned more than %d entries", topic, limit)
	return nil
}

// equalSeq fails the test if got differs from want, naming the first
// difference.
func equalSeq(t *testing.T, what string, got, want []string) {
	t.Helper()
	for i := range min(len(got), len(want)) {
		if got[i] != want[i] {
			t.Fatalf("%s: entry %d is %q, want %q (got %d entries, want %d)", what, i, got[i], want[i], len(got), len(want))
		}
	}
	if len(got) != len(want) {
		t.Fatalf("%s: got %d entries, want %d (first ones agree); got tail %q", what, len(got), len(want),
			got[min(len(got), len(want)):])
	}
}

// topicLedBy registers topics named prefix-0, prefix-1, ... through s until
// one's open segment is led by a node accepted by ok (placement hashes the
// name), and returns its name and leader.
func topicLedBy(t *testing.T, ctx context.Context, s *broker.Server, prefix string, ok func(leader uint64) bool) (string, uint64) {
	t.Helper()
	for i := range 64 {
		name := fmt.Sprintf("%s-%d", prefix, i)
		if err := s.Register(ctx, name); err != nil {
			t.Fatalf("Register(%s): %v", name, err)
		}
		if st := stateOf(t, s, name); ok(st.LeaderNode) {
			return name, st.LeaderNode
		}
	}
	t.Fatalf("no topic %s-* is placed as wanted", prefix)
	return "", 0
}

// contains reports whether err is set and its text contains sub.
func contains(err error, sub string) bool { return err != nil && strings.Contains(err.Error(), sub) }
