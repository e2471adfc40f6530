package broker

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"sync"
	"time"

	"github.com/walrus-edge/walrus/broker/protocol"
	"github.com/walrus-edge/walrus/storage"
)

// tcpServer serves the native protocol: one goroutine per connection,
// strictly one request at a time per connection, as the original.
type tcpServer struct {
	s  *Server
	ln net.Listener

	mu     sync.Mutex
	conns  map[net.Conn]struct{}
	closed bool
}

func listenTCP(s *Server) (*tcpServer, error) {
	ln, err := net.Listen("tcp", s.cfg.clientAddr())
	if err != nil {
		return nil, fmt.Errorf("broker: listen on client port: %w", err)
	}
	return &tcpServer{s: s, ln: ln, conns: make(map[net.Conn]struct{})}, nil
}

func (t *tcpServer) addr() net.Addr { return t.ln.Addr() }

// serve accepts connections until close.
func (t *tcpServer) serve() {
	for {
		conn, err := t.ln.Accept()
		if err != nil {
			if !errors.Is(err, net.ErrClosed) {
				t.s.log.Error("client listener stopped", "err", err)
			}
			return
		}
		if !t.track(conn) {
			_ = conn.Close() // shutting down
			return
		}
		t.s.goFunc(func() { t.handle(conn) })
	}
}

func (t *tcpServer) track(conn net.Conn) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.closed {
		return false
	}
	t.conns[conn] = struct{}{}
	t.s.metrics.connections.Inc()
	return true
}

func (t *tcpServer) untrack(conn net.Conn) {
	t.mu.Lock()
	delete(t.conns, conn)
	t.mu.Unlock()
	t.s.metrics.connections.Dec()
	_ = conn.Close() // the peer may be gone already
}

// close stops accepting and closes every connection; their handlers exit.
func (t *tcpServer) close() {
	t.mu.Lock()
	t.closed = true
	conns := make([]net.Conn, 0, len(t.conns))
	for c := range t.conns {
		conns = append(conns, c)
	}
	t.mu.Unlock()
	_ = t.ln.Close() // unblocks Accept
	for _, c := range conns {
		_ = c.Close() // unblocks the handler's read
	}
}

// handle runs one connection's request loop. A frame over the limit is
// answered and the connection closed (its body was not read, so the stream
// is out of step); the original kept reading and desynchronised.
func (t *tcpServer) handle(conn net.Conn) {
	defer t.untrack(conn)
	fr := protocol.NewFrameReader(conn, t.s.cfg.MaxFrameBytes)
	w := bufio.NewWriter(conn)
	for {
		body, err := fr.Next()
		var reply protocol.Reply
		switch {
		case err == nil:
			reply = t.s.dispatch(t.s.bg, body)
		case errors.Is(err, protocol.ErrEmptyFrame):
			reply = protocol.ReplyForError(err)
		case errors.Is(err, protocol.ErrFrameTooLarge):
			_ = t.reply(conn, w, protocol.ReplyForError(err)) // closing anyway
			return
		default:
			if !errors.Is(err, io.EOF) && !errors.Is(err, net.ErrClosed) {
				t.s.log.Debug("client connection ended", "remote", conn.RemoteAddr(), "err", err)
			}
			return
		}
		if err := t.reply(conn, w, reply); err != nil {
			return
		}
	}
}

func (t *tcpServer) reply(conn net.Conn, w *bufio.Writer, r protocol.Reply) error {
	_ = conn.SetWriteDeadline(time.Now().Add(t.s.cfg.RequestTimeout)) // best effort on a dying conn
	if err := protocol.WriteReply(w, r); err != nil {
		return err
	}
	return w.Flush()
}

// dispatch runs one request and returns its reply.
func (s *Server) dispatch(ctx context.Context, body []byte) protocol.Reply {
	cmd, err := protocol.Parse(body)
	if err != nil {
		s.metrics.observe("invalid", err, time.Now())
		return protocol.ReplyForError(err)
	}
	start := time.Now()
	reply, err := s.run(ctx, cmd)
	s.metrics.observe(cmd.Verb.String(), err, start)
	if err != nil {
		s.log.Debug("request failed", "verb", cmd.Verb, "topic", cmd.Topic, "err", err)
		return protocol.ReplyForError(err)
	}
	return reply
}

func (s *Server) run(ctx context.Context, cmd protocol.Command) (protocol.Reply, error) {
	switch cmd.Verb {
	case protocol.VerbRegister:
		return protocol.OKReply(), s.Register(ctx, cmd.Topic)
	case protocol.VerbPut:
		rec := storage.Record{Value: append([]byte(nil), cmd.Payload...)}
		_, err := s.Put(ctx, cmd.Topic, []storage.Record{rec})
		return protocol.OKReply(), err
	case protocol.VerbGet:
		e, ok, err := s.Get(ctx, cmd.Topic)
		if err != nil || !ok {
			return protocol.EmptyReply(), err
		}
		return protocol.PayloadReply(textPayload(e.Value)), nil
	case protocol.VerbFetch:
		e, ok, err := s.Fetch(ctx, cmd.Topic, cmd.Segment, cmd.Offset)
		if err != nil || !ok {
			return protocol.EmptyReply(), err
		}
		return protocol.FetchReply(cmd.Offset+1, textPayload(e.Value)), nil
	case protocol.VerbState:
		b, err := s.State(cmd.Topic)
		return protocol.RawReply(b), err
	case protocol.VerbMetrics:
		b, err := s.Metrics()
		return protocol.RawReply(b), err
	case protocol.VerbPing:
		return protocol.PongReply(), nil
	}
	return protocol.Reply{}, fmt.Errorf("%s is not served", cmd.Verb)
}

// textPayload returns an entry's payload as the protocol's UTF-8 text:
// entries written through NATS may hold any bytes, which are replaced as the
// original's from_utf8_lossy did.
func textPayload(b []byte) []byte {
	return []byte(strings.ToValidUTF8(string(b), "\uFFFD"))
}
