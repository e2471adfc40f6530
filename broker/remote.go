package broker

import (
	"context"
	"encoding/json"
	"fmt"
	"time"

	"github.com/walrus-edge/walrus/bridge"
	"github.com/walrus-edge/walrus/cluster"
	"github.com/walrus-edge/walrus/storage"
)

// remote serves the internal RPC: requests other nodes forward to this one.
type remote struct{ s *Server }

var _ bridge.Handler = remote{}

// errStarting answers requests that arrive before Raft has started.
var errStarting = &bridge.RemoteError{Code: bridge.CodeUnavailable, Message: "node is starting"}

// Append appends to a segment this node leads.
func (r remote) Append(ctx context.Context, req bridge.AppendRequest) (bridge.AppendResponse, error) {
	if !r.s.serving.Load() {
		return bridge.AppendResponse{}, errStarting
	}
	res, err := r.s.appendLocal(ctx, req.Topic, req.Segment, req.Epoch, fromBridgeRecords(req.Records))
	return res, remoteError(err)
}

// Read reads a segment this node holds.
func (r remote) Read(ctx context.Context, req bridge.ReadRequest) (bridge.ReadResponse, error) {
	if !r.s.serving.Load() {
		return bridge.ReadResponse{}, errStarting
	}
	res, err := r.s.readLocal(req.Topic, req.Segment, req.Index,
		storage.ReadLimits{MaxEntries: req.MaxEntries, MaxBytes: req.MaxBytes})
	return res, remoteError(err)
}

// Propose commits a metadata command on behalf of another node; only the
// Raft leader accepts.
func (r remote) Propose(ctx context.Context, req bridge.ProposeRequest) (bridge.ProposeResponse, error) {
	if !r.s.serving.Load() {
		return bridge.ProposeResponse{}, errStarting
	}
	cmd, err := cluster.DecodeCommand(req.Command)
	if err != nil {
		return bridge.ProposeResponse{}, &bridge.RemoteError{Code: bridge.CodeInternal, Message: err.Error()}
	}
	if !r.s.raft.IsLeader() {
		return bridge.ProposeResponse{}, remoteError(fmt.Errorf("%w: node %d", cluster.ErrNotLeader, r.s.cfg.NodeID))
	}
	res, err := r.s.proposeAsLeader(ctx, cmd)
	if err != nil {
		return bridge.ProposeResponse{}, remoteError(err)
	}
	b, err := json.Marshal(res)
	if err != nil {
		return bridge.ProposeResponse{}, remoteError(err)
	}
	return bridge.ProposeResponse{Index: res.Index, Result: b}, nil
}

// peerReport is the latest heartbeat of a node, kept by the Raft leader.
type peerReport struct {
	applied uint64
	seen    time.Time
	leaving bool  // the node is stopping (HandOff): place nothing new on it
	sent    int64 // when the node sent the report, by its clock
}

// Heartbeat records a node's report on the Raft leader (used for the
// METRICS replication view) and answers with what the node needs to renew
// its write lease.
func (r remote) Heartbeat(ctx context.Context, hb bridge.Heartbeat) (bridge.HeartbeatAck, error) {
	s := r.s
	if !s.serving.Load() {
		return bridge.HeartbeatAck{}, errStarting
	}
	s.mu.Lock()
	p := s.mu.peers[cluster.NodeID(hb.NodeID)]
	p.applied, p.seen = hb.AppliedIndex, time.Now()
	// Reports may arrive out of order (HandOff sends its own next to the
	// periodic one): an older one must not clear the leaving flag.
	if hb.SentUnixNano >= p.sent {
		p.leaving, p.sent = hb.Leaving, hb.SentUnixNano
	}
	s.mu.peers[cluster.NodeID(hb.NodeID)] = p
	s.mu.Unlock()
	leader, _ := s.raft.Leader()
	// LastIndex is read before the term: a failover proposed by now is
	// covered, and the sender renews its lease only once it has applied it
	// (leaseValid).
	last := s.raft.LastIndex()
	return bridge.HeartbeatAck{
		LeaderID: uint64(leader), Term: s.raft.Status().CurrentTerm,
		LastIndex: last, PeerFailing: s.raft.PeerHealth()[cluster.NodeID(hb.NodeID)].Failing,
	}, nil
}
