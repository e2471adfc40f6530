package cluster

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"testing"
	"time"

	"github.com/hashicorp/raft"
)

func TestStreamLayer_DispatchAndGate(t *testing.T) {
	checkGoroutines(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	joined := make(chan byte, 1)
	s := newStreamLayer(ln, ln.Addr().String(), slog.New(slog.DiscardHandler), func(_ context.Context, c net.Conn) {
		var b [1]byte
		_, _ = io.ReadFull(c, b[:])
		joined <- b[0]
	}, false)
	defer func() {
		_ = s.Close()
		s.wait()
	}()
	if s.Addr().String() != ln.Addr().String() {
		t.Fatalf("Addr %s", s.Addr())
	}

	// The gate is closed: a Raft connection is closed at once.
	c, err := s.Dial(raft.ServerAddress(s.Addr().String()), time.Second)
	if err != nil {
		t.Fatal(err)
	}
	expectClosed(t, c)

	// A join connection reaches the handler, with the kind byte consumed.
	j, err := dialKind(s.Addr().String(), time.Second, connJoin)
	if err != nil {
		t.Fatal(err)
	}
	_, _ = j.Write([]byte{'x'})
	select {
	case b := <-joined:
		if b != 'x' {
			t.Fatalf("join handler read %q", b)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("join handler not called")
	}
	j.Close()

	// With the gate open, Accept returns Raft connections without their
	// kind byte.
	s.openRaft()
	c, err = s.Dial(raft.ServerAddress(s.Addr().String()), time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.Write([]byte("hello")); err != nil {
		t.Fatal(err)
	}
	a, err := s.Accept()
	if err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 5)
	if _, err := io.ReadFull(a, buf); err != nil || string(buf) != "hello" {
		t.Fatalf("read %q, %v", buf, err)
	}

	// Close fails Accept and closes the tracked connections.
	_ = s.Close()
	if _, err := s.Accept(); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("Accept after Close: %v", err)
	}
	expectClosed(t, c)
	if _, err := s.Dial(raft.ServerAddress(ln.Addr().String()), 100*time.Millisecond); err == nil {
		t.Fatal("Dial after Close worked")
	}
}

// expectClosed fails unless the peer closes c soon.
func expectClosed(t *testing.T, c net.Conn) {
	t.Helper()
	_ = c.SetReadDeadline(time.Now().Add(2 * time.Second))
	var b [1]byte
	if _, err := c.Read(b[:]); !errors.Is(err, io.EOF) && !errors.Is(err, net.ErrClosed) && !isReset(err) {
		t.Fatalf("connection not closed by the peer: %v", err)
	}
	c.Close()
}

func isReset(err error) bool {
	var op *net.OpError
	return errors.As(err, &op) && !op.Timeout()
}

func TestStreamLayer_BadAndSilentPeersDoNotDisturbRaft(t *testing.T) {
	c := newTestCluster(t)
	c.start(1)
	addr := c.addrs[1]

	// Silent connections: they never say what they are.
	for range 20 {
		s, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { s.Close() })
	}
	// A connection with an unknown first byte is closed.
	u, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := u.Write([]byte{0xFF, 'G', 'E', 'T'}); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	expectClosed(t, u)
	if d := time.Since(start); d > time.Second {
		t.Fatalf("unknown connection closed after %s", d)
	}
	// One that hangs up before its first byte.
	h, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	h.Close()

	// Joins and Raft traffic proceed well before the silent connections
	// time out.
	start = time.Now()
	c.start(2, addr)
	c.start(3, addr)
	c.createTopic("t", 2)
	c.converged(c.leader())
	if d := time.Since(start); d >= firstByteTimeout {
		t.Fatalf("joins took %s: blocked behind silent connections?", d)
	}
}
