package bridge

import (
	"context"
	crand "crypto/rand"
	"errors"
	"fmt"
	"math/rand/v2"
	"time"

	"github.com/nats-io/nats.go"
)

// Retry backoff between attempts of one call.
const (
	backoffMin = 20 * time.Millisecond
	backoffMax = 500 * time.Millisecond
)

// requestIDLen is the length of the random id of a deduplicated request.
const requestIDLen = 16

// responseOverhead is the room kept in a message for a read response's
// framing when MaxBytes is capped to the max payload.
const responseOverhead = 64 << 10

// Append asks node to append req.Records. The call carries a request id
// that is the same on every retry; the receiver runs it at most once while
// it remembers the id (Config.DedupWindow), and the call stops retrying
// after half that window. On ErrTimeout the outcome is unknown.
func (b *Bridge) Append(ctx context.Context, node uint64, req AppendRequest, opts ...CallOption) (AppendResponse, error) {
	resp, err := b.call(ctx, node, &request{op: opAppend, id: newRequestID(), append: req}, opts...)
	if err != nil {
		return AppendResponse{}, err
	}
	return resp.append, nil
}

// Read asks node for entries of a segment it leads.
func (b *Bridge) Read(ctx context.Context, node uint64, req ReadRequest) (ReadResponse, error) {
	resp, err := b.call(ctx, node, &request{op: opRead, read: req})
	if err != nil {
		return ReadResponse{}, err
	}
	return resp.read, nil
}

// Propose forwards a metadata command to node (the Raft leader). Like
// Append it is deduplicated by a request id.
func (b *Bridge) Propose(ctx context.Context, node uint64, req ProposeRequest) (ProposeResponse, error) {
	resp, err := b.call(ctx, node, &request{op: opPropose, id: newRequestID(), propose: req})
	if err != nil {
		return ProposeResponse{}, err
	}
	return resp.propose, nil
}

// Heartbeat sends hb to node (the Raft leader).
func (b *Bridge) Heartbeat(ctx context.Context, node uint64, hb Heartbeat) (HeartbeatAck, error) {
	resp, err := b.call(ctx, node, &request{op: opHeartbeat, heartbeat: hb})
	if err != nil {
		return HeartbeatAck{}, err
	}
	return resp.heartbeat, nil
}

func newRequestID() []byte {
	id := make([]byte, requestIDLen)
	_, _ = crand.Read(id) // never fails (crypto/rand, Go 1.24+)
	return id
}

// call sends req to node and retries retryable failures (ErrUnreachable,
// ErrTimeout, CodeUnavailable) with backoff until ctx is done.
// CallOption adjusts one call.
type CallOption func(*callOptions)

type callOptions struct {
	retryWhile func() bool
}

// RetryWhile makes a call check f before each retry and stop when it
// returns false, if no attempt so far can have been executed: the call
// then fails with ErrAbandoned. A call one of whose attempts may have been
// executed (it timed out) keeps retrying with the same request id, which
// is how it learns the outcome. Use it to stop forwarding to a node the
// metadata no longer routes to (a segment failed over from it).
func RetryWhile(f func() bool) CallOption {
	return func(o *callOptions) { o.retryWhile = f }
}

