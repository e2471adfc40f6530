package cluster

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sync"
	"time"

	"github.com/hashicorp/raft"
)

// First bytes of a connection to the Raft port.
const (
	connRaft byte = 'R' // 0x52: a hashicorp/raft NetworkTransport connection
	connJoin byte = 'J' // 0x4A: one join request and its response
)

// firstByteTimeout bounds how long an accepted connection may stay silent
// before it says what it is.
const firstByteTimeout = 5 * time.Second

// errStreamClosed is returned by Accept after Close.
var errStreamClosed = fmt.Errorf("cluster: raft stream layer: %w", net.ErrClosed)

// streamLayer is a raft.StreamLayer over one TCP listener shared by Raft and
// the join protocol. Each accepted connection is sniffed in its own
// goroutine (a silent peer cannot hold up the others): 'R' connections are
// handed to Raft through Accept, 'J' connections to the join handler, and
// anything else is closed. Dial writes 'R' before handing the connection to
// Raft.
//
// The layer tracks every connection it accepted or dialed and closes them
// all on Close, so that neither the transport's per-connection goroutines
// nor the handlers outlive it.
type streamLayer struct {
	ln        net.Listener
	advertise addr
	log       *slog.Logger
	join      func(ctx context.Context, c net.Conn) // handles a 'J' connection; the layer closes it afterwards
	raftCh    chan net.Conn

	ctx    context.Context // canceled by Close
	cancel context.CancelFunc
	wg     sync.WaitGroup

	// raftOpen gates Raft connections: while false, 'R' connections are
	// closed (a joining node takes no Raft traffic until the cluster has
	// accepted its identity).
	mu struct {
		sync.Mutex
		closed   bool
		raftOpen bool
		conns    map[*trackedConn]struct{}
	}
}

// addr is a net.Addr for an advertised host:port, which may be a DNS name.
type addr string

func (a addr) Network() string { return "tcp" }
func (a addr) String() string  { return string(a) }

func newStreamLayer(ln net.Listener, advertise string, log *slog.Logger,
	join func(context.Context, net.Conn), raftOpen bool) *streamLayer {
	s := &streamLayer{
		ln:        ln,
		advertise: addr(advertise),
		log:       log,
		join:      join,
		raftCh:    make(chan net.Conn),
	}
	s.ctx, s.cancel = context.WithCancel(context.Background())
	s.mu.conns = make(map[*trackedConn]struct{})
	s.mu.raftOpen = raftOpen
	s.goFunc(s.acceptLoop)
	return s
}

var _ raft.StreamLayer = (*streamLayer)(nil)

// goFunc runs f in a goroutine tracked by s.wg, unless s is closed.
func (s *streamLayer) goFunc(f func()) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.mu.closed {
		return false
	}
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		f()
	}()
	return true
}

// track registers c so Close closes it; after Close it closes c and
// reports false.
func (s *streamLayer) track(c *trackedConn) bool {
	s.mu.Lock()
	if s.mu.closed {
		s.mu.Unlock()
		_ = c.Conn.Close()
		return false
	}
	s.mu.conns[c] = struct{}{}
	s.mu.Unlock()
	return true
}

func (s *streamLayer) untrack(c *trackedConn) {
	s.mu.Lock()
	delete(s.mu.conns, c)
	s.mu.Unlock()
}

// openRaft lets Raft connections in.
func (s *streamLayer) openRaft() {
	s.mu.Lock()
	s.mu.raftOpen = true
	s.mu.Unlock()
}

func (s *streamLayer) raftIsOpen() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.mu.raftOpen
}

func (s *streamLayer) acceptLoop() {
	var delay time.Duration
	for {
		c, err := s.ln.Accept()
		if err != nil {
			if s.ctx.Err() != nil || errors.Is(err, net.ErrClosed) {
				return
			}
			delay = min(max(2*delay, 5*time.Millisecond), time.Second)
			s.log.Warn("accept failed", logKeyErr, err, "retry_in", delay)
			select {
			case <-time.After(delay):
				continue
			case <-s.ctx.Done():
				return
			}
		}
		delay = 0
		tc := &trackedConn{Conn: c, s: s}
		if !s.track(tc) {
			return
		}
		if !s.goFunc(func() { s.sniff(tc) }) {
			_ = tc.Close()
			return
		}
	}
}

