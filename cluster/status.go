package cluster

import (
	"context"
	"fmt"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/hashicorp/raft"
)

// Status is the node's Raft state for the METRICS verb and /metrics. It
// carries what the original's openraft RaftMetrics exposed.
type Status struct {
	ID NodeID `json:"id"`
	// State is "Leader", "Follower", "Candidate" or "Shutdown" (openraft's
	// names), or "Learner" for a follower that is not a voter in the current
	// configuration (a node that is joining or was removed).
	State        string `json:"state"`
	CurrentTerm  uint64 `json:"current_term"`
	LastLogIndex uint64 `json:"last_log_index"` // last index in the log or snapshot
	LastLogTerm  uint64 `json:"last_log_term"`
	AppliedIndex uint64 `json:"applied_index"` // last index Raft dispatched to the FSM
	// FSMIndex is the last index the FSM has seen (it can lag AppliedIndex
	// briefly, and skips no-op entries).
	FSMIndex    uint64 `json:"fsm_index"`
	CommitIndex uint64 `json:"commit_index"`
	LeaderID    NodeID `json:"leader_id,omitempty"` // 0 if unknown
	LeaderAddr  string `json:"leader_addr,omitempty"`
	// LastContact is as LastContact returns it; zero if never.
	LastContact time.Time `json:"last_contact"`
	// Voters are the current configuration's voters, ascending.
	Voters []NodeID `json:"voters"`
	// Nodes maps every server of the configuration (voters and non-voters)
	// to its Raft address.
	Nodes map[NodeID]string `json:"nodes"`
	// SnapshotIndex and SnapshotTerm describe the latest snapshot (0 if none).
	SnapshotIndex uint64 `json:"snapshot_index,omitempty"`
	SnapshotTerm  uint64 `json:"snapshot_term,omitempty"`
	// Peers is PeerHealth: set on the leader only.
	Peers map[NodeID]PeerHealth `json:"peers,omitempty"`
}

// PeerHealth is the leader's view of its heartbeats to one voter.
type PeerHealth struct {
	ID   NodeID `json:"id"`
	Addr string `json:"addr"`
	// Failing reports that the latest heartbeat to the voter failed and none
	// has succeeded since.
	Failing bool `json:"failing"`
	// FailingSince is when the current run of failures was first observed
	// (zero when not failing).
	FailingSince time.Time `json:"failing_since,omitzero"`
	// LastContact is the last time the voter answered: as Raft reported it
	// with the latest failure when failing; now when healthy (heartbeats
	// succeed every HeartbeatTimeout/10); now for the leader itself.
	LastContact time.Time `json:"last_contact"`
	// Failures counts the failed heartbeats of the current run.
	Failures uint64 `json:"failures,omitempty"`
}

// peerHealthTracker holds the heartbeat failures reported by Raft's
// observations while this node leads.
type peerHealthTracker struct {
	mu    sync.Mutex
	peers map[NodeID]PeerHealth // failing voters only
}

func (t *peerHealthTracker) reset() {
	t.mu.Lock()
	clear(t.peers)
	t.mu.Unlock()
}

func (t *peerHealthTracker) remove(id NodeID) {
	t.mu.Lock()
	delete(t.peers, id)
	t.mu.Unlock()
}

func (t *peerHealthTracker) failed(id NodeID, lastContact time.Time) {
	t.mu.Lock()
	defer t.mu.Unlock()
	p, ok := t.peers[id]
	if !ok {
		p = PeerHealth{ID: id, Failing: true, FailingSince: time.Now()}
	}
	p.LastContact = lastContact
	p.Failures++
	t.peers[id] = p
}

func (t *peerHealthTracker) get(id NodeID) (PeerHealth, bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	p, ok := t.peers[id]
	return p, ok
}

// observationBuffer is the observer channel's capacity; Raft drops an
// observation rather than block when it is full.
const observationBuffer = 256