func (b *Bridge) call(ctx context.Context, node uint64, req *request, opts ...CallOption) (*response, error) {
	var o callOptions
	for _, opt := range opts {
		opt(&o)
	}
	data, err := encodeRequest(req)
	if err != nil {
		return nil, fmt.Errorf("bridge: call node %d: %v: %w", node, req.op, err)
	}
	if int64(len(data)) > b.cfg.MaxPayload {
		return nil, fmt.Errorf("bridge: call node %d: %v: %w: request of %d bytes exceeds %d",
			node, req.op, ErrTooLarge, len(data), b.cfg.MaxPayload)
	}
	conn := b.runningConn()
	if conn == nil {
		return nil, fmt.Errorf("bridge: call node %d: %v: %w", node, req.op, ErrClosed)
	}
	subject := rpcSubject(node)
	var giveUp time.Time
	if len(req.id) > 0 {
		giveUp = time.Now().Add(b.cfg.DedupWindow / 2)
	}
	backoff := backoffMin
	executed := false // an attempt may have been executed (it timed out)
	for attempt := 1; ; attempt++ {
		resp, err := b.attempt(ctx, conn, subject, data, req.op)
		if err == nil {
			return resp, nil
		}
		if ctx.Err() != nil {
			return nil, ctxError(node, req.op, attempt, ctx.Err(), err)
		}
		if !retryable(err) {
			return nil, fmt.Errorf("bridge: call node %d: %v: %w", node, req.op, err)
		}
		// The other retryable failures are no responder and a refusal.
		executed = executed || errors.Is(err, ErrTimeout)
		if !executed && o.retryWhile != nil && !o.retryWhile() {
			return nil, fmt.Errorf("bridge: call node %d: %v: %w after %d attempts, last: %w",
				node, req.op, ErrAbandoned, attempt, err)
		}
		if !giveUp.IsZero() && time.Now().After(giveUp) {
			return nil, fmt.Errorf("bridge: call node %d: %v: gave up after %d attempts: %w",
				node, req.op, attempt, err)
		}
		wait := backoff - rand.N(backoff/4) // jitter spreads simultaneous retries
		backoff = min(2*backoff, backoffMax)
		t := time.NewTimer(wait)
		select {
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
			return nil, ctxError(node, req.op, attempt, ctx.Err(), err)
		}
	}
}

// attempt makes one request. A non-OK response comes back as *RemoteError.
func (b *Bridge) attempt(ctx context.Context, conn *nats.Conn, subject string, data []byte, o op) (*response, error) {
	actx, cancel := context.WithTimeout(ctx, b.cfg.RequestTimeout)
	defer cancel()
	msg, err := conn.RequestWithContext(actx, subject, data)
	if err != nil {
		return nil, requestError(err)
	}
	resp, err := decodeResponse(msg.Data)
	if err != nil {
		return nil, fmt.Errorf("decode response: %w", err)
	}
	if resp.op != o {
		return nil, fmt.Errorf("%w: response for %v to a %v request", ErrMalformed, resp.op, o)
	}
	if resp.code != CodeOK {
		return nil, &RemoteError{Code: resp.code, Message: resp.msg}
	}
	return resp, nil
}

// requestError classifies an error of nats.Conn.RequestWithContext.
func requestError(err error) error {
	switch {
	case errors.Is(err, nats.ErrNoResponders):
		return ErrUnreachable
	case errors.Is(err, context.DeadlineExceeded), errors.Is(err, nats.ErrTimeout):
		return ErrTimeout
	case errors.Is(err, context.Canceled):
		return err
	case errors.Is(err, nats.ErrConnectionClosed), errors.Is(err, nats.ErrConnectionDraining),
		errors.Is(err, nats.ErrInvalidConnection), errors.Is(err, nats.ErrDisconnected):
		return fmt.Errorf("%w: %v", ErrClosed, err)
	case errors.Is(err, nats.ErrMaxPayload):
		return fmt.Errorf("%w: %v", ErrTooLarge, err)
	}
	return fmt.Errorf("nats request: %w", err)
}

func retryable(err error) bool {
	return errors.Is(err, ErrUnreachable) || errors.Is(err, ErrTimeout) || errors.Is(err, ErrUnavailable)
}

// ctxError reports a call that ended because its ctx was done, with the
// last attempt's failure.
func ctxError(node uint64, o op, attempts int, ctxErr, last error) error {
	if last == nil || errors.Is(last, ctxErr) {
		return fmt.Errorf("bridge: call node %d: %v: %w (%d attempts)", node, o, ctxErr, attempts)
	}
	return fmt.Errorf("bridge: call node %d: %v: %w after %d attempts, last: %w", node, o, ctxErr, attempts, last)
}

func (b *Bridge) runningConn() *nats.Conn {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.mu.state != stateRunning {
		return nil
	}
	return b.mu.conn
}

