package protocol_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/walrus-edge/walrus/broker/protocol"
	"github.com/walrus-edge/walrus/broker/protocol/protocoltest"
)

func dial(t *testing.T, addr string, opts ...protocol.Option) *protocol.Client {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := protocol.Dial(ctx, addr, opts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return c
}

func testCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func TestClient_RoundTrip(t *testing.T) {
	srv := protocoltest.Start(t, protocoltest.NewMemory())
	c := dial(t, srv.Addr())
	ctx := testCtx(t)

	if err := c.Ping(ctx); err != nil {
		t.Fatalf("Ping: %v", err)
	}
	err := c.Put(ctx, "missing", []byte("payload"))
	var se *protocol.ServerError
	if !errors.As(err, &se) || se.Message != "unknown topic missing" {
		t.Fatalf("Put to unknown topic = %v, want ServerError \"unknown topic missing\"", err)
	}
	for range 2 { // idempotent
		if err := c.Register(ctx, "logs"); err != nil {
			t.Fatalf("Register: %v", err)
		}
	}
	msgs := []string{"one", "two words", " leading", "üñí"}
	for _, m := range msgs {
		if err := c.Put(ctx, "logs", []byte(m)); err != nil {
			t.Fatalf("Put %q: %v", m, err)
		}
	}
	if err := c.Put(ctx, "logs", []byte("trailing \n")); err != nil {
		t.Fatal(err)
	}
	for i, m := range append(msgs, "trailing") {
		next, p, ok, err := c.Fetch(ctx, "logs", 1, uint64(i))
		if err != nil || !ok || string(p) != m || next != uint64(i+1) {
			t.Fatalf("Fetch %d = %d %q %v %v, want %q", i, next, p, ok, err, m)
		}
	}
	if _, _, ok, err := c.Fetch(ctx, "logs", 1, 99); ok || err != nil {
		t.Fatalf("Fetch past end = %v %v, want EMPTY", ok, err)
	}
	for _, m := range append(msgs, "trailing") {
		p, ok, err := c.Get(ctx, "logs")
		if err != nil || !ok || string(p) != m {
			t.Fatalf("Get = %q %v %v, want %q", p, ok, err, m)
		}
	}
	if p, ok, err := c.Get(ctx, "logs"); ok || err != nil || p != nil {
		t.Fatalf("drained Get = %q %v %v, want EMPTY", p, ok, err)
	}

	state, err := c.State(ctx, "logs")
	if err != nil {
		t.Fatalf("State: %v", err)
	}
	var st struct {
		LeaderNode     uint64            `json:"leader_node"`
		SegmentLeaders map[string]uint64 `json:"segment_leaders"`
	}
	if err := json.Unmarshal(state, &st); err != nil || st.LeaderNode != 1 || st.SegmentLeaders["1"] != 1 {
		t.Fatalf("State = %s (%v)", state, err)
	}
	metrics, err := c.Metrics(ctx)
	if err != nil || !strings.Contains(string(metrics), `"current_leader"`) {
		t.Fatalf("Metrics = %s, %v", metrics, err)
	}
	if _, err := c.State(ctx, "nope"); !errors.As(err, &se) || se.Message != "unknown topic nope" {
		t.Fatalf("State(nope) = %v", err)
	}

	for raw, want := range map[string]string{
		"GARBAGE":     "ERR unknown command",
		"put logs x":  "ERR unknown command",
		"PUT logs":    "ERR PUT requires a payload",
		"REGISTER  x": "ERR REGISTER requires a topic",
		"":            "ERR invalid frame length",
		"\xff":        "ERR invalid utf-8",
	} {
		got, err := c.Do(ctx, raw)
		if err != nil || got != want {
			t.Errorf("Do(%q) = %q, %v; want %q", raw, got, err, want)
		}
	}
}

func TestClient_LocalValidation(t *testing.T) {
	srv := protocoltest.Start(t, protocoltest.NewMemory())
	c := dial(t, srv.Addr())
	ctx := testCtx(t)
	if err := c.Put(ctx, "a b", []byte("x")); !errors.Is(err, protocol.ErrInvalidTopic) {
		t.Fatalf("Put with a space in the topic = %v, want ErrInvalidTopic", err)
	}
	if err := c.Put(ctx, "t", []byte{0xff}); !errors.Is(err, protocol.ErrInvalidUTF8) {
		t.Fatalf("Put invalid utf-8 = %v", err)
	}
	if err := c.Register(ctx, ""); !errors.Is(err, protocol.ErrMissingTopic) {
		t.Fatalf("Register(\"\") = %v", err)
	}
	if got := srv.Requests(); len(got) != 0 {
		t.Fatalf("invalid commands reached the server: %q", got)
	}
}

func TestClient_UnexpectedReplies(t *testing.T) {
	replies := map[protocol.Verb]protocol.Reply{
		protocol.VerbRegister: protocol.EmptyReply(),
		protocol.VerbGet:      protocol.OKReply(),
		protocol.VerbState:    protocol.RawReply([]byte("not json")),
		protocol.VerbFetch:    protocol.PayloadReply([]byte("nan x")),
		protocol.VerbPing:     protocol.PayloadReply([]byte("PANG")),
	}
	srv := protocoltest.Start(t, protocoltest.HandlerFunc(func(c protocol.Command) protocol.Reply { return replies[c.Verb] }))
	c := dial(t, srv.Addr())
	ctx := testCtx(t)
	if err := c.Register(ctx, "t"); !errors.Is(err, protocol.ErrUnexpectedReply) {
		t.Errorf("Register = %v", err)
	}
	if _, _, err := c.Get(ctx, "t"); !errors.Is(err, protocol.ErrUnexpectedReply) {
		t.Errorf("Get = %v", err)
	}
	if _, err := c.State(ctx, "t"); !errors.Is(err, protocol.ErrUnexpectedReply) {
		t.Errorf("State = %v", err)
	}
	if _, _, _, err := c.Fetch(ctx, "t", 1, 0); !errors.Is(err, protocol.ErrMalformedReply) {
		t.Errorf("Fetch = %v", err)
	}
	if err := c.Ping(ctx); !errors.Is(err, protocol.ErrUnexpectedReply) {
		t.Errorf("Ping = %v", err)
	}
}

func TestClient_StateAcceptsOKPrefix(t *testing.T) {
	srv := protocoltest.Start(t, protocoltest.HandlerFunc(func(protocol.Command) protocol.Reply {
		return protocol.PayloadReply([]byte(`{"state":"Leader"}`))
	}))
	c := dial(t, srv.Addr())
	m, err := c.Metrics(testCtx(t))
	if err != nil || string(m) != `{"state":"Leader"}` {
		t.Fatalf("Metrics = %s, %v", m, err)
	}
}

// The server closing an idle connection (restart, idle timeout) is
// repaired before the next request is sent, so no call fails.
func TestClient_ReconnectsWhenServerClosedIdleConn(t *testing.T) {
	srv := protocoltest.Start(t, protocoltest.NewMemory())
	srv.SetCloseAfterReply(true)
	c := dial(t, srv.Addr())
	ctx := testCtx(t)
	for i := range 5 {
		if err := c.Ping(ctx); err != nil {
			t.Fatalf("Ping %d: %v", i, err)
		}
		waitClosed(t, srv)
	}
	if got := len(srv.Requests()); got != 5 {
		t.Fatalf("server saw %d requests, want 5 (no resends)", got)
	}
}

// waitClosed waits until the server has closed every connection (on
// loopback the FIN has then reached the client's socket).
func waitClosed(t *testing.T, srv *protocoltest.Server) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for srv.OpenConns() > 0 {
		if time.Now().After(deadline) {
			t.Fatal("server did not close its connections")
		}
		time.Sleep(time.Millisecond)
	}
}

