package protocol

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"sync"
	"time"
)

// DialFunc opens a connection; net.Dialer.DialContext has this shape.
type DialFunc func(ctx context.Context, network, addr string) (net.Conn, error)

// Option configures a Client.
type Option func(*clientConfig)

type clientConfig struct {
	maxReply  int
	dial      DialFunc
	reconnect bool
}

// WithMaxReplySize sets the largest reply the Client accepts, in bytes;
// n <= 0 means DefaultMaxReplySize (64 MiB). A larger reply fails the call
// with ErrFrameTooLarge and drops the connection.
func WithMaxReplySize(n int) Option {
	return func(c *clientConfig) { c.maxReply = n }
}

// WithDialFunc replaces the dialer (default: a net.Dialer on "tcp"). Tests
// use it to run the Client over net.Pipe.
func WithDialFunc(dial DialFunc) Option {
	return func(c *clientConfig) { c.dial = dial }
}

// WithReconnect enables or disables reconnecting (default enabled). When
// enabled, the Client (1) redials before a call if it sees that the server
// closed the idle connection, which is safe because the server cannot
// have seen the request, and (2) redials on the next call after a call
// failed on a broken connection. It never resends a request that may have
// reached the server: that call returns its error. When disabled, calls
// after a failure return ErrConnBroken.
func WithReconnect(on bool) Option {
	return func(c *clientConfig) { c.reconnect = on }
}

// Client is a connection to a Walrus node speaking the native protocol.
// It keeps one persistent connection and sends strictly one request at a
// time (the protocol has no pipelining): it is safe for concurrent use, but
// concurrent calls are serialised. Each call's deadline and cancellation
// come from its ctx.
type Client struct {
	addr string
	cfg  clientConfig

	// mu serialises calls and guards fr and dialled. Lock order: mu, then
	// state.
	mu      sync.Mutex
	fr      *FrameReader
	dialled bool // a connection was established at least once

	state struct {
		sync.Mutex
		conn   net.Conn // nil when not connected
		closed bool
	}
}

