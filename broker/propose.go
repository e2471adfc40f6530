package broker

import (
	"context"
	"encoding/json"
	"fmt"
	"hash/fnv"
	"time"

	"github.com/walrus-edge/walrus/bridge"
	"github.com/walrus-edge/walrus/cluster"
)

// propose commits a metadata command through the Raft leader, wherever it
// is, and returns once this node's metadata has applied it. It retries
// while there is no leader or the leader moves, within RequestTimeout.
func (s *Server) propose(ctx context.Context, cmd cluster.Command) (cluster.Result, error) {
	return s.commit(ctx, cmd, true)
}

// commit is propose; with wait false it returns as soon as the Raft leader
// answered, without waiting for this node's metadata to apply the command.
func (s *Server) commit(ctx context.Context, cmd cluster.Command, wait bool) (cluster.Result, error) {
	ctx, cancel := context.WithTimeout(ctx, s.cfg.RequestTimeout)
	defer cancel()
	for backoff := 10 * time.Millisecond; ; backoff = min(2*backoff, 500*time.Millisecond) {
		res, err := s.proposeOnce(ctx, cmd)
		if err == nil {
			if !wait {
				return res, nil
			}
			if err := s.raft.WaitIndex(ctx, res.Index); err != nil {
				return res, fmt.Errorf("%s applied at %d but not yet here: %w", cmd.Type, res.Index, err)
			}
			return res, nil
		}
		if !retryable(err) {
			return res, err
		}
		select {
		case <-time.After(backoff):
		case <-ctx.Done():
			return res, fmt.Errorf("%s: %w (last attempt: %w)", cmd.Type, ctx.Err(), err)
		}
	}
}

func (s *Server) proposeOnce(ctx context.Context, cmd cluster.Command) (cluster.Result, error) {
	if s.raft.IsLeader() {
		return s.proposeAsLeader(ctx, cmd)
	}
	leader, _ := s.raft.Leader()
	if leader == 0 {
		return cluster.Result{}, cluster.ErrNoLeader
	}
	data, err := cmd.Encode()
	if err != nil {
		return cluster.Result{}, err
	}
	// The bridge retries an unreachable node until ctx ends, so a leader
	// that stopped would hold the proposal for all of RequestTimeout while
	// the others elect a new one: give up on it as soon as this node names
	// another leader (or none), and let commit retry. Proposing again is
	// safe (see cluster.ErrOutcomeUnknown).
	fctx, cancel := s.whileLeader(ctx, leader)
	defer cancel()
	resp, err := s.bridge.Propose(fctx, uint64(leader), bridge.ProposeRequest{Command: data})
	if err != nil {
		if ctx.Err() == nil && fctx.Err() != nil {
			return cluster.Result{}, fmt.Errorf("%w: raft leader changed from node %d: %w", cluster.ErrOutcomeUnknown, leader, err)
		}
		return cluster.Result{}, err
	}
	var res cluster.Result
	if err := json.Unmarshal(resp.Result, &res); err != nil {
		return cluster.Result{}, fmt.Errorf("decode result from node %d: %w", leader, err)
	}
	return res, nil
}

// whileLeader returns a context that is also cancelled once this node no
// longer names leader as the Raft leader. Its cancel must be called; the
// watcher then exits.
func (s *Server) whileLeader(ctx context.Context, leader cluster.NodeID) (context.Context, context.CancelFunc) {
	ctx, cancel := context.WithCancel(ctx)
	go func() {
		t := time.NewTicker(leaderPoll)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
				if id, _ := s.raft.Leader(); id != leader {
					cancel()
					return
				}
			}
		}
	}()
	return ctx, cancel
}

// leaderPoll is how often a forwarded proposal checks the Raft leader.
const leaderPoll = 20 * time.Millisecond

// proposeAsLeader places the leader of a new topic or segment if the
// proposer left it to the Raft leader, then commits the command.
func (s *Server) proposeAsLeader(ctx context.Context, cmd cluster.Command) (cluster.Result, error) {
	if cmd.NodeID == 0 {
		switch cmd.Type {
		case cluster.CmdCreateTopic:
			cmd.NodeID = s.placeTopic(cmd.Topic)
		case cluster.CmdRollover, cluster.CmdFailover:
			if t, ok := s.raft.Metadata().Topic(cmd.Topic); ok {
				cmd.NodeID = s.nextLeader(t.Open().Leader)
			}
		}
	}
	res, err := s.raft.Propose(ctx, cmd)
	if err == nil && s.cfg.afterPropose != nil {
		s.cfg.afterPropose(cmd, res) // tests only (Config.afterPropose)
	}
	return res, err
}

// liveVoters returns the voters the Raft leader can reach, in id order
// (always including itself).
func (s *Server) liveVoters() []cluster.NodeID {
	health := s.raft.PeerHealth()
	s.mu.Lock()
	leaving := map[cluster.NodeID]bool{}
	for id, p := range s.mu.peers {
		leaving[id] = p.leaving
	}
	s.mu.Unlock()
	// This node's own flag: it sends itself no heartbeat, and it may have
	// become Raft leader after its HandOff.
	leaving[s.self()] = s.leaving.Load()
	var live []cluster.NodeID
	for _, id := range s.raft.Voters() {
		if leaving[id] {
			continue
		}
		if h, ok := health[id]; id == s.self() || !ok || !h.Failing {
			live = append(live, id)
		}
	}
	if len(live) == 0 {
		live = []cluster.NodeID{s.self()}
	}
	return live
}

// placeTopic spreads new topics over the live voters by a hash of the name.
func (s *Server) placeTopic(topic string) cluster.NodeID {
	live := s.liveVoters()
	h := fnv.New32a()
	_, _ = h.Write([]byte(topic)) // a hash never fails
	return live[h.Sum32()%uint32(len(live))]
}

// nextLeader is the next live voter after cur in id order, wrapping: the
// original's round-robin rotation, skipping nodes that cannot be reached.
func (s *Server) nextLeader(cur cluster.NodeID) cluster.NodeID {
	live := s.liveVoters()
	for _, id := range live {
		if id > cur {
			return id
		}
	}
	return live[0]
}