// startObservers registers the Raft observer and starts the goroutines that
// follow leadership and heartbeat health.
func (n *Node) startObservers(r *raft.Raft) {
	ch := make(chan raft.Observation, observationBuffer)
	obs := raft.NewObserver(ch, false, func(o *raft.Observation) bool {
		switch o.Data.(type) {
		case raft.FailedHeartbeatObservation, raft.ResumedHeartbeatObservation, raft.PeerObservation:
			return true
		}
		return false
	})
	r.RegisterObserver(obs)
	if !n.keep(func() { n.mu.observer = obs }) {
		r.DeregisterObserver(obs)
		return
	}
	n.goFunc(func(ctx context.Context) { n.watchLeadership(ctx, r) })
	n.goFunc(func(ctx context.Context) { n.watchObservations(ctx, ch) })
}

// watchLeadership forwards Raft's leadership changes to LeaderCh and resets
// the peer health at each change.
func (n *Node) watchLeadership(ctx context.Context, r *raft.Raft) {
	for {
		select {
		case leader := <-r.LeaderCh():
			n.health.reset()
			n.log.Info("leadership changed", "leader", leader, "term", r.CurrentTerm())
			// Keep only the latest value for a slow reader.
			for sent := false; !sent; {
				select {
				case n.leaderCh <- leader:
					sent = true
				default:
					select {
					case <-n.leaderCh:
					default:
					}
				}
			}
		case <-ctx.Done():
			return
		}
	}
}

func (n *Node) watchObservations(ctx context.Context, ch <-chan raft.Observation) {
	for {
		select {
		case o := <-ch:
			switch d := o.Data.(type) {
			case raft.FailedHeartbeatObservation:
				n.health.failed(nodeID(d.PeerID), d.LastContact)
			case raft.ResumedHeartbeatObservation:
				n.health.remove(nodeID(d.PeerID))
			case raft.PeerObservation:
				if d.Removed {
					n.health.remove(nodeID(d.Peer.ID))
				}
			}
		case <-ctx.Done():
			return
		}
	}
}

// LeaderCh returns a channel that receives true when this node becomes the
// leader and false when it stops being it. It holds only the latest change
// (a slow reader sees the current state, not every transition); use one
// reader.
func (n *Node) LeaderCh() <-chan bool { return n.leaderCh }

// Leader returns the current leader's id and Raft address; 0 and "" when
// no leader is known.
func (n *Node) Leader() (NodeID, string) {
	r := n.raft.Load()
	if r == nil {
		return 0, ""
	}
	addr, id := r.LeaderWithID()
	if addr == "" {
		return 0, ""
	}
	return nodeID(id), string(addr)
}

// IsLeader reports whether this node is the Raft leader.
func (n *Node) IsLeader() bool {
	r := n.raft.Load()
	return r != nil && r.State() == raft.Leader
}

// configuration returns the latest Raft configuration (empty before Start).
func (n *Node) configuration() raft.Configuration {
	r := n.raft.Load()
	if r == nil {
		return raft.Configuration{}
	}
	f := r.GetConfiguration()
	if f.Error() != nil {
		return raft.Configuration{}
	}
	return f.Configuration()
}

// Voters returns the current configuration's voters in ascending order.
func (n *Node) Voters() []NodeID {
	return voters(n.configuration())
}

func voters(c raft.Configuration) []NodeID {
	var out []NodeID
	for _, s := range c.Servers {
		if s.Suffrage == raft.Voter {
			out = append(out, nodeID(s.ID))
		}
	}
	slices.Sort(out)
	return out
}

// LastContact returns, on a follower, the last time it heard from the
// leader (raft.LastContact). On the leader it returns the latest time by
// which a quorum of voters is known to have answered: now when the heartbeats
// to a quorum (counting the leader) are succeeding, otherwise the failing
// voters' last contacts decide. It never calls VerifyLeader: hashicorp/raft's
// leader lease already makes a leader step down once it has not reached a
// quorum for LeaderLeaseTimeout, so a leader's answer is at most about
// LeaderLeaseTimeout (plus the heartbeat RPC timeout for a silently
// unreachable peer) optimistic. Zero when never in contact.
func (n *Node) LastContact() time.Time {
	r := n.raft.Load()
	if r == nil {
		return time.Time{}
	}
	if r.State() != raft.Leader {
		return r.LastContact()
	}
	now := time.Now()
	vs := voters(n.configuration())
	if len(vs) == 0 {
		return now
	}
	times := make([]time.Time, 0, len(vs))
	for _, id := range vs {
		if p, ok := n.health.get(id); ok && id != n.cfg.ID {
			times = append(times, p.LastContact)
		} else {
			times = append(times, now)
		}
	}
	// The quorum-th most recent contact.
	slices.SortFunc(times, func(a, b time.Time) int { return b.Compare(a) })
	return times[len(vs)/2]
}

