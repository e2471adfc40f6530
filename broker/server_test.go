package broker_test

import (
	"bufio"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"runtime/pprof"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/walrus-edge/walrus/broker"
	"github.com/walrus-edge/walrus/broker/protocol"
	"github.com/walrus-edge/walrus/tests/freeport"
)

// TestSingleNode covers the verbs on a one-node cluster.
func TestSingleNode(t *testing.T) {
	c := newCluster(t, 1, nil)
	s := c.srv(1)
	ctx := testCtx(t, 30*time.Second)

	t.Run("register", func(t *testing.T) {
		for range 2 {
			if err := s.Register(ctx, "logs"); err != nil {
				t.Fatalf("Register: %v", err)
			}
		}
		if got := metricsOf(t, s).Walrus.Topics; got != 1 {
			t.Fatalf("topics after registering one twice: %d", got)
		}
	})

	t.Run("get on empty", func(t *testing.T) {
		e, ok, err := s.Get(ctx, "logs")
		if err != nil || ok {
			t.Fatalf("Get on an empty topic = %+v, %v, %v; want ok=false", e, ok, err)
		}
	})

	t.Run("put and get in order", func(t *testing.T) {
		want := seq("m", 5)
		for i, v := range want {
			res, err := s.Put(ctx, "logs", rec(v))
			if err != nil {
				t.Fatalf("Put: %v", err)
			}
			if res.FirstIndex != uint64(i) || res.FirstOffset != uint64(i) {
				t.Fatalf("Put %d answered index %d offset %d", i, res.FirstIndex, res.FirstOffset)
			}
		}
		// A batch is one append: consecutive indexes.
		res, err := s.Put(ctx, "logs", append(rec("m-005"), rec("m-006")...))
		if err != nil || res.FirstIndex != 5 {
			t.Fatalf("batch Put = %+v, %v", res, err)
		}
		want = append(want, "m-005", "m-006")

		// FETCH reads without moving the cursor.
		for i, v := range want {
			e, ok, err := s.Fetch(ctx, "logs", 1, uint64(i))
			if err != nil || !ok || string(e.Value) != v || e.Index != uint64(i) || e.Segment != 1 {
				t.Fatalf("Fetch(1, %d) = %+v, %v, %v; want %q", i, e, ok, err, v)
			}
		}
		for _, pos := range []struct{ seg, idx uint64 }{{1, uint64(len(want))}, {1, 1 << 40}, {2, 0}, {99, 0}} {
			if e, ok, err := s.Fetch(ctx, "logs", pos.seg, pos.idx); err != nil || ok {
				t.Fatalf("Fetch(%d, %d) past the end = %+v, %v, %v; want ok=false", pos.seg, pos.idx, e, ok, err)
			}
		}
		got := drain(t, ctx, s, "logs", 100)
		equalSeq(t, "GET", got, want)
		if st := stateOf(t, s, "logs"); st.Cursor != uint64(len(want)) {
			t.Fatalf("cursor %d after draining %d entries", st.Cursor, len(want))
		}
		// Drained: FETCH still reads the consumed entries.
		if e, ok, err := s.Fetch(ctx, "logs", 1, 0); err != nil || !ok || string(e.Value) != "m-000" {
			t.Fatalf("Fetch after GET = %+v, %v, %v", e, ok, err)
		}
	})

	t.Run("state", func(t *testing.T) {
		b, err := s.State("logs")
		if err != nil {
			t.Fatal(err)
		}
		keys := topLevelKeys(t, b)
		want := []string{"current_segment", "leader_node", "last_sealed_entry_offset", "sealed_segments", "segment_leaders"}
		if len(keys) < len(want) || strings.Join(keys[:len(want)], ",") != strings.Join(want, ",") {
			t.Fatalf("STATE keys %v; want the original's %v first\n%s", keys, want, b)
		}
		var raw map[string]json.RawMessage
		if err := json.Unmarshal(b, &raw); err != nil {
			t.Fatal(err)
		}
		if string(raw["segment_leaders"]) != `{"1":1}` || string(raw["sealed_segments"]) != `{}` {
			t.Fatalf("STATE maps: segment_leaders %s, sealed_segments %s", raw["segment_leaders"], raw["sealed_segments"])
		}
		if _, ok := raw["pending_segments"]; ok {
			t.Fatalf("pending_segments present without a failover: %s", b)
		}
		st := stateOf(t, s, "logs")
		if st.CurrentSegment != 1 || st.LeaderNode != 1 || st.LastSealedEntryOffset != 0 || st.CurrentEpoch == 0 {
			t.Fatalf("STATE = %+v", st)
		}
		if _, err := s.State("nope"); !errors.Is(err, broker.ErrUnknownTopic) || err.Error() != "unknown topic nope" {
			t.Fatalf("State(unknown) = %v", err)
		}
	})

	t.Run("metrics", func(t *testing.T) {
		b, err := s.Metrics()
		if err != nil {
			t.Fatal(err)
		}
		var m map[string]json.RawMessage
		if err := json.Unmarshal(b, &m); err != nil {
			t.Fatal(err)
		}
		for _, k := range []string{"running_state", "id", "current_term", "vote", "last_log_index", "last_applied",
			"snapshot", "purged", "state", "current_leader", "membership_config", "replication", "walrus"} {
			if _, ok := m[k]; !ok {
				t.Errorf("METRICS has no %q", k)
			}
		}
		var v struct {
			RunningState map[string]any `json:"running_state"`
			ID           uint64         `json:"id"`
			State        string         `json:"state"`
			Leader       *uint64        `json:"current_leader"`
			LastLog      *uint64        `json:"last_log_index"`
			Membership   struct {
				Membership struct {
					Configs [][]uint64                   `json:"configs"`
					Nodes   map[string]map[string]string `json:"nodes"`
				} `json:"membership"`
			} `json:"membership_config"`
			Replication map[string]struct {
				Index uint64 `json:"index"`
			} `json:"replication"`
		}
		if err := json.Unmarshal(b, &v); err != nil {
			t.Fatal(err)
		}
		if _, ok := v.RunningState["Ok"]; !ok || v.ID != 1 || v.State != "Leader" || v.Leader == nil || *v.Leader != 1 || v.LastLog == nil || *v.LastLog == 0 {
			t.Fatalf("METRICS = %s", b)
		}
		if len(v.Membership.Membership.Configs) != 1 || len(v.Membership.Membership.Configs[0]) != 1 || v.Membership.Membership.Configs[0][0] != 1 {
			t.Fatalf("membership configs %v", v.Membership.Membership.Configs)
		}
		if addr := v.Membership.Membership.Nodes["1"]["addr"]; addr != c.node(1).raftAddr() {
			t.Fatalf("membership nodes %v, want node 1 at %s", v.Membership.Membership.Nodes, c.node(1).raftAddr())
		}
		if r, ok := v.Replication["1"]; !ok || r.Index == 0 {
			t.Fatalf("replication %v", v.Replication)
		}
	})

	t.Run("invalid topics", func(t *testing.T) {
		for _, name := range []string{"", "with space", "tab\there", "new\nline", "nul\x00", strings.Repeat("x", 256), "bad\xffutf8"} {
			if err := s.Register(ctx, name); !errors.Is(err, broker.ErrInvalidTopic) {
				t.Errorf("Register(%.20q) = %v, want ErrInvalidTopic", name, err)
			}
		}
		long := strings.Repeat("x", 255)
		if err := s.Register(ctx, long); err != nil {
			t.Fatalf("Register of a 255-byte name: %v", err)
		}
		if _, err := s.Put(ctx, long, rec("v")); err != nil {
			t.Fatalf("Put on a 255-byte topic: %v", err)
		}
		if got := metricsOf(t, s).Walrus.Topics; got != 2 {
			t.Fatalf("%d topics, want 2", got)
		}
	})

	t.Run("unknown topic", func(t *testing.T) {
		// Each waits RequestTimeout/5 for the topic to appear: run them at
		// once.
		var wg sync.WaitGroup
		wg.Go(func() {
			_, err := s.Put(ctx, "ghost", rec("v"))
			if !errors.Is(err, broker.ErrUnknownTopic) || !strings.Contains(err.Error(), "unknown topic ghost") {
				t.Errorf("Put(ghost) = %v, want \"unknown topic ghost\"", err)
			}
		})
		wg.Go(func() {
			if _, _, err := s.Get(ctx, "ghost"); !contains(err, "unknown topic ghost") {
				t.Errorf("Get(ghost) = %v", err)
			}
		})
		wg.Go(func() {
			if _, _, err := s.Fetch(ctx, "ghost", 1, 0); !contains(err, "unknown topic ghost") {
				t.Errorf("Fetch(ghost) = %v", err)
			}
		})
		wg.Wait()
	})

	t.Run("wire", func(t *testing.T) {
		cl := dial(t, s)
		if err := cl.Register(ctx, "wire"); err != nil {
			t.Fatal(err)
		}
		if err := cl.Put(ctx, "wire", []byte("hello world  \n")); err != nil {
			t.Fatal(err)
		}
		p, ok, err := cl.Get(ctx, "wire")
		if err != nil || !ok || string(p) != "hello world" {
			t.Fatalf("GET = %q, %v, %v (the server trims trailing whitespace)", p, ok, err)
		}
		if _, ok, err := cl.Get(ctx, "wire"); err != nil || ok {
			t.Fatalf("GET on drained = %v, %v; want EMPTY", ok, err)
		}
		next, p, ok, err := cl.Fetch(ctx, "wire", 1, 0)
		if err != nil || !ok || next != 1 || string(p) != "hello world" {
			t.Fatalf("FETCH = %d %q %v %v", next, p, ok, err)
		}
		var se *protocol.ServerError
		if err := cl.Put(ctx, "ghost", []byte("x")); !errors.As(err, &se) || se.Message != "unknown topic ghost" {
			t.Fatalf("PUT ghost = %v, want ERR unknown topic ghost", err)
		}
		st, err := cl.State(ctx, "wire")
		if err != nil || !strings.HasPrefix(string(st), `{"current_segment":1,`) {
			t.Fatalf("STATE = %s, %v", st, err)
		}
		if _, err := cl.Metrics(ctx); err != nil {
			t.Fatalf("METRICS: %v", err)
		}
	})
}

