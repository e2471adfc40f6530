package cluster

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"slices"
	"time"

	"github.com/hashicorp/raft"
)

// Join protocol limits.
const (
	joinMaxMessage = 64 << 10        // bytes of JSON in one message
	joinIOTimeout  = 5 * time.Second // to read a request, or write a response
	// joinAddTimeout bounds the leader's work on a join (UpsertNode, then
	// AddVoter, whose configuration entry commits only once the new voter
	// has caught up with it).
	joinAddTimeout   = 30 * time.Second
	joinMaxRedirects = 4
	joinBackoffMin   = 200 * time.Millisecond
	joinBackoffMax   = 2 * time.Second
)

// Join response statuses.
const (
	joinOK       = "ok"
	joinRedirect = "redirect"
	joinError    = "error"
)

// Join error codes, the machine-readable part of an "error" response.
const (
	codeNoLeader     = "no_leader"     // retry later
	codeInvalid      = "invalid"       // the request is malformed
	codeNodeReplaced = "node_replaced" // ErrNodeReplaced: an operator must remove the old node
	codeNotMember    = "not_member"    // a rejoin of a node that was removed
	codeFailed       = "failed"        // the leader could not add the node; retry
	// codeFresh: the answering node has no Raft state and belongs to no
	// cluster yet; Members holds only its own record (BootstrapExpect).
	codeFresh = "fresh"
)

// joinRequest is the one request of a 'J' connection.
type joinRequest struct {
	Node NodeInfo `json:"node"`
	// DryRun asks the leader only whether the node may join (its id is not
	// recorded with another UUID); nothing changes.
	DryRun bool `json:"dry_run,omitempty"`
	// Rejoin is sent by a node restarting from its own Raft state: the
	// leader updates its record (and address) but never adds it to the
	// configuration.
	Rejoin bool `json:"rejoin,omitempty"`
}

// joinResponse is the one response of a 'J' connection.
type joinResponse struct {
	Status  string     `json:"status"`
	Leader  string     `json:"leader,omitempty"` // redirect: the leader's Raft address
	Message string     `json:"message,omitempty"`
	Code    string     `json:"code,omitempty"`    // error: one of the codes above
	Members []NodeInfo `json:"members,omitempty"` // the members the answering node knows
	// Index is, with "ok", the leader's commit index after the change: the
	// joiner waits until it has applied it.
	Index uint64 `json:"index,omitempty"`
}

// errFrameTooLarge reports a join message over joinMaxMessage.
var errFrameTooLarge = fmt.Errorf("cluster: join message larger than %d bytes", joinMaxMessage)

// writeFrame writes v as a little-endian u32 length and its JSON.
func writeFrame(w io.Writer, v any) error {
	body, err := json.Marshal(v)
	if err != nil {
		return err
	}
	if len(body) > joinMaxMessage {
		return errFrameTooLarge
	}
	buf := make([]byte, 4, 4+len(body))
	binary.LittleEndian.PutUint32(buf, uint32(len(body)))
	_, err = w.Write(append(buf, body...))
	return err
}

// readFrame reads one message written by writeFrame into v.
func readFrame(r io.Reader, v any) error {
	var hdr [4]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		return err
	}
	size := binary.LittleEndian.Uint32(hdr[:])
	if size > joinMaxMessage {
		return errFrameTooLarge
	}
	body := make([]byte, size)
	if _, err := io.ReadFull(r, body); err != nil {
		return err
	}
	if err := json.Unmarshal(body, v); err != nil {
		return fmt.Errorf("cluster: decode join message: %w", err)
	}
	return nil
}

func (q *joinRequest) validate() error {
	if q.Node.ID == 0 || q.Node.UUID == "" {
		return errors.New("the node needs an id and a uuid")
	}
	if _, _, err := splitHostPort(q.Node.RaftAddr); err != nil {
		return fmt.Errorf("raft address: %w", err)
	}
	return nil
}

// serveJoin answers one join request on c (the stream layer closes c).
func (n *Node) serveJoin(ctx context.Context, c net.Conn) {
	var req joinRequest
	_ = c.SetReadDeadline(time.Now().Add(joinIOTimeout))
	resp := joinResponse{}
	if err := readFrame(c, &req); err != nil {
		n.log.Debug("bad join request", logKeyAddr, c.RemoteAddr().String(), logKeyErr, err)
		resp = joinResponse{Status: joinError, Code: codeInvalid, Message: err.Error()}
	} else if err := req.validate(); err != nil {
		resp = joinResponse{Status: joinError, Code: codeInvalid, Message: err.Error()}
	} else {
		resp = n.handleJoin(ctx, req)
	}
	_ = c.SetWriteDeadline(time.Now().Add(joinIOTimeout))
	if err := writeFrame(c, &resp); err != nil {
		n.log.Debug("write join response", logKeyAddr, c.RemoteAddr().String(), logKeyErr, err)
	}
}