// PeerHealth returns, on the leader, the heartbeat health of every voter
// (the leader itself included, always healthy). On a follower or candidate
// it returns an empty map: only the leader sends heartbeats.
func (n *Node) PeerHealth() map[NodeID]PeerHealth {
	out := make(map[NodeID]PeerHealth)
	if !n.IsLeader() {
		return out
	}
	now := time.Now()
	for _, s := range n.configuration().Servers {
		if s.Suffrage != raft.Voter {
			continue
		}
		id := nodeID(s.ID)
		p, ok := n.health.get(id)
		if !ok || id == n.cfg.ID {
			p = PeerHealth{ID: id, LastContact: now}
		}
		p.Addr = string(s.Address)
		out[id] = p
	}
	return out
}

// AppliedIndex returns the index of the last Raft log entry this node has
// applied, of any kind: unlike Metadata().Index, which moves only with
// commands, it also covers the leader's no-op and configuration entries, so
// it reaches another node's LastIndex once this node has caught up.
func (n *Node) AppliedIndex() uint64 {
	if r := n.raft.Load(); r != nil {
		return r.AppliedIndex()
	}
	return 0
}

// TransferLeadership hands the Raft leadership to another voter and waits
// until it has (leader only).
func (n *Node) TransferLeadership() error {
	r := n.raft.Load()
	if r == nil {
		return ErrShutdown
	}
	if err := r.LeadershipTransfer().Error(); err != nil {
		return fmt.Errorf("cluster: transfer leadership: %w", err)
	}
	return nil
}

// LastIndex returns the index of the last entry in this node's Raft log,
// committed or not (0 when Raft is not running). On the leader it covers
// every command proposed so far.
func (n *Node) LastIndex() uint64 {
	if r := n.raft.Load(); r != nil {
		return r.LastIndex()
	}
	return 0
}

// Status returns the node's Raft state. Indexes and terms come from the
// typed accessors where hashicorp/raft has them, and from Stats' decimal
// values otherwise (last log term).
func (n *Node) Status() Status {
	st := Status{ID: n.cfg.ID, State: raft.Shutdown.String(), Nodes: map[NodeID]string{}}
	r := n.raft.Load()
	if r == nil {
		return st
	}
	stats := r.Stats()
	u := func(key string) uint64 {
		v, _ := strconv.ParseUint(stats[key], 10, 64)
		return v
	}
	cfg := n.configuration()
	st.State = stateName(r.State(), cfg, n.cfg.ID)
	st.CurrentTerm = r.CurrentTerm()
	st.LastLogIndex = r.LastIndex()
	st.LastLogTerm = u("last_log_term")
	st.AppliedIndex = r.AppliedIndex()
	st.FSMIndex = n.fsm.appliedIndex()
	st.CommitIndex = r.CommitIndex()
	st.LeaderID, st.LeaderAddr = n.Leader()
	st.LastContact = n.LastContact()
	st.Voters = voters(cfg)
	for _, s := range cfg.Servers {
		st.Nodes[nodeID(s.ID)] = string(s.Address)
	}
	n.mu.Lock()
	snaps := n.mu.snaps
	n.mu.Unlock()
	if snaps != nil {
		if metas, err := snaps.List(); err == nil && len(metas) > 0 {
			st.SnapshotIndex, st.SnapshotTerm = metas[0].Index, metas[0].Term
		}
	}
	if st.State == raft.Leader.String() {
		st.Peers = n.PeerHealth()
	}
	return st
}

// stateName maps a Raft state to openraft's names, with "Learner" for a
// follower that is not a voter.
func stateName(s raft.RaftState, cfg raft.Configuration, self NodeID) string {
	if s == raft.Follower && !slices.Contains(voters(cfg), self) {
		return "Learner"
	}
	return s.String()
}