// topLevelKeys returns the keys of a JSON object in document order.
func topLevelKeys(t *testing.T, b []byte) []string {
	t.Helper()
	dec := json.NewDecoder(strings.NewReader(string(b)))
	if tok, err := dec.Token(); err != nil || tok != json.Delim('{') {
		t.Fatalf("not a JSON object: %s", b)
	}
	var keys []string
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			t.Fatal(err)
		}
		keys = append(keys, tok.(string))
		var skip json.RawMessage
		if err := dec.Decode(&skip); err != nil {
			t.Fatal(err)
		}
	}
	return keys
}

// dial opens a protocol client to s, closed at the end of the test.
func dial(t *testing.T, s *broker.Server) *protocol.Client {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	cl, err := protocol.Dial(ctx, s.ClientAddr().String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cl.Close() })
	return cl
}

// TestIdentity: the data directory's UUID survives a restart, and a node
// directory is refused to another node id.
func TestIdentity(t *testing.T) {
	c := newCluster(t, 1, nil)
	n := c.node(1)
	ctx := testCtx(t, 30*time.Second)
	if err := n.srv.Register(ctx, "kept"); err != nil {
		t.Fatal(err)
	}
	putAll(t, ctx, n.srv, "kept", seq("k", 3))
	uuid := metricsOf(t, n.srv).Walrus.DataDirUUID
	if len(uuid) != 32 {
		t.Fatalf("data_dir_uuid %q", uuid)
	}
	b, err := os.ReadFile(filepath.Join(n.cfg.DataDir, "node_1", "node.json"))
	if err != nil || !strings.Contains(string(b), uuid) {
		t.Fatalf("node.json = %s, %v; want it to hold %s", b, err, uuid)
	}

	c.stop(n)
	c.restart(n)
	if got := metricsOf(t, n.srv).Walrus.DataDirUUID; got != uuid {
		t.Fatalf("uuid after restart %q, want %q", got, uuid)
	}
	// The restarted node kept its topic and entries.
	equalSeq(t, "after restart", drain(t, ctx, n.srv, "kept", 10), seq("k", 3))
	c.stop(n)

	// Node 1's directory, moved to where node 2 would look for its own (an
	// operator's mistake), is refused to node 2 with a clear error, and the
	// failed start releases everything it took.
	if err := os.Rename(filepath.Join(n.cfg.DataDir, "node_1"), filepath.Join(n.cfg.DataDir, "node_2")); err != nil {
		t.Fatal(err)
	}
	cfg2 := n.cfg
	cfg2.NodeID = 2
	srv, err := startServer(cfg2, 10*time.Second)
	if err == nil {
		_ = srv.Shutdown(context.Background())
		t.Fatal("node 2 started on node 1's directory")
	}
	if want := "belongs to node 1, not node 2"; !strings.Contains(err.Error(), want) {
		t.Fatalf("start node 2 on node 1's directory: %v; want %q", err, want)
	}
	for _, port := range []int{cfg2.RaftPort, cfg2.ClientPort, cfg2.NATSPort, cfg2.NATSClusterPort} {
		ln, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", port))
		if err != nil {
			t.Fatalf("port %d still taken after the failed start: %v", port, err)
		}
		_ = ln.Close()
	}
	// The directory itself still belongs to node 1: moved back, node 1
	// starts on it with its UUID.
	if err := os.Rename(filepath.Join(n.cfg.DataDir, "node_2"), filepath.Join(n.cfg.DataDir, "node_1")); err != nil {
		t.Fatal(err)
	}
	c.restart(n)
	if got := metricsOf(t, n.srv).Walrus.DataDirUUID; got != uuid {
		t.Fatalf("uuid after moving back %q, want %q", got, uuid)
	}

	// A damaged node.json is refused, not replaced.
	c.stop(n)
	if err := os.WriteFile(filepath.Join(n.cfg.DataDir, "node_1", "node.json"), []byte("{"), 0o644); err != nil {
		t.Fatal(err)
	}
	if srv, err := startServer(n.cfg, 10*time.Second); err == nil {
		_ = srv.Shutdown(context.Background())
		t.Fatal("started on a damaged node.json")
	} else if !strings.Contains(err.Error(), "is damaged") {
		t.Fatalf("damaged node.json: %v", err)
	}
}