// Dial connects to the Walrus node at addr ("host:port") and returns a
// Client. ctx bounds the connection attempt only.
func Dial(ctx context.Context, addr string, opts ...Option) (*Client, error) {
	c := &Client{addr: addr, cfg: clientConfig{reconnect: true}}
	for _, o := range opts {
		o(&c.cfg)
	}
	if c.cfg.maxReply <= 0 {
		c.cfg.maxReply = DefaultMaxReplySize
	}
	if c.cfg.dial == nil {
		var d net.Dialer
		c.cfg.dial = d.DialContext
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if _, err := c.connectLocked(ctx); err != nil {
		return nil, err
	}
	return c, nil
}

// Addr returns the address the Client dials.
func (c *Client) Addr() string { return c.addr }

// Close closes the connection; calls in flight fail and later calls return
// ErrClosed. Close is idempotent.
func (c *Client) Close() error {
	c.state.Lock()
	defer c.state.Unlock()
	if c.state.closed {
		return nil
	}
	c.state.closed = true
	if c.state.conn == nil {
		return nil
	}
	err := c.state.conn.Close()
	c.state.conn = nil
	if err != nil {
		return fmt.Errorf("protocol: close %s: %w", c.addr, err)
	}
	return nil
}

// connectLocked dials a new connection and installs it. c.mu is held.
func (c *Client) connectLocked(ctx context.Context) (net.Conn, error) {
	conn, err := c.cfg.dial(ctx, "tcp", c.addr)
	if err != nil {
		return nil, fmt.Errorf("protocol: dial %s: %w", c.addr, err)
	}
	c.state.Lock()
	defer c.state.Unlock()
	if c.state.closed {
		_ = conn.Close()
		return nil, ErrClosed
	}
	c.state.conn = conn
	c.fr = NewFrameReader(conn, c.cfg.maxReply)
	c.dialled = true
	return conn, nil
}

// currentConn returns the installed connection. c.mu is held.
func (c *Client) currentConn() (net.Conn, error) {
	c.state.Lock()
	defer c.state.Unlock()
	if c.state.closed {
		return nil, ErrClosed
	}
	return c.state.conn, nil
}

// isClosed reports whether Close was called.
func (c *Client) isClosed() bool {
	c.state.Lock()
	defer c.state.Unlock()
	return c.state.closed
}

// dropLocked closes conn and forgets it if it is still the installed one.
// c.mu is held.
func (c *Client) dropLocked(conn net.Conn) {
	c.state.Lock()
	defer c.state.Unlock()
	if c.state.conn == conn {
		c.state.conn = nil
	}
	_ = conn.Close()
}

// connFor returns a usable connection for the next request. c.mu is held.
func (c *Client) connFor(ctx context.Context) (net.Conn, error) {
	conn, err := c.currentConn()
	if err != nil {
		return nil, err
	}
	if conn != nil && (c.fr.Buffered() > 0 || peerClosed(conn)) {
		// Closed by the server while idle, or bytes nobody asked for: the
		// request cannot have been seen, so a new connection is safe.
		c.dropLocked(conn)
		conn = nil
	}
	if conn != nil {
		return conn, nil
	}
	if c.dialled && !c.cfg.reconnect {
		return nil, ErrConnBroken
	}
	return c.connectLocked(ctx)
}

// aLongTimeAgo is a deadline in the past, used to interrupt blocked I/O.
var aLongTimeAgo = time.Unix(1, 0)

// roundTrip sends one request body and returns the reply body. Any I/O
// failure drops the connection, since request and reply may be out of step.
func (c *Client) roundTrip(ctx context.Context, body []byte) ([]byte, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	conn, err := c.connFor(ctx)
	if err != nil {
		return nil, err
	}
	deadline, _ := ctx.Deadline() // zero (no deadline) if ctx has none
	if err := conn.SetDeadline(deadline); err != nil {
		c.dropLocked(conn)
		return nil, fmt.Errorf("protocol: set deadline: %w", err)
	}
	fired := make(chan struct{})
	stop := context.AfterFunc(ctx, func() {
		_ = conn.SetDeadline(aLongTimeAgo)
		close(fired)
	})
	defer func() {
		if !stop() {
			<-fired
		}
	}()

	reply, err := c.exchange(conn, body)
	if err != nil {
		c.dropLocked(conn)
		if c.isClosed() {
			return nil, fmt.Errorf("%w (%v)", ErrClosed, err)
		}
		if ctxErr := ctxCause(ctx, err); ctxErr != nil {
			return nil, fmt.Errorf("%w (%v)", ctxErr, err)
		}
		return nil, err
	}
	return reply, nil
}

// ctxCause returns the context error behind an I/O error: ctx.Err(), or
// context.DeadlineExceeded when the connection deadline (ctx's deadline)
// fired a moment before ctx's own timer did.
func ctxCause(ctx context.Context, ioErr error) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if d, ok := ctx.Deadline(); ok && errors.Is(ioErr, os.ErrDeadlineExceeded) && !time.Now().Before(d) {
		return context.DeadlineExceeded
	}
	return nil
}

// exchange writes body and reads one reply. c.mu is held.
func (c *Client) exchange(conn net.Conn, body []byte) ([]byte, error) {
	if err := WriteFrame(conn, body); err != nil {
		return nil, err
	}
	reply, err := c.fr.Next()
	switch {
	case err == nil:
		return reply, nil
	case errors.Is(err, ErrEmptyFrame):
		return nil, fmt.Errorf("%w: empty reply frame", ErrMalformedReply)
	case errors.Is(err, ErrFrameTooLarge):
		return nil, fmt.Errorf("reply: %w", err)
	case errors.Is(err, io.EOF):
		return nil, fmt.Errorf("read reply: server closed the connection: %w", err)
	default:
		return nil, fmt.Errorf("read reply: %w", err)
	}
}

// Do sends text verbatim as one request and returns the reply text,
// whatever it is ("ERR ..." included). Only transport failures are errors.
// This is what the REPL uses.
func (c *Client) Do(ctx context.Context, text string) (string, error) {
	reply, err := c.roundTrip(ctx, []byte(text))
	if err != nil {
		return "", fmt.Errorf("protocol: %s: %w", c.addr, err)
	}
	return string(reply), nil
}

// Call validates and sends cmd and returns the parsed reply. An ERR reply
// is a Reply of kind ReplyErr, not a Go error (see Reply.Err).
func (c *Client) Call(ctx context.Context, cmd Command) (Reply, error) {
	if err := cmd.Validate(); err != nil {
		return Reply{}, err
	}
	body, err := c.roundTrip(ctx, cmd.Encode())
	if err != nil {
		return Reply{}, fmt.Errorf("protocol: %s %s: %w", cmd.Verb, c.addr, err)
	}
	r, err := ParseReply(body)
	if err != nil {
		return Reply{}, fmt.Errorf("protocol: %s %s: %w", cmd.Verb, c.addr, err)
	}
	return r, nil
}