// sniff reads the first byte of an accepted connection and dispatches it.
func (s *streamLayer) sniff(c net.Conn) {
	var b [1]byte
	_ = c.SetReadDeadline(time.Now().Add(firstByteTimeout))
	if _, err := c.Read(b[:]); err != nil {
		s.log.Debug("connection closed before its first byte", logKeyAddr, c.RemoteAddr().String(), logKeyErr, err)
		_ = c.Close()
		return
	}
	_ = c.SetReadDeadline(time.Time{})
	switch b[0] {
	case connRaft:
		if !s.raftIsOpen() {
			s.log.Debug("refused raft connection before joining", logKeyAddr, c.RemoteAddr().String())
			_ = c.Close()
			return
		}
		select {
		case s.raftCh <- c:
		case <-s.ctx.Done():
			_ = c.Close()
		}
	case connJoin:
		defer func() { _ = c.Close() }() // the join handler answered already
		s.join(s.ctx, c)
	default:
		s.log.Debug("closed connection with an unknown first byte", logKeyAddr, c.RemoteAddr().String(), "byte", b[0])
		_ = c.Close()
	}
}

// Accept implements net.Listener for the Raft transport.
func (s *streamLayer) Accept() (net.Conn, error) {
	select {
	case c := <-s.raftCh:
		return c, nil
	case <-s.ctx.Done():
		return nil, errStreamClosed
	}
}

// Addr implements net.Listener: the advertised address, which Raft uses as
// this node's address.
func (s *streamLayer) Addr() net.Addr { return s.advertise }

// Dial implements raft.StreamLayer: it connects to a Raft port and sends
// the Raft connection byte.
func (s *streamLayer) Dial(address raft.ServerAddress, timeout time.Duration) (net.Conn, error) {
	c, err := dialKind(string(address), timeout, connRaft)
	if err != nil {
		return nil, err
	}
	tc := &trackedConn{Conn: c, s: s}
	if !s.track(tc) {
		return nil, errStreamClosed
	}
	return tc, nil
}

// dialKind connects to a Raft port and writes the connection kind byte.
func dialKind(address string, timeout time.Duration, kind byte) (net.Conn, error) {
	d := net.Dialer{Timeout: timeout}
	c, err := d.Dial("tcp", address)
	if err != nil {
		return nil, err
	}
	_ = c.SetWriteDeadline(time.Now().Add(timeout))
	if _, err := c.Write([]byte{kind}); err != nil {
		_ = c.Close()
		return nil, err
	}
	_ = c.SetWriteDeadline(time.Time{})
	return c, nil
}

// Close implements net.Listener. It stops accepting, closes every tracked
// connection and makes Accept fail; it does not wait (see wait). It is
// idempotent: the Raft transport calls it, and so does Node.Shutdown.
func (s *streamLayer) Close() error {
	s.mu.Lock()
	if s.mu.closed {
		s.mu.Unlock()
		return nil
	}
	s.mu.closed = true
	conns := s.mu.conns
	s.mu.conns = nil
	s.mu.Unlock()

	s.cancel()
	err := s.ln.Close()
	for c := range conns {
		_ = c.Conn.Close()
	}
	return err
}

// wait blocks until the layer's goroutines have returned (after Close).
func (s *streamLayer) wait() { s.wg.Wait() }

// trackedConn removes itself from its layer when closed.
type trackedConn struct {
	net.Conn
	s    *streamLayer
	once sync.Once
}

func (c *trackedConn) Close() error {
	err := c.Conn.Close()
	c.once.Do(func() { c.s.untrack(c) })
	return err
}