// TestWire checks the framing rules on a real connection.
func TestWire(t *testing.T) {
	httpAddr := fmt.Sprintf("127.0.0.1:%d", freeport.Get(t, 1)[0])
	c := newCluster(t, 1, func(cfg *broker.Config) { cfg.HTTPAddr = httpAddr })
	s := c.srv(1)
	ctx := testCtx(t, 20*time.Second)

	t.Run("http", func(t *testing.T) {
		if got := s.HTTPAddr().String(); got != httpAddr {
			t.Fatalf("HTTPAddr() = %s, want %s", got, httpAddr)
		}
		for path, want := range map[string]string{
			"/healthz": "ok\n",
			"/readyz":  "ready\n",
			"/metrics": "walrus_cluster_is_leader 1\n",
		} {
			req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+httpAddr+path, nil)
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			body, _ := io.ReadAll(resp.Body)
			_ = resp.Body.Close()
			if resp.StatusCode != http.StatusOK || !strings.Contains(string(body), want) {
				t.Fatalf("GET %s = %d %.200q, want 200 with %q", path, resp.StatusCode, body, want)
			}
		}
		http.DefaultClient.CloseIdleConnections()
	})

	t.Run("ping", func(t *testing.T) {
		cl := dial(t, s)
		if err := cl.Ping(ctx); err != nil {
			t.Fatalf("Ping: %v", err)
		}
		if r, err := cl.Do(ctx, "PING"); err != nil || r != "OK PONG" {
			t.Fatalf("PING = %q, %v", r, err)
		}
		if r, err := cl.Do(ctx, "NOPE x"); err != nil || r != "ERR unknown command" {
			t.Fatalf("NOPE = %q, %v", r, err)
		}
	})

	t.Run("oversized frame closes the connection", func(t *testing.T) {
		conn, br := rawConn(t, s)
		var hdr [4]byte
		binary.LittleEndian.PutUint32(hdr[:], protocol.DefaultMaxFrameSize+1)
		if _, err := conn.Write(hdr[:]); err != nil {
			t.Fatal(err)
		}
		if got := readFrame(t, br); got != "ERR invalid frame length" {
			t.Fatalf("reply %q", got)
		}
		if _, err := br.ReadByte(); !errors.Is(err, io.EOF) {
			t.Fatalf("after an oversized frame the connection is open (read: %v)", err)
		}
		// The largest valid frame is served.
		conn2, br2 := rawConn(t, s)
		body := "PUT nowhere " + strings.Repeat("p", protocol.DefaultMaxFrameSize-len("PUT nowhere "))
		writeFrame(t, conn2, body)
		if got := readFrame(t, br2); got != "ERR unknown topic nowhere" {
			t.Fatalf("max-size frame: reply %.60q", got)
		}
	})

	t.Run("zero-length frame keeps the connection", func(t *testing.T) {
		conn, br := rawConn(t, s)
		for range 2 {
			if _, err := conn.Write([]byte{0, 0, 0, 0}); err != nil {
				t.Fatal(err)
			}
			if got := readFrame(t, br); got != "ERR invalid frame length" {
				t.Fatalf("reply %q", got)
			}
		}
		writeFrame(t, conn, "PING")
		if got := readFrame(t, br); got != "OK PONG" {
			t.Fatalf("PING after empty frames: %q", got)
		}
		// The same through the client: an empty request, then PING on the
		// same connection.
		cl := dial(t, s)
		if r, err := cl.Do(ctx, ""); err != nil || r != "ERR invalid frame length" {
			t.Fatalf("empty request = %q, %v", r, err)
		}
		if err := cl.Ping(ctx); err != nil {
			t.Fatal(err)
		}
	})

	t.Run("client connections close on shutdown", func(t *testing.T) {
		conn, br := rawConn(t, s)
		writeFrame(t, conn, "PING")
		if got := readFrame(t, br); got != "OK PONG" {
			t.Fatal(got)
		}
		c.stop(c.node(1))
		_ = conn.SetReadDeadline(time.Now().Add(5 * time.Second))
		if _, err := br.ReadByte(); !errors.Is(err, io.EOF) {
			t.Fatalf("connection after Shutdown: read %v, want EOF", err)
		}
	})
}

