// Package protocoltest provides a loopback server that speaks the Walrus
// native protocol, for tests of clients (in the spirit of net/http/httptest).
// It is not the broker: Memory implements the seed's single-node semantics
// in memory, and any Handler can return canned replies.
package protocoltest

import (
	"errors"
	"fmt"
	"net"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/walrus-edge/walrus/broker/protocol"
)

// Handler answers one parsed command. It is called from one goroutine per
// connection, so it must be safe for concurrent use.
type Handler interface {
	Handle(cmd protocol.Command) protocol.Reply
}

// HandlerFunc adapts a function to Handler.
type HandlerFunc func(cmd protocol.Command) protocol.Reply

// Handle calls f(cmd).
func (f HandlerFunc) Handle(cmd protocol.Command) protocol.Reply { return f(cmd) }

// Server accepts connections on a loopback port and serves each one with
// the protocol's connection loop: frames are read with a 64 KiB limit, an
// empty frame is answered "ERR invalid frame length" and the loop goes on,
// an oversize frame is answered the same way and the connection is closed,
// a body that does not parse is answered with its error message, and every
// parsed command goes to the Handler.
type Server struct {
	ln              net.Listener
	h               Handler
	closeAfterReply atomic.Bool
	accepted        atomic.Int64
	wg              sync.WaitGroup

	mu struct {
		sync.Mutex
		conns    map[net.Conn]struct{}
		requests []string
		closed   bool
	}
}

// NewServer starts a Server on 127.0.0.1 with an ephemeral port.
func NewServer(h Handler) (*Server, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("protocoltest: listen: %w", err)
	}
	s := &Server{ln: ln, h: h}
	s.mu.conns = make(map[net.Conn]struct{})
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		s.acceptLoop()
	}()
	return s, nil
}

// Start is NewServer for a test: it fails t if the server cannot start and
// closes it when the test ends.
func Start(t testing.TB, h Handler) *Server {
	t.Helper()
	srv, err := NewServer(h)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = srv.Close() })
	return srv
}

// Addr returns the "host:port" the server listens on.
func (s *Server) Addr() string { return s.ln.Addr().String() }

// Requests returns the bodies of all frames received so far, in order
// (empty and oversize frames are not recorded).
func (s *Server) Requests() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]string(nil), s.mu.requests...)
}

// SetCloseAfterReply makes the server close each connection after its
// next reply (the behaviour a client sees from an idle timeout or a
// restart between requests).
func (s *Server) SetCloseAfterReply(on bool) { s.closeAfterReply.Store(on) }

// Accepted returns the number of connections accepted so far.
func (s *Server) Accepted() int { return int(s.accepted.Load()) }

// OpenConns returns the number of client connections the server has not
// yet closed.
func (s *Server) OpenConns() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.mu.conns)
}

// DropConns closes every open client connection; the listener stays open.
func (s *Server) DropConns() {
	s.mu.Lock()
	defer s.mu.Unlock()
	for c := range s.mu.conns {
		_ = c.Close()
	}
}

// Close stops accepting, closes every connection and waits for the
// connection goroutines to finish.
func (s *Server) Close() error {
	s.mu.Lock()
	s.mu.closed = true
	err := s.ln.Close()
	for c := range s.mu.conns {
		_ = c.Close()
	}
	s.mu.Unlock()
	s.wg.Wait()
	if err != nil && !errors.Is(err, net.ErrClosed) {
		return fmt.Errorf("protocoltest: close: %w", err)
	}
	return nil
}

func (s *Server) acceptLoop() {
	for {
		conn, err := s.ln.Accept()
		if err != nil {
			return
		}
		s.accepted.Add(1)
		if !s.track(conn) {
			_ = conn.Close()
			return
		}
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			defer s.untrack(conn)
			s.serve(conn)
		}()
	}
}

func (s *Server) track(c net.Conn) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.mu.closed {
		return false
	}
	s.mu.conns[c] = struct{}{}
	return true
}

func (s *Server) untrack(c net.Conn) {
	_ = c.Close() // before the count drops, so OpenConns()==0 means closed
	s.mu.Lock()
	delete(s.mu.conns, c)
	s.mu.Unlock()
}

// serve runs the connection loop described on Server.
func (s *Server) serve(conn net.Conn) {
	fr := protocol.NewFrameReader(conn, protocol.DefaultMaxFrameSize)
	for {
		body, err := fr.Next()
		switch {
		case errors.Is(err, protocol.ErrEmptyFrame):
			if protocol.WriteReply(conn, protocol.ReplyForError(err)) != nil {
				return
			}
			continue
		case errors.Is(err, protocol.ErrFrameTooLarge):
			_ = protocol.WriteReply(conn, protocol.ReplyForError(err))
			return
		case err != nil:
			return
		}
		s.mu.Lock()
		s.mu.requests = append(s.mu.requests, string(body))
		s.mu.Unlock()

		var reply protocol.Reply
		if cmd, err := protocol.Parse(body); err != nil {
			reply = protocol.ReplyForError(err)
		} else {
			reply = s.h.Handle(cmd)
		}
		if protocol.WriteReply(conn, reply) != nil || s.closeAfterReply.Load() {
			return
		}
	}
}