func TestClient_NoReconnect(t *testing.T) {
	srv := protocoltest.Start(t, protocoltest.NewMemory())
	c := dial(t, srv.Addr(), protocol.WithReconnect(false))
	ctx := testCtx(t)
	if err := c.Ping(ctx); err != nil {
		t.Fatal(err)
	}
	srv.DropConns()
	waitClosed(t, srv)
	if err := c.Ping(ctx); !errors.Is(err, protocol.ErrConnBroken) {
		t.Fatalf("Ping after drop = %v, want ErrConnBroken", err)
	}
}

// A connection lost after the request was sent is reported, never resent:
// the server may have applied it. The next call dials again.
func TestClient_NoResendAfterRequestSent(t *testing.T) {
	var (
		mu   sync.Mutex
		puts int
	)
	srvRef := make(chan *protocoltest.Server, 1)
	srv := protocoltest.Start(t, protocoltest.HandlerFunc(func(c protocol.Command) protocol.Reply {
		mu.Lock()
		defer mu.Unlock()
		puts++
		if puts == 1 {
			(<-srvRef).DropConns() // applied, then the connection dies before the reply
		}
		return protocol.OKReply()
	}))
	srvRef <- srv
	c := dial(t, srv.Addr())
	ctx := testCtx(t)
	if err := c.Put(ctx, "t", []byte("x")); err == nil {
		t.Fatal("Put succeeded although the connection died before the reply")
	}
	if err := c.Put(ctx, "t", []byte("y")); err != nil {
		t.Fatalf("Put after reconnect: %v", err)
	}
	mu.Lock()
	defer mu.Unlock()
	if puts != 2 {
		t.Fatalf("server applied %d PUTs, want 2 (no resend)", puts)
	}
}

// silentServer accepts one net.Pipe connection and never answers.
func silentPipe() (protocol.DialFunc, func()) {
	var conns []net.Conn
	var mu sync.Mutex
	dial := func(ctx context.Context, network, addr string) (net.Conn, error) {
		client, server := net.Pipe()
		mu.Lock()
		conns = append(conns, client, server)
		mu.Unlock()
		go func() { // drain requests, never reply
			buf := make([]byte, 1024)
			for {
				if _, err := server.Read(buf); err != nil {
					return
				}
			}
		}()
		return client, nil
	}
	return dial, func() {
		mu.Lock()
		defer mu.Unlock()
		for _, c := range conns {
			_ = c.Close()
		}
	}
}

