package bridge

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// TestMain fails the run if goroutines of the bridge or of NATS outlive the
// tests (goleak is not a dependency of this module; this is its core idea).
func TestMain(m *testing.M) {
	code := m.Run()
	if code == 0 {
		if leaked := waitNoLeaks(5 * time.Second); leaked != "" {
			fmt.Fprintf(os.Stderr, "leaked goroutines:\n%s\n", leaked)
			code = 1
		}
	}
	os.Exit(code)
}

// leakedGoroutines returns the stacks of live goroutines that belong to the
// bridge or to NATS, other than the caller's.
func leakedGoroutines() string {
	buf := make([]byte, 1<<20)
	buf = buf[:runtime.Stack(buf, true)]
	var out []string
	for _, g := range strings.Split(string(buf), "\n\n") {
		if strings.Contains(g, "bridge.leakedGoroutines(") || strings.Contains(g, "testing.tRunner") {
			continue
		}
		if strings.Contains(g, "github.com/nats-io/") || strings.Contains(g, "walrus/bridge.") {
			out = append(out, g)
		}
	}
	return strings.Join(out, "\n\n")
}

func waitNoLeaks(timeout time.Duration) string {
	deadline := time.Now().Add(timeout)
	for {
		leaked := leakedGoroutines()
		if leaked == "" || time.Now().After(deadline) {
			return leaked
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// checkGoroutines records runtime.NumGoroutine now and, when the test ends
// (after the cleanups registered later have shut everything down), waits
// up to 5s for the count to come back.
func checkGoroutines(t *testing.T) {
	t.Helper()
	before := runtime.NumGoroutine()
	t.Cleanup(func() {
		deadline := time.Now().Add(5 * time.Second)
		for runtime.NumGoroutine() > before {
			if time.Now().After(deadline) {
				t.Errorf("goroutines: %d before, %d after; bridge/nats ones:\n%s",
					before, runtime.NumGoroutine(), leakedGoroutines())
				return
			}
			time.Sleep(10 * time.Millisecond)
		}
	})
}

// testLogger logs to the test output when -v is given, else discards.
func testLogger(t *testing.T) *slog.Logger {
	if testing.Verbose() && os.Getenv("BRIDGE_TEST_LOG") != "" {
		return slog.New(slog.NewTextHandler(tWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.NewTextHandler(io.Discard, nil))
}

type tWriter struct{ t *testing.T }

func (w tWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

// newBridge creates and starts a bridge on loopback free ports, shut down
// at the end of the test.
func newBridge(t *testing.T, id uint64, h Handler, mutate func(*Config)) *Bridge {
	t.Helper()
	cfg := Config{NodeID: id, Logger: testLogger(t), RequestTimeout: time.Second}
	if mutate != nil {
		mutate(&cfg)
	}
	b, err := New(cfg)
	if err != nil {
		t.Fatalf("New(node %d): %v", id, err)
	}
	if h != nil {
		b.SetHandler(h)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := b.Start(ctx); err != nil {
		t.Fatalf("Start(node %d): %v", id, err)
	}
	t.Cleanup(func() { shutdown(t, b) })
	return b
}

func shutdown(t *testing.T, b *Bridge) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := b.Shutdown(ctx); err != nil {
		t.Errorf("Shutdown: %v", err)
	}
}

// cluster starts n bridges; nodes 2..n are seeded with node 1's route URL
// only, so that the rest of the mesh forms by gossip.
func cluster(t *testing.T, n int, handlers func(id uint64) Handler) []*Bridge {
	t.Helper()
	bs := make([]*Bridge, n)
	bs[0] = newBridge(t, 1, handlers(1), nil)
	seed := bs[0].RouteURL()
	for i := 1; i < n; i++ {
		id := uint64(i + 1)
		bs[i] = newBridge(t, id, handlers(id), func(c *Config) { c.Routes = []string{seed} })
	}
	return bs
}

func testCtx(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

// echoHandler answers every op with values derived from its node id and
// the request, so that a test can tell who served a call. Any hook that is
// set replaces the default of its op.
type echoHandler struct {
	node uint64

	appends, reads, proposes, heartbeats atomic.Int64

	mu       sync.Mutex
	onAppend func(ctx context.Context, req AppendRequest) (AppendResponse, error)
	onRead   func(ctx context.Context, req ReadRequest) (ReadResponse, error)
}

func (h *echoHandler) Append(ctx context.Context, req AppendRequest) (AppendResponse, error) {
	h.appends.Add(1)
	h.mu.Lock()
	f := h.onAppend
	h.mu.Unlock()
	if f != nil {
		return f(ctx, req)
	}
	if err := topicError(req.Topic); err != nil {
		return AppendResponse{}, err
	}
	return AppendResponse{FirstIndex: h.node, FirstOffset: uint64(len(req.Records))}, nil
}

func (h *echoHandler) Read(ctx context.Context, req ReadRequest) (ReadResponse, error) {
	h.reads.Add(1)
	h.mu.Lock()
	f := h.onRead
	h.mu.Unlock()
	if f != nil {
		return f(ctx, req)
	}
	if err := topicError(req.Topic); err != nil {
		return ReadResponse{}, err
	}
	e := Entry{Segment: req.Segment, Index: req.Index, Offset: h.node,
		Record: Record{Timestamp: 7, Headers: []Header{{"topic", req.Topic}}, Value: []byte("v")}}
	return ReadResponse{Entries: []Entry{e}, Count: h.node, Sealed: true}, nil
}

func (h *echoHandler) Propose(_ context.Context, req ProposeRequest) (ProposeResponse, error) {
	h.proposes.Add(1)
	return ProposeResponse{Index: h.node, Result: append([]byte("ok:"), req.Command...)}, nil
}

func (h *echoHandler) Heartbeat(_ context.Context, hb Heartbeat) (HeartbeatAck, error) {
	h.heartbeats.Add(1)
	return HeartbeatAck{LeaderID: h.node, Term: hb.AppliedIndex + 1}, nil
}

// topicError lets a test choose a handler error by topic name:
// "code-<n>" returns a *RemoteError with code n, "plain" a plain error.
func topicError(topic string) error {
	var c int
	if _, err := fmt.Sscanf(topic, "code-%d", &c); err == nil {
		return Errorf(Code(c), "topic %s", topic)
	}
	if topic == "plain" {
		return fmt.Errorf("disk on fire")
	}
	return nil
}

// eventuallyErr calls f (each call bounded by its own ctx of per) until
// its error matches every want, for at most 10s. A single call's last
// attempt may be cut short by its ctx on a loaded machine and report
// ErrTimeout instead of the error under test; the next call then sees it.
// Each call must end within per plus a second.
func eventuallyErr(t *testing.T, per time.Duration, f func(ctx context.Context) error, want ...error) error {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), per)
		start := time.Now()
		err := f(ctx)
		cancel()
		if d := time.Since(start); d > per+time.Second {
			t.Fatalf("call took %v with a ctx of %v: %v", d, per, err)
		}
		ok := err != nil
		for _, w := range want {
			ok = ok && errors.Is(err, w)
		}
		if ok {
			return err
		}
		if time.Now().After(deadline) {
			t.Fatalf("got %v, want errors matching %v", err, want)
		}
	}
}
