package cluster

import (
	"context"
	"fmt"
	"slices"
	"time"

	"github.com/hashicorp/raft"
)

// bootstrap starts a one-node cluster, waits to lead it and records Self.
func (n *Node) bootstrap(ctx context.Context) error {
	r := n.raft.Load()
	self := n.Self()
	f := r.BootstrapCluster(raft.Configuration{Servers: []raft.Server{{
		Suffrage: raft.Voter, ID: raftID(n.cfg.ID), Address: raft.ServerAddress(self.RaftAddr),
	}}})
	if err := n.await(ctx, f); err != nil {
		return fmt.Errorf("bootstrap: %w", err)
	}
	// From here on it is a restart: lead (or follow whoever won), record
	// Self and catch up.
	return n.restart(ctx)
}

// readyAsLeader waits for the FSM to apply everything committed before this
// term (a barrier, in addVoter), then makes sure Self is recorded and the
// configuration has this node's current address.
func (n *Node) readyAsLeader(ctx context.Context, r *raft.Raft) error {
	if err := n.addVoter(ctx, n.Self(), false); err != nil {
		return fmt.Errorf("record self: %w", err)
	}
	return nil
}

// restart waits for a leader after a restart from existing Raft state (or
// a bootstrap). It never bootstraps and never joins: as the leader it records Self itself;
// as a follower it sends its record to the leader over the join protocol
// (Rejoin: the leader updates the record and address but does not add a node
// that is not in the configuration), and catches up to the commit index the
// leader reports.
func (n *Node) restart(ctx context.Context) error {
	r := n.raft.Load()
	backoff := joinBackoffMin
	for {
		if err := n.waitVoterWithLeader(ctx, r); err != nil {
			return err
		}
		if r.State() == raft.Leader {
			err := n.readyAsLeader(ctx, r)
			if err == nil || permanent(err) || ctx.Err() != nil {
				return err
			}
			n.log.Debug("restart as leader", logKeyErr, err)
		} else {
			req := &joinRequest{Node: n.Self(), Rejoin: true}
			_, addr := n.Leader()
			resp, _, err := joinVia(ctx, addr, req)
			if err == nil {
				n.setJoined(resp.Members)
				return n.waitCaughtUp(ctx, r, resp.Index)
			}
			if permanent(err) {
				return err
			}
			n.log.Debug("register with the leader", logKeyAddr, addr, logKeyErr, err)
		}
		select {
		case <-time.After(backoff):
		case <-ctx.Done():
			return fmt.Errorf("restart: %w", ctx.Err())
		}
		backoff = min(2*backoff, joinBackoffMax)
	}
}

// join joins an existing cluster through cfg.Join in two steps. First a dry
// run asks the leader whether this node may join; only then does the node
// accept Raft connections, so a node refused with ErrNodeReplaced (its id
// is recorded with another data directory) never takes part in Raft. Then
// the join proper: the leader records the node and adds it as a voter.
func (n *Node) join(ctx context.Context) error {
	r := n.raft.Load()
	req := &joinRequest{Node: n.Self(), DryRun: true}
	_, leader, err := n.joinLoop(ctx, req, func() []string { return n.cfg.Join })
	if err != nil {
		return err
	}
	n.openRaft()

	req.DryRun = false
	resp, _, err := n.joinLoop(ctx, req, func() []string { return append([]string{leader}, n.cfg.Join...) })
	if err != nil {
		return err
	}
	n.setJoined(resp.Members)
	if err := n.waitVoterWithLeader(ctx, r); err != nil {
		return err
	}
	return n.waitCaughtUp(ctx, r, resp.Index)
}

func (n *Node) setJoined(members []NodeInfo) {
	n.mu.Lock()
	n.mu.joined = slices.Clone(members)
	n.mu.Unlock()
}

// waitVoterWithLeader waits until this node is a voter in the current
// configuration and a leader is known.
func (n *Node) waitVoterWithLeader(ctx context.Context, r *raft.Raft) error {
	return n.poll(ctx, "a leader, as a voter", func() bool {
		addr, _ := r.LeaderWithID()
		return addr != "" && slices.Contains(n.Voters(), n.cfg.ID)
	})
}