func TestClient_ContextDeadlineAndCancel(t *testing.T) {
	dialer, cleanup := silentPipe()
	defer cleanup()
	c, err := protocol.Dial(context.Background(), "pipe", protocol.WithDialFunc(dialer))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()

	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	start := time.Now()
	if err := c.Ping(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Ping = %v, want context.DeadlineExceeded", err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Fatalf("deadline not honoured: %v", d)
	}

	ctx, cancel = context.WithCancel(context.Background())
	time.AfterFunc(30*time.Millisecond, cancel)
	if _, err := c.Do(ctx, "PING"); !errors.Is(err, context.Canceled) {
		t.Fatalf("Do = %v, want context.Canceled", err)
	}
	if _, err := c.Do(ctx, "PING"); !errors.Is(err, context.Canceled) {
		t.Fatalf("Do with a cancelled ctx = %v", err)
	}
}

func TestClient_ReplyTooLarge(t *testing.T) {
	srv := protocoltest.Start(t, protocoltest.HandlerFunc(func(protocol.Command) protocol.Reply {
		return protocol.RawReply([]byte(strings.Repeat("x", 100)))
	}))
	c := dial(t, srv.Addr(), protocol.WithMaxReplySize(64))
	if _, err := c.Do(testCtx(t), "METRICS"); !errors.Is(err, protocol.ErrFrameTooLarge) {
		t.Fatalf("Do = %v, want ErrFrameTooLarge", err)
	}
}

func TestClient_OversizeRequestClosesConn(t *testing.T) {
	srv := protocoltest.Start(t, protocoltest.NewMemory())
	c := dial(t, srv.Addr())
	ctx := testCtx(t)
	got, err := c.Do(ctx, "PUT t "+strings.Repeat("x", protocol.DefaultMaxFrameSize))
	if err != nil || got != "ERR invalid frame length" {
		t.Fatalf("oversize Do = %q, %v", got, err)
	}
	waitClosed(t, srv)
	if err := c.Ping(ctx); err != nil { // the server closed; the client redials
		t.Fatalf("Ping after oversize frame: %v", err)
	}
}

func TestClient_Close(t *testing.T) {
	srv := protocoltest.Start(t, protocoltest.NewMemory())
	c := dial(t, srv.Addr())
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	if err := c.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	if err := c.Ping(testCtx(t)); !errors.Is(err, protocol.ErrClosed) {
		t.Fatalf("Ping after Close = %v, want ErrClosed", err)
	}
}

func TestClient_DialError(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	_ = ln.Close()
	if _, err := protocol.Dial(testCtx(t), addr); err == nil || !strings.Contains(err.Error(), addr) {
		t.Fatalf("Dial to a closed port = %v", err)
	}
}

// Concurrent callers share the connection; each gets its own reply.
func TestClient_ConcurrentCallsAreSerialised(t *testing.T) {
	srv := protocoltest.Start(t, protocoltest.HandlerFunc(func(c protocol.Command) protocol.Reply {
		return protocol.PayloadReply(c.Payload) // echo
	}))
	c := dial(t, srv.Addr())
	ctx := testCtx(t)
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for g := range 8 {
		wg.Go(func() {
			for i := range 50 {
				want := fmt.Sprintf("g%d-%d", g, i)
				got, err := c.Do(ctx, "PUT t "+want)
				if err != nil || got != "OK "+want {
					errs <- fmt.Errorf("Do = %q, %v; want OK %s", got, err, want)
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}

// A server that sends bytes nobody asked for puts the stream out of step;
// the client must not read them as the next reply.
func TestClient_UnsolicitedBytesForceNewConnection(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	var wg sync.WaitGroup
	defer wg.Wait()
	var accepted sync.WaitGroup
	accepted.Add(2)
	wg.Go(func() {
		for i := range 2 {
			conn, err := ln.Accept()
			if err != nil {
				return
			}
			accepted.Done()
			wg.Go(func() {
				defer conn.Close()
				fr := protocol.NewFrameReader(conn, 0)
				if _, err := fr.Next(); err != nil {
					return
				}
				reply := []byte("OK PONG")
				if i == 0 { // a reply plus a stray frame in one write
					b, _ := protocol.AppendFrame(nil, reply)
					b, _ = protocol.AppendFrame(b, []byte("OK STRAY"))
					_, _ = conn.Write(b)
				} else {
					_ = protocol.WriteFrame(conn, reply)
				}
				_, _ = fr.Next() // wait for the client to go away
			})
		}
	})
	c := dial(t, ln.Addr().String())
	ctx := testCtx(t)
	if err := c.Ping(ctx); err != nil {
		t.Fatal(err)
	}
	if err := c.Ping(ctx); err != nil {
		t.Fatalf("second Ping read the stray frame or failed: %v", err)
	}
	accepted.Wait()
	_ = c.Close()
}