// handleJoin decides the answer to a valid request.
func (n *Node) handleJoin(ctx context.Context, req joinRequest) joinResponse {
	if n.fresh() {
		// Whether Raft runs yet or not (the listener opens first): a node
		// deciding under BootstrapExpect must not take it for a cluster.
		return joinResponse{Status: joinError, Code: codeFresh, Members: []NodeInfo{n.Self()},
			Message: fmt.Sprintf("node %d has no raft state and is in no cluster yet", n.cfg.ID)}
	}
	r := n.raft.Load()
	if r == nil {
		return joinResponse{Status: joinError, Code: codeNoLeader, Message: "raft is not running yet"}
	}
	if r.State() != raft.Leader {
		if _, addr := n.Leader(); addr != "" {
			return joinResponse{Status: joinRedirect, Leader: addr, Members: n.Members()}
		}
		if req.DryRun && n.addedBeforeItStored(req.Node) {
			return joinResponse{Status: joinOK, Members: n.Members()}
		}
		return joinResponse{Status: joinError, Code: codeNoLeader, Message: "no leader yet"}
	}
	var err error
	if req.DryRun {
		err = n.leaderBarrier(ctx, r)
		if old, ok := n.Metadata().Node(req.Node.ID); err == nil && ok && old.UUID != req.Node.UUID {
			err = fmt.Errorf("cluster: node %d: %w (recorded with %s, not %s)", req.Node.ID, ErrNodeReplaced, old.UUID, req.Node.UUID)
		}
	} else {
		actx, cancel := context.WithTimeout(ctx, joinAddTimeout)
		err = n.addVoter(actx, req.Node, !req.Rejoin)
		cancel()
	}
	switch {
	case err == nil:
		return joinResponse{Status: joinOK, Members: n.Members(), Index: r.CommitIndex()}
	case errors.Is(err, ErrNotLeader) || errors.Is(err, raft.ErrNotLeader):
		if _, addr := n.Leader(); addr != "" {
			return joinResponse{Status: joinRedirect, Leader: addr, Members: n.Members()}
		}
		return joinResponse{Status: joinError, Code: codeNoLeader, Message: err.Error()}
	case errors.Is(err, ErrNodeReplaced):
		n.log.Warn("refused a node that lost its data directory", logKeyPeer, uint64(req.Node.ID), logKeyErr, err)
		return joinResponse{Status: joinError, Code: codeNodeReplaced, Message: err.Error()}
	case errors.Is(err, errNotMember):
		return joinResponse{Status: joinError, Code: codeNotMember, Message: err.Error()}
	case errors.Is(err, ErrInvalidCommand):
		return joinResponse{Status: joinError, Code: codeInvalid, Message: err.Error()}
	default:
		n.log.Warn("join failed", logKeyPeer, uint64(req.Node.ID), logKeyErr, err)
		return joinResponse{Status: joinError, Code: codeFailed, Message: err.Error()}
	}
}

// addedBeforeItStored reports whether a joiner asking for a dry run is
// already a voter here, recorded with its data directory's UUID: the leader
// added it, and it stopped before it stored any Raft state (a node with
// state restarts instead of joining). Growing from one voter to two, the
// configuration then has no leader without its vote. Such a node lost
// nothing it had promised, so it may take Raft traffic again: the answer
// lets it, and the join proper follows once a leader is elected.
func (n *Node) addedBeforeItStored(joiner NodeInfo) bool {
	if !slices.Contains(n.Voters(), joiner.ID) {
		return false
	}
	rec, ok := n.Metadata().Node(joiner.ID)
	return ok && rec.UUID == joiner.UUID
}

// responseError turns an "error" response into an error; the codes that
// need an operator wrap ErrNodeReplaced or errNotMember, which join does not
// retry.
func (p *joinResponse) responseError() error {
	switch p.Code {
	case codeNodeReplaced:
		return fmt.Errorf("%w: %s", ErrNodeReplaced, p.Message)
	case codeNotMember:
		return fmt.Errorf("%w: %s", errNotMember, p.Message)
	case codeInvalid:
		return fmt.Errorf("%w: %s", ErrInvalidCommand, p.Message)
	case codeFresh:
		return fmt.Errorf("%w: %s", errFresh, p.Message)
	}
	return fmt.Errorf("refused: %s", p.Message)
}