// waitCaughtUp waits until the FSM has applied index (the leader's commit
// index when it answered).
func (n *Node) waitCaughtUp(ctx context.Context, r *raft.Raft, index uint64) error {
	if err := n.poll(ctx, fmt.Sprintf("raft to apply index %d", index), func() bool {
		return r.AppliedIndex() >= index
	}); err != nil {
		return err
	}
	return n.fsm.waitApplied(ctx, n.fsmTarget(index))
}

// poll checks cond every pollInterval until it holds or ctx ends.
func (n *Node) poll(ctx context.Context, what string, cond func() bool) error {
	t := time.NewTicker(pollInterval)
	defer t.Stop()
	for !cond() {
		select {
		case <-t.C:
		case <-ctx.Done():
			return fmt.Errorf("wait for %s: %w", what, ctx.Err())
		}
	}
	return nil
}

// fresh reports whether this node started without Raft state and has no
// Raft configuration yet: it has neither bootstrapped nor been added to a
// cluster.
func (n *Node) fresh() bool {
	return !n.HasState() && len(n.configuration().Servers) == 0
}

// bootstrapOrJoin starts a node with no Raft state under BootstrapExpect.
// It asks every Join address, in rounds, whether it may join (a dry run):
// as soon as one answer comes from a node that is in a cluster or has Raft
// state, a cluster exists and this node joins it. Once BootstrapExpect-1
// other nodes answered "fresh", the one with the lowest id bootstraps and
// the others join it (retrying until it leads). The asking goes on until
// waitCtx ends; the bootstrap or join that follows has JoinTimeout.
func (n *Node) bootstrapOrJoin(waitCtx context.Context) error {
	join := func() error {
		ctx, cancel := context.WithTimeout(waitCtx, n.cfg.JoinTimeout)
		defer cancel()
		return n.join(ctx)
	}
	ctx := waitCtx
	self := n.Self()
	req := &joinRequest{Node: self, DryRun: true}
	backoff := joinBackoffMin
	warned := map[string]bool{}
	for {
		fresh := map[NodeID]bool{}
		for _, addr := range n.cfg.Join {
			if addr == self.RaftAddr {
				continue
			}
			resp, err := joinRPC(ctx, addr, req)
			switch {
			case err != nil:
				n.log.Debug("bootstrap expect: no answer", logKeyAddr, addr, logKeyErr, err)
				continue
			case resp.Status == joinError && resp.Code == codeFresh:
				for _, m := range resp.Members {
					switch {
					case m.ID != self.ID:
						fresh[m.ID] = true
					case m.UUID != self.UUID && !warned[addr]:
						// Another node with this node's id: it is not counted,
						// so the expected number is never reached.
						n.log.Warn("bootstrap expect: a new node with this node's id answers", logKeyAddr, addr)
						warned[addr] = true
					}
				}
				continue
			}
			n.log.Info("a cluster exists: joining it", logKeyAddr, addr, "answer", resp.Status, "code", resp.Code)
			return join()
		}
		if len(fresh)+1 >= n.cfg.BootstrapExpect {
			lowest := self.ID
			for id := range fresh {
				lowest = min(lowest, id)
			}
			if lowest == self.ID {
				n.log.Info("bootstrapping a new cluster: the expected nodes are all new and this one has the lowest id",
					"bootstrap_expect", n.cfg.BootstrapExpect, logKeyAddr, self.RaftAddr)
				n.openRaft()
				bctx, cancel := context.WithTimeout(waitCtx, n.cfg.JoinTimeout)
				defer cancel()
				return n.bootstrap(bctx)
			}
			n.log.Info("joining the new cluster that the node with the lowest id bootstraps", "node", uint64(lowest))
			return join()
		}
		n.log.Debug("bootstrap expect: waiting for more new nodes", "fresh", len(fresh)+1, "expect", n.cfg.BootstrapExpect)
		select {
		case <-time.After(backoff):
		case <-ctx.Done():
			return fmt.Errorf("bootstrap expect %d: %d of them answered as new nodes: %w", n.cfg.BootstrapExpect, len(fresh)+1, ctx.Err())
		}
		backoff = min(2*backoff, joinBackoffMax)
	}
}

// openRaft lets Raft connections in: a node that starts without Raft
// state and with a Join list takes none until it knows it may join (join)
// or bootstraps (bootstrapOrJoin).
func (n *Node) openRaft() {
	n.mu.Lock()
	stream := n.mu.stream
	n.mu.Unlock()
	stream.openRaft()
}