// onRequest runs on the subscription's delivery goroutine: it decodes the
// request, answers duplicates from the dedup memory and hands the rest to a
// handler goroutine, without blocking.
func (b *Bridge) onRequest(msg *nats.Msg) {
	if msg.Reply == "" {
		b.log.Debug("rpc request without reply subject dropped")
		return
	}
	req, err := decodeRequest(msg.Data)
	if err != nil {
		var o op
		if len(msg.Data) > 1 {
			o = op(msg.Data[1])
		}
		b.publish(msg.Reply, encodeResponse(errorResponse(o, CodeBadRequest, err.Error())))
		return
	}
	var entry *dedupEntry
	if len(req.id) > 0 {
		key := string(rune(req.op)) + string(req.id)
		e, cached := b.dedup.begin(key, msg.Reply)
		if cached != nil {
			b.publish(msg.Reply, cached)
			return
		}
		if e == nil {
			return // a copy is running; it answers this one too
		}
		entry = e
	}
	box := b.handler.Load()
	if box == nil {
		b.refuse(entry, msg.Reply, req.op, "no handler")
		return
	}
	select {
	case b.sem <- struct{}{}:
	default:
		b.refuse(entry, msg.Reply, req.op, "overloaded")
		return
	}
	started := b.goFunc(func(ctx context.Context) {
		defer func() { <-b.sem }()
		resp := b.serve(ctx, box.h, req)
		b.respond(entry, msg.Reply, encodeResponse(resp), resp.code != CodeUnavailable)
	})
	if !started {
		<-b.sem
		b.refuse(entry, msg.Reply, req.op, "shutting down")
	}
}

// goFunc runs f on a goroutine that Shutdown waits for. It refuses (false)
// unless the bridge is running.
func (b *Bridge) goFunc(f func(ctx context.Context)) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.mu.state != stateRunning {
		return false
	}
	ctx := b.mu.ctx
	b.handlers.Add(1)
	go func() {
		defer b.handlers.Done()
		f(ctx)
	}()
	return true
}

// serve calls the handler for req and builds the response.
func (b *Bridge) serve(ctx context.Context, h Handler, req *request) *response {
	resp := &response{op: req.op}
	var err error
	switch req.op {
	case opAppend:
		resp.append, err = h.Append(ctx, req.append)
	case opRead:
		if limit := b.cfg.MaxPayload - responseOverhead; req.read.MaxBytes > limit {
			req.read.MaxBytes = limit
		}
		resp.read, err = h.Read(ctx, req.read)
	case opPropose:
		resp.propose, err = h.Propose(ctx, req.propose)
	case opHeartbeat:
		resp.heartbeat, err = h.Heartbeat(ctx, req.heartbeat)
	}
	if err != nil {
		code, msg := errorCode(err)
		b.log.Debug("rpc handler error", logKeyOp, req.op.String(), "code", code.String(), logKeyErr, err)
		return errorResponse(req.op, code, msg)
	}
	return resp
}

// refuse answers a request that was not run with CodeUnavailable.
func (b *Bridge) refuse(entry *dedupEntry, reply string, o op, why string) {
	msg := fmt.Sprintf("node %d: %s", b.cfg.NodeID, why)
	b.respond(entry, reply, encodeResponse(errorResponse(o, CodeUnavailable, msg)), false)
}

// respond sends data to reply and, for a deduplicated request, records it
// and sends it to the copies that waited.
func (b *Bridge) respond(entry *dedupEntry, reply string, data []byte, remember bool) {
	if int64(len(data)) > b.cfg.MaxPayload {
		msg := fmt.Sprintf("response of %d bytes exceeds the max payload %d", len(data), b.cfg.MaxPayload)
		data = encodeResponse(errorResponse(op(data[1]), CodeTooLarge, msg))
	}
	var waiters []string
	if entry != nil {
		waiters = b.dedup.finish(entry, data, remember)
	}
	b.publish(reply, data)
	for _, w := range waiters {
		b.publish(w, data)
	}
}

func (b *Bridge) publish(subject string, data []byte) {
	b.mu.Lock()
	conn := b.mu.conn
	b.mu.Unlock()
	if conn == nil {
		return
	}
	if err := conn.Publish(subject, data); err != nil {
		b.log.Debug("rpc reply not sent", logKeyErr, err)
	}
}