// errFresh reports a join answered by a node that is in no cluster yet.
var errFresh = errors.New("not in a cluster yet")

// permanent reports errors that retrying cannot fix.
func permanent(err error) bool {
	return errors.Is(err, ErrNodeReplaced) || errors.Is(err, errNotMember) || errors.Is(err, ErrInvalidCommand)
}

// joinRPC sends one request to the Raft port at addr and reads the answer.
func joinRPC(ctx context.Context, addr string, req *joinRequest) (joinResponse, error) {
	d := net.Dialer{Timeout: joinIOTimeout}
	c, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return joinResponse{}, err
	}
	defer func() { _ = c.Close() }() // one request per connection; the reply is what counts
	stop := context.AfterFunc(ctx, func() { _ = c.SetDeadline(time.Now()) })
	defer stop()
	_ = c.SetWriteDeadline(time.Now().Add(joinIOTimeout))
	var buf frameBuffer
	buf = append(buf, connJoin)
	if err := writeFrame(&buf, req); err != nil {
		return joinResponse{}, err
	}
	if _, err := c.Write(buf); err != nil {
		return joinResponse{}, err
	}
	_ = c.SetReadDeadline(time.Now().Add(joinAddTimeout + joinIOTimeout))
	var resp joinResponse
	if err := readFrame(c, &resp); err != nil {
		if ctx.Err() != nil {
			return joinResponse{}, ctx.Err()
		}
		return joinResponse{}, err
	}
	return resp, nil
}

// frameBuffer collects the kind byte and a frame into one write.
type frameBuffer []byte

func (b *frameBuffer) Write(p []byte) (int, error) {
	*b = append(*b, p...)
	return len(p), nil
}

// joinVia sends req to addr and follows redirects to the leader. It returns
// the answer and the address of the node that gave it.
func joinVia(ctx context.Context, addr string, req *joinRequest) (joinResponse, string, error) {
	for range joinMaxRedirects + 1 {
		resp, err := joinRPC(ctx, addr, req)
		if err != nil {
			return resp, addr, fmt.Errorf("cluster: join %s: %w", addr, err)
		}
		switch resp.Status {
		case joinOK:
			return resp, addr, nil
		case joinRedirect:
			if resp.Leader == "" || resp.Leader == addr {
				return resp, addr, fmt.Errorf("cluster: join %s: redirected to %q", addr, resp.Leader)
			}
			addr = resp.Leader
		case joinError:
			return resp, addr, fmt.Errorf("cluster: join %s: %w", addr, resp.responseError())
		default:
			return resp, addr, fmt.Errorf("cluster: join %s: unknown status %q", addr, resp.Status)
		}
	}
	return joinResponse{}, addr, fmt.Errorf("cluster: join: more than %d redirects (last to %s)", joinMaxRedirects, addr)
}

// joinLoop tries the addresses addrs returns, in order, until one answers
// "ok", an answer cannot be retried, or ctx ends; it backs off from 200ms
// to 2s between rounds. It skips this node's own address.
func (n *Node) joinLoop(ctx context.Context, req *joinRequest, addrs func() []string) (joinResponse, string, error) {
	self := n.Self().RaftAddr
	backoff := joinBackoffMin
	var lastErr error
	for {
		seen := map[string]bool{self: true}
		for _, a := range addrs() {
			if seen[a] {
				continue
			}
			seen[a] = true
			resp, at, err := joinVia(ctx, a, req)
			if err == nil {
				return resp, at, nil
			}
			if permanent(err) {
				return resp, at, err
			}
			if lastErr == nil || !errors.Is(err, errFresh) {
				lastErr = err // a new node's answer says less than a member's
			}
			n.log.Debug("join attempt failed", logKeyAddr, a, logKeyErr, err)
		}
		if lastErr == nil {
			lastErr = errors.New("no address to join other than this node's own")
		}
		select {
		case <-time.After(backoff):
		case <-ctx.Done():
			return joinResponse{}, "", fmt.Errorf("cluster: join %v: gave up (%w); last failure: %w", addrs(), ctx.Err(), lastErr)
		}
		backoff = min(2*backoff, joinBackoffMax)
	}
}
