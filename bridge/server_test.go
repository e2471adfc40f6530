package bridge

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
)

func TestConfig_Validate(t *testing.T) {
	tests := []struct {
		name string
		cfg  Config
		ok   bool
	}{
		{"defaults", Config{NodeID: 1}, true},
		{"node zero", Config{}, false},
		{"client port", Config{NodeID: 1, ClientPort: 70000}, false},
		{"cluster port", Config{NodeID: 1, ClusterPort: -1}, false},
		{"timeout", Config{NodeID: 1, RequestTimeout: -time.Second}, false},
		{"payload small", Config{NodeID: 1, MaxPayload: 10}, false},
		{"payload big", Config{NodeID: 1, MaxPayload: 1 << 30}, false},
		{"wildcard without advertise", Config{NodeID: 1, Host: "0.0.0.0"}, false},
		{"wildcard with advertise", Config{NodeID: 1, Host: "0.0.0.0", Advertise: "node1.walrus"}, true},
		{"advertise with port", Config{NodeID: 1, Advertise: "node1:6222"}, false},
		{"route", Config{NodeID: 1, Routes: []string{"nats-route://10.0.0.1:6222"}}, true},
		{"route no port", Config{NodeID: 1, Routes: []string{"nats-route://10.0.0.1"}}, false},
		{"route scheme", Config{NodeID: 1, Routes: []string{"http://10.0.0.1:6222"}}, false},
		{"route garbage", Config{NodeID: 1, Routes: []string{"::"}}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := New(tt.cfg)
			if tt.ok && err != nil {
				t.Fatalf("New: %v", err)
			}
			if !tt.ok && !errors.Is(err, ErrInvalidConfig) {
				t.Fatalf("New: got %v, want ErrInvalidConfig", err)
			}
		})
	}
}

func TestBridge_StartShutdown(t *testing.T) {
	checkGoroutines(t)
	for round := range 2 {
		b, err := New(Config{NodeID: 1, Logger: testLogger(t)})
		if err != nil {
			t.Fatal(err)
		}
		if b.ClientURL() != "" || b.Conn() != nil {
			t.Fatalf("round %d: URL or conn before Start", round)
		}
		start := time.Now()
		ctx := testCtx(t, 10*time.Second)
		if round == 1 {
			ctx = context.Background() // no deadline: Start bounds itself
		}
		if err := b.Start(ctx); err != nil {
			t.Fatalf("round %d: Start: %v", round, err)
		}
		t.Logf("round %d: started in %v; client %s, route %s", round, time.Since(start), b.ClientURL(), b.RouteURL())
		if err := b.Start(testCtx(t, time.Second)); err == nil {
			t.Fatalf("round %d: second Start succeeded", round)
		}
		if !strings.HasPrefix(b.ClientURL(), "nats://127.0.0.1:") || !strings.HasPrefix(b.RouteURL(), "nats-route://127.0.0.1:") {
			t.Fatalf("round %d: urls %q %q", round, b.ClientURL(), b.RouteURL())
		}
		clientRoundTrip(t, b.ClientURL())
		if !b.Conn().IsConnected() {
			t.Fatalf("round %d: in-process conn not connected", round)
		}
		for range 2 {
			if err := b.Shutdown(testCtx(t, 5*time.Second)); err != nil {
				t.Fatalf("round %d: Shutdown: %v", round, err)
			}
		}
		if err := b.Start(testCtx(t, time.Second)); !errors.Is(err, ErrClosed) {
			t.Fatalf("round %d: Start after Shutdown: %v, want ErrClosed", round, err)
		}
		if _, err := b.Heartbeat(testCtx(t, time.Second), 1, Heartbeat{}); !errors.Is(err, ErrClosed) {
			t.Fatalf("round %d: call after Shutdown: %v, want ErrClosed", round, err)
		}
	}
}

// clientRoundTrip connects a plain TCP NATS client and checks that a
// message comes back through the server.
func clientRoundTrip(t *testing.T, url string) {
	t.Helper()
	nc, err := nats.Connect(url, nats.Timeout(2*time.Second))
	if err != nil {
		t.Fatalf("connect %s: %v", url, err)
	}
	defer nc.Close()
	sub, err := nc.SubscribeSync("hello")
	if err != nil {
		t.Fatal(err)
	}
	if err := nc.Publish("hello", []byte("world")); err != nil {
		t.Fatal(err)
	}
	m, err := sub.NextMsg(2 * time.Second)
	if err != nil || string(m.Data) != "world" {
		t.Fatalf("round trip: %v %v", err, m)
	}
}

func TestBridge_ShutdownBeforeStart(t *testing.T) {
	b, err := New(Config{NodeID: 1})
	if err != nil {
		t.Fatal(err)
	}
	if err := b.Shutdown(context.Background()); err != nil {
		t.Fatal(err)
	}
	if err := b.Start(context.Background()); !errors.Is(err, ErrClosed) {
		t.Fatalf("Start after Shutdown: %v", err)
	}
	if err := b.SetRoutes(nil); !errors.Is(err, ErrClosed) {
		t.Fatalf("SetRoutes after Shutdown: %v", err)
	}
}

