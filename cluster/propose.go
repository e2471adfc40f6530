package cluster

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/raft"
)

// NotLeaderError is returned by proposals and membership changes on a node
// that is not the Raft leader. It wraps ErrNotLeader and names the leader
// when it is known (LeaderID 0 otherwise).
type NotLeaderError struct {
	LeaderID   NodeID
	LeaderAddr string
}

func (e *NotLeaderError) Error() string {
	if e.LeaderID == 0 {
		return ErrNotLeader.Error() + " (no leader known)"
	}
	return fmt.Sprintf("%s (leader is node %d at %s)", ErrNotLeader, e.LeaderID, e.LeaderAddr)
}

func (e *NotLeaderError) Unwrap() error { return ErrNotLeader }

// errNotMember refuses a re-registration of a node that is not in the Raft
// configuration (it was removed; a restart must not add it back).
var errNotMember = errors.New("cluster: node is not in the raft configuration")

// defaultApplyTimeout bounds how long a proposal waits to be enqueued when
// its ctx has no deadline.
const defaultApplyTimeout = 10 * time.Second

// Propose applies cmd through Raft on the leader and returns the FSM's
// Result; elsewhere it returns a *NotLeaderError. ctx bounds the wait. When
// leadership is lost or ctx ends before the answer, the error wraps
// ErrOutcomeUnknown: the command may still apply.
func (n *Node) Propose(ctx context.Context, cmd Command) (Result, error) {
	data, err := cmd.Encode()
	if err != nil {
		return Result{}, fmt.Errorf("cluster: propose %s: %w", cmd.Type, err)
	}
	return n.propose(ctx, string(cmd.Type), data)
}

// ProposeRaw is Propose for an already encoded command (forwarded from
// another node). A command that does not decode is refused without a log
// entry.
func (n *Node) ProposeRaw(ctx context.Context, data []byte) (Result, error) {
	cmd, err := DecodeCommand(data)
	if err != nil {
		return Result{}, fmt.Errorf("cluster: propose: %w", err)
	}
	return n.propose(ctx, string(cmd.Type), data)
}

func (n *Node) propose(ctx context.Context, what string, data []byte) (Result, error) {
	r, err := n.raftOrErr()
	if err != nil {
		return Result{}, err
	}
	if r.State() != raft.Leader {
		return Result{}, n.notLeader()
	}
	f := r.Apply(data, enqueueTimeout(ctx))
	if err := n.await(ctx, f); err != nil {
		return Result{}, n.raftError("propose "+what, err)
	}
	res, ok := f.Response().(Result)
	if !ok {
		return Result{}, fmt.Errorf("cluster: propose %s: unexpected fsm response %T", what, f.Response())
	}
	return res, nil
}

// enqueueTimeout is the timeout raft.Apply and the membership calls take:
// it bounds only the wait to be enqueued, so take it from ctx.
func enqueueTimeout(ctx context.Context) time.Duration {
	if d, ok := ctx.Deadline(); ok {
		return max(time.Until(d), time.Millisecond)
	}
	return defaultApplyTimeout
}

// await waits for a Raft future, ctx or Shutdown. raft futures have no
// channel, so a tracked goroutine waits on Error. (hashicorp/raft v1.7.3
// never answers an Apply future whose batch is still queued for the FSM when
// Raft shuts down; Shutdown then reports that its goroutines did not end.)
func (n *Node) await(ctx context.Context, f raft.Future) error {
	done := make(chan error, 1)
	if !n.goFunc(func(context.Context) { done <- f.Error() }) {
		return fmt.Errorf("cluster: node %d: %w", n.cfg.ID, ErrShutdown)
	}
	select {
	case err := <-done:
		return err
	case <-ctx.Done():
		return ctx.Err()
	case <-n.ctx.Done():
		return ErrShutdown
	}
}

// notLeader returns a *NotLeaderError naming the current leader.
func (n *Node) notLeader() error {
	id, addr := n.Leader()
	return &NotLeaderError{LeaderID: id, LeaderAddr: addr}
}

// raftError wraps an error from a Raft future, translating Raft's sentinels.
func (n *Node) raftError(op string, err error) error {
	switch {
	case errors.Is(err, raft.ErrNotLeader):
		return fmt.Errorf("cluster: %s: %w", op, n.notLeader())
	case errors.Is(err, raft.ErrRaftShutdown):
		return fmt.Errorf("cluster: %s: %w", op, ErrShutdown)
	case errors.Is(err, ErrShutdown):
		return fmt.Errorf("cluster: %s: %w", op, err)
	case errors.Is(err, raft.ErrLeadershipLost), errors.Is(err, context.DeadlineExceeded), errors.Is(err, context.Canceled):
		// The entry may still commit.
		return fmt.Errorf("cluster: %s: %w: %w", op, ErrOutcomeUnknown, err)
	}
	return fmt.Errorf("cluster: %s: %w", op, err)
}