func rawConn(t *testing.T, s *broker.Server) (net.Conn, *bufio.Reader) {
	t.Helper()
	conn, err := net.DialTimeout("tcp", s.ClientAddr().String(), 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	_ = conn.SetDeadline(time.Now().Add(10 * time.Second))
	return conn, bufio.NewReader(conn)
}

func writeFrame(t *testing.T, w io.Writer, body string) {
	t.Helper()
	if err := protocol.WriteFrame(w, []byte(body)); err != nil {
		t.Fatal(err)
	}
}

func readFrame(t *testing.T, br *bufio.Reader) string {
	t.Helper()
	b, err := protocol.NewFrameReader(br, 0).Next()
	if err != nil {
		t.Fatalf("read reply: %v", err)
	}
	return string(b)
}

// TestShutdown: Shutdown is idempotent (also concurrently), and once every
// node of a cluster that served requests has stopped, the goroutines they
// started are gone.
func TestShutdown(t *testing.T) {
	before := runtime.NumGoroutine()
	func() {
		c := newCluster(t, 3, nil)
		ctx := testCtx(t, 30*time.Second)
		// Exercise every path that starts goroutines: forwarded appends,
		// reads and proposals, client connections, rollovers.
		if err := c.srv(2).Register(ctx, "t"); err != nil {
			t.Fatal(err)
		}
		for i := range 6 {
			if _, err := c.srv(uint64(1+i%3)).Put(ctx, "t", rec(fmt.Sprint(i))); err != nil {
				t.Fatal(err)
			}
		}
		for id := uint64(1); id <= 3; id++ {
			cl := dial(t, c.srv(id))
			if err := cl.Ping(ctx); err != nil {
				t.Fatal(err)
			}
			if _, _, err := cl.Get(ctx, "t"); err != nil {
				t.Fatal(err)
			}
		}
		idle := dial(t, c.srv(3)) // left open: Shutdown closes it
		if err := idle.Ping(ctx); err != nil {
			t.Fatal(err)
		}

		var wg sync.WaitGroup
		for _, n := range c.nodes {
			for range 3 {
				wg.Go(func() {
					sctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
					defer cancel()
					if err := n.srv.Shutdown(sctx); err != nil {
						t.Errorf("node %d: Shutdown: %v", n.id, err)
					}
				})
			}
		}
		running := runtime.NumGoroutine()
		wg.Wait()
		t.Logf("goroutines: %d before the nodes started, %d while they ran", before, running)
		for _, n := range c.nodes {
			if err := n.srv.Shutdown(context.Background()); err != nil {
				t.Errorf("node %d: Shutdown again: %v", n.id, err)
			}
			n.srv = nil
		}
	}()

	// The runtime and the race detector keep a few goroutines of their own.
	const slack = 2
	deadline := time.Now().Add(10 * time.Second)
	for runtime.NumGoroutine() > before+slack {
		if time.Now().After(deadline) {
			var b strings.Builder
			_ = pprof.Lookup("goroutine").WriteTo(&b, 1)
			t.Fatalf("goroutine leak: %d running, %d before the nodes started\n%s", runtime.NumGoroutine(), before, b.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// A new node waiting for the other nodes of a new cluster (BootstrapExpect)
// serves /healthz, and /readyz says it is starting; Start waits until its
// context ends, and then undoes what it started.
func TestStartWaitingForNewCluster(t *testing.T) {
	c := &cluster{t: t, log: newTestLogger(t), base: t.TempDir()}
	cfg := c.config(1)
	p := freeport.Get(t, 2)
	cfg.HTTPAddr = fmt.Sprintf("127.0.0.1:%d", p[0])
	cfg.Join = []string{fmt.Sprintf("127.0.0.1:%d", p[1])} // nobody answers there
	cfg.BootstrapExpect = 2
	srv, err := broker.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	started := make(chan error, 1)
	go func() { started <- srv.Start(ctx) }()
	get := func(path string) (int, string, error) {
		resp, err := http.Get("http://" + cfg.HTTPAddr + path)
		if err != nil {
			return 0, "", err
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b), err
	}
	waitFor(t, 10*time.Second, func() error {
		code, body, err := get("/healthz")
		if err != nil || code != http.StatusOK {
			return fmt.Errorf("/healthz: %d %q %v", code, body, err)
		}
		return nil
	})
	if code, body, err := get("/readyz"); err != nil || code != http.StatusServiceUnavailable || !strings.Contains(body, "starting") {
		t.Fatalf("/readyz while waiting: %d %q %v; want 503 starting", code, body, err)
	}
	select {
	case err := <-started:
		t.Fatalf("Start returned while the other node is missing: %v", err)
	case <-time.After(time.Second):
	}
	cancel()
	select {
	case err := <-started:
		if err == nil {
			t.Fatal("Start succeeded without the expected nodes")
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Start did not return after its context ended")
	}
	if _, _, err := get("/healthz"); err == nil {
		t.Fatal("/healthz still answers after the failed Start")
	}
}