// expect sends cmd and returns the reply if its kind is one of kinds. An ERR
// reply becomes a *ServerError, any other kind ErrUnexpectedReply.
func (c *Client) expect(ctx context.Context, cmd Command, kinds ...ReplyKind) (Reply, error) {
	r, err := c.Call(ctx, cmd)
	if err != nil {
		return Reply{}, err
	}
	for _, k := range kinds {
		if r.Kind == k {
			return r, nil
		}
	}
	if r.Kind == ReplyErr {
		return Reply{}, fmt.Errorf("%s: %w", cmd.label(), r.Err())
	}
	return Reply{}, unexpected(cmd.Verb, r.Encode())
}

// Register creates topic if it does not exist (idempotent). The server
// must answer exactly "OK".
func (c *Client) Register(ctx context.Context, topic string) error {
	_, err := c.expect(ctx, Command{Verb: VerbRegister, Topic: topic}, ReplyOK)
	return err
}

// Put appends payload to topic. PUT payloads are text: payload must be
// valid UTF-8 and not empty or all whitespace, and the server trims its
// trailing whitespace (spaces, tabs, newlines), as the original did.
// Binary data must be encoded by the caller (or sent over NATS).
func (c *Client) Put(ctx context.Context, topic string, payload []byte) error {
	_, err := c.expect(ctx, Command{Verb: VerbPut, Topic: topic, Payload: payload}, ReplyOK)
	return err
}

// Get reads the next entry of topic through the node's shared cursor (a
// destructive read). ok is false when the topic is drained (EMPTY).
func (c *Client) Get(ctx context.Context, topic string) (payload []byte, ok bool, err error) {
	r, err := c.expect(ctx, Command{Verb: VerbGet, Topic: topic}, ReplyOKPayload, ReplyEmpty)
	if err != nil || r.Kind == ReplyEmpty {
		return nil, false, err
	}
	return r.Payload, true, nil
}

// Fetch reads the entry at offset within segment of topic without moving
// any cursor. On a hit it returns the offset to fetch next; ok is false
// (EMPTY) when there is no entry at that position.
func (c *Client) Fetch(ctx context.Context, topic string, segment, offset uint64) (next uint64, payload []byte, ok bool, err error) {
	cmd := Command{Verb: VerbFetch, Topic: topic, Segment: segment, Offset: offset}
	r, err := c.expect(ctx, cmd, ReplyOKPayload, ReplyEmpty)
	if err != nil || r.Kind == ReplyEmpty {
		return 0, nil, false, err
	}
	next, payload, err = ParseFetchPayload(r.Payload)
	if err != nil {
		return 0, nil, false, err
	}
	return next, payload, true, nil
}

// State returns the topic's metadata JSON (current_segment, leader_node,
// last_sealed_entry_offset, sealed_segments, segment_leaders). Like the
// original client it accepts an optional "OK " prefix.
func (c *Client) State(ctx context.Context, topic string) (json.RawMessage, error) {
	return c.jsonCall(ctx, Command{Verb: VerbState, Topic: topic})
}

// Metrics returns the node's metrics JSON.
func (c *Client) Metrics(ctx context.Context) (json.RawMessage, error) {
	return c.jsonCall(ctx, Command{Verb: VerbMetrics})
}

// jsonCall sends cmd and returns a JSON reply body.
func (c *Client) jsonCall(ctx context.Context, cmd Command) (json.RawMessage, error) {
	r, err := c.expect(ctx, cmd, ReplyRaw, ReplyOKPayload)
	if err != nil {
		return nil, err
	}
	if !json.Valid(r.Payload) {
		return nil, unexpected(cmd.Verb, r.Payload)
	}
	return json.RawMessage(r.Payload), nil
}

// Ping checks that the server answers "OK PONG".
func (c *Client) Ping(ctx context.Context) error {
	r, err := c.expect(ctx, Command{Verb: VerbPing}, ReplyOKPayload)
	if err != nil {
		return err
	}
	if string(r.Payload) != PongPayload {
		return unexpected(VerbPing, r.Encode())
	}
	return nil
}