// AddVoter, on the leader, records info in the metadata (UpsertNode) and
// adds the node to the Raft configuration as a voter at info.RaftAddr. It
// refuses with ErrNodeReplaced a node whose id is recorded with another
// UUID, and does nothing more for a node already recorded as info and in the
// configuration at that address.
func (n *Node) AddVoter(ctx context.Context, info NodeInfo) error {
	return n.addVoter(ctx, info, true)
}

// addVoter is AddVoter; with add false it only updates a node that is
// already in the configuration (errNotMember otherwise).
func (n *Node) addVoter(ctx context.Context, info NodeInfo, add bool) error {
	op := fmt.Sprintf("add voter %d", info.ID)
	if info.ID == 0 || info.UUID == "" || info.RaftAddr == "" {
		return fmt.Errorf("cluster: %s: %w: a node needs an id, a uuid and a raft address", op, ErrInvalidCommand)
	}
	r, err := n.raftOrErr()
	if err != nil {
		return err
	}
	if r.State() != raft.Leader {
		return fmt.Errorf("cluster: %s: %w", op, n.notLeader())
	}
	// The metadata must include everything committed before this term,
	// or a node would be recorded again (or a replaced one let through).
	if err := n.leaderBarrier(ctx, r); err != nil {
		return n.raftError(op, err)
	}
	cf := r.GetConfiguration()
	if err := cf.Error(); err != nil {
		return n.raftError(op, err)
	}
	inConfig, current := false, false
	for _, s := range cf.Configuration().Servers {
		if s.ID == raftID(info.ID) {
			inConfig = true
			current = s.Suffrage == raft.Voter && string(s.Address) == info.RaftAddr
		}
	}
	if !inConfig && !add {
		return fmt.Errorf("cluster: %s: %w", op, errNotMember)
	}
	old, known := n.Metadata().Node(info.ID)
	if known && old.UUID != info.UUID {
		return fmt.Errorf("cluster: %s: %w (recorded with %s, not %s)", op, ErrNodeReplaced, old.UUID, info.UUID)
	}
	if !known || old != info {
		res, err := n.Propose(ctx, Command{Type: CmdUpsertNode, Node: &info})
		if err != nil {
			return fmt.Errorf("cluster: %s: %w", op, err)
		}
		if !res.Applied {
			if strings.HasPrefix(res.Reason, ErrNodeReplaced.Error()) {
				return fmt.Errorf("cluster: %s: %w", op, ErrNodeReplaced)
			}
			return fmt.Errorf("cluster: %s: not recorded: %s", op, res.Reason)
		}
	}
	if current {
		return nil
	}
	f := r.AddVoter(raftID(info.ID), raft.ServerAddress(info.RaftAddr), 0, enqueueTimeout(ctx))
	if err := n.await(ctx, f); err != nil {
		return n.raftError(op, err)
	}
	n.log.Info("added voter", logKeyPeer, uint64(info.ID), logKeyAddr, info.RaftAddr)
	return nil
}

// leaderBarrier makes sure, once per term, that the leader's FSM has
// applied every entry of the previous terms (a Raft barrier, which writes a
// log entry).
func (n *Node) leaderBarrier(ctx context.Context, r *raft.Raft) error {
	term := r.CurrentTerm()
	if n.barrierTerm.Load() == term {
		return nil
	}
	if err := n.await(ctx, r.Barrier(enqueueTimeout(ctx))); err != nil {
		return err
	}
	if r.CurrentTerm() == term {
		n.barrierTerm.Store(term)
	}
	return nil
}

// RemoveNode, on the leader, removes a node from the Raft configuration and
// then from the metadata (CmdRemoveNode). The leader cannot remove itself.
func (n *Node) RemoveNode(ctx context.Context, id NodeID) error {
	op := fmt.Sprintf("remove node %d", id)
	r, err := n.raftOrErr()
	if err != nil {
		return err
	}
	if id == n.cfg.ID {
		return fmt.Errorf("cluster: %s: the leader cannot remove itself", op)
	}
	if r.State() != raft.Leader {
		return fmt.Errorf("cluster: %s: %w", op, n.notLeader())
	}
	f := r.RemoveServer(raftID(id), 0, enqueueTimeout(ctx))
	if err := n.await(ctx, f); err != nil {
		return n.raftError(op, err)
	}
	n.health.remove(id)
	if _, err := n.Propose(ctx, Command{Type: CmdRemoveNode, NodeID: id}); err != nil {
		return fmt.Errorf("cluster: %s: %w", op, err)
	}
	n.log.Info("removed node", logKeyPeer, uint64(id))
	return nil
}