// A listener that cannot bind makes Start fail fast (the server reports a
// fatal error instead of exiting the process) and leaves nothing running.
func TestBridge_StartPortInUse(t *testing.T) {
	checkGoroutines(t)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	port := l.Addr().(*net.TCPAddr).Port
	for _, mutate := range []func(*Config){
		func(c *Config) { c.ClientPort = port },
		func(c *Config) { c.ClusterPort = port },
	} {
		cfg := Config{NodeID: 1, Logger: testLogger(t)}
		mutate(&cfg)
		b, err := New(cfg)
		if err != nil {
			t.Fatal(err)
		}
		start := time.Now()
		err = b.Start(testCtx(t, 10*time.Second))
		if err == nil {
			shutdown(t, b)
			t.Fatal("Start on a used port succeeded")
		}
		t.Logf("Start failed after %v: %v", time.Since(start), err)
		if time.Since(start) > 5*time.Second {
			t.Fatalf("Start took %v to fail", time.Since(start))
		}
		shutdown(t, b)
	}
}

// Shutdown cancels the context of a handler that is still running once its
// own ctx is done, and waits for it.
func TestBridge_ShutdownCancelsHandlers(t *testing.T) {
	checkGoroutines(t)
	h := &echoHandler{node: 1}
	entered := make(chan struct{})
	cancelled := make(chan struct{})
	h.onRead = func(ctx context.Context, _ ReadRequest) (ReadResponse, error) {
		close(entered)
		<-ctx.Done()
		close(cancelled)
		return ReadResponse{}, Errorf(CodeUnavailable, "shutting down")
	}
	b := newBridge(t, 1, h, nil)
	callErr := make(chan error, 1)
	go func() {
		_, err := b.Read(testCtx(t, 10*time.Second), 1, ReadRequest{Topic: "t"})
		callErr <- err
	}()
	<-entered
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	start := time.Now()
	err := b.Shutdown(ctx)
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Shutdown: %v, want the ctx error of the wait for handlers", err)
	}
	if d := time.Since(start); d > 3*time.Second {
		t.Fatalf("Shutdown took %v", d)
	}
	select {
	case <-cancelled:
	default:
		t.Fatal("handler context not cancelled")
	}
	if err := <-callErr; !errors.Is(err, ErrClosed) && !errors.Is(err, ErrUnavailable) {
		t.Fatalf("call during Shutdown: %v", err)
	}
}

// The embedded server logs into the injected logger with component=nats.
func TestBridge_LogsIntoSlog(t *testing.T) {
	rec := &recordingHandler{counts: &componentCounts{n: map[string]int{}}}
	b, err := New(Config{NodeID: 7, Logger: slog.New(rec)})
	if err != nil {
		t.Fatal(err)
	}
	if err := b.Start(testCtx(t, 10*time.Second)); err != nil {
		t.Fatal(err)
	}
	shutdown(t, b)
	for _, c := range []string{"nats", "bridge"} {
		if rec.counts.get(c) == 0 {
			t.Errorf("no log record with component=%s", c)
		}
	}
}

// recordingHandler counts records by their component attribute.
type recordingHandler struct {
	component string
	counts    *componentCounts
}

type componentCounts struct {
	mu sync.Mutex
	n  map[string]int
}

func (c *componentCounts) get(k string) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.n[k]
}

func (h *recordingHandler) Enabled(context.Context, slog.Level) bool { return true }
func (h *recordingHandler) WithGroup(string) slog.Handler            { return h }

func (h *recordingHandler) Handle(context.Context, slog.Record) error {
	h.counts.mu.Lock()
	defer h.counts.mu.Unlock()
	h.counts.n[h.component]++
	return nil
}

func (h *recordingHandler) WithAttrs(attrs []slog.Attr) slog.Handler {
	c := *h
	for _, a := range attrs {
		if a.Key == logKeyComponent {
			c.component = a.Value.String()
		}
	}
	return &c
}

// ClientAdvertise is what clients of the other nodes are told to reach the
// node at (its gossiped connect URL), not the bind or route address.
func TestBridge_ClientAdvertise(t *testing.T) {
	b1 := newBridge(t, 1, nil, nil)
	newBridge(t, 2, nil, func(c *Config) {
		c.Routes = []string{b1.RouteURL()}
		c.ClientAdvertise = "node2.example:14222"
	})
	nc, err := nats.Connect(b1.ClientURL())
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	deadline := time.Now().Add(10 * time.Second)
	for !slices.Contains(nc.DiscoveredServers(), "nats://node2.example:14222") {
		if time.Now().After(deadline) {
			t.Fatalf("discovered servers %v, want node 2's advertised nats://node2.example:14222", nc.DiscoveredServers())
		}
		time.Sleep(10 * time.Millisecond)
	}
	if err := (Config{NodeID: 1, ClientAdvertise: "no-port"}).Validate(); !errors.Is(err, ErrInvalidConfig) {
		t.Fatalf("client advertise without a port: %v, want ErrInvalidConfig", err)
	}
}