// WaitIndex waits until the FSM has applied Raft index index (or a later
// one). Any index works, including those of entries the FSM never sees
// (no-ops): it waits for Raft to dispatch index, then for the FSM to apply
// the last entry it sees up to index.
func (n *Node) WaitIndex(ctx context.Context, index uint64) error {
	if n.fsm.appliedIndex() >= index {
		return nil
	}
	r, err := n.raftOrErr()
	if err != nil {
		return err
	}
	t := time.NewTicker(pollInterval)
	defer t.Stop()
	for r.AppliedIndex() < index {
		select {
		case <-t.C:
		case <-ctx.Done():
			return fmt.Errorf("cluster: wait for index %d: %w", index, ctx.Err())
		case <-n.ctx.Done():
			return fmt.Errorf("cluster: wait for index %d: %w", index, ErrShutdown)
		}
	}
	return n.fsm.waitApplied(ctx, n.fsmTarget(index))
}

// fsmTarget returns the index of the last entry at or below index that the
// FSM sees (a command or a configuration; Raft keeps no-ops from it), or
// the snapshot index when the log holds no such entry. Raft must have
// dispatched index already.
func (n *Node) fsmTarget(index uint64) uint64 {
	n.mu.Lock()
	wal, snaps := n.mu.wal, n.mu.snaps
	n.mu.Unlock()
	var snapIndex uint64
	if metas, err := snaps.List(); err == nil && len(metas) > 0 {
		snapIndex = metas[0].Index
	}
	var l raft.Log
	for i := index; i > snapIndex; i-- {
		if err := wal.GetLog(i, &l); err != nil {
			break // compacted under us: a newer snapshot covers it
		}
		if l.Type == raft.LogCommand || l.Type == raft.LogConfiguration {
			return i
		}
	}
	return min(index, snapIndex)
}

// raftFSM is the raft.FSM handed to Raft: the metadata fsm plus the Raft
// index of the last entry it has seen, counting configuration entries
// (raft.ConfigurationStore) and restored snapshots, so that Start and
// WaitIndex know when the FSM has caught up.
type raftFSM struct {
	*fsm
	snaps   raft.SnapshotStore // set before Raft starts; Restore reads the latest snapshot's index
	applied atomic.Uint64

	mu     sync.Mutex
	notify chan struct{} // closed and replaced when applied moves
}

func newRaftFSM() *raftFSM {
	return &raftFSM{fsm: newFSM(), notify: make(chan struct{})}
}

var _ raft.ConfigurationStore = (*raftFSM)(nil)

func (f *raftFSM) Apply(l *raft.Log) any {
	res := f.fsm.Apply(l)
	f.setApplied(l.Index)
	return res
}

// StoreConfiguration implements raft.ConfigurationStore.
func (f *raftFSM) StoreConfiguration(index uint64, _ raft.Configuration) { f.setApplied(index) }

// Restore replaces the state with a snapshot: the one Raft restores is the
// latest in the store (at startup, and after an InstallSnapshot, which
// stores it first).
func (f *raftFSM) Restore(rc io.ReadCloser) error {
	if err := f.fsm.Restore(rc); err != nil {
		return err
	}
	if metas, err := f.snaps.List(); err == nil && len(metas) > 0 {
		f.setApplied(metas[0].Index)
	}
	return nil
}

func (f *raftFSM) setApplied(index uint64) {
	f.applied.Store(index)
	f.mu.Lock()
	close(f.notify)
	f.notify = make(chan struct{})
	f.mu.Unlock()
}

func (f *raftFSM) appliedIndex() uint64 { return f.applied.Load() }

// waitApplied blocks until the FSM has seen index.
func (f *raftFSM) waitApplied(ctx context.Context, index uint64) error {
	for {
		f.mu.Lock()
		ch := f.notify
		f.mu.Unlock()
		if f.applied.Load() >= index {
			return nil
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return fmt.Errorf("cluster: wait for index %d: %w", index, ctx.Err())
		}
	}
}
