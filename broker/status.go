package broker

import (
	"encoding/json"
	"strconv"
	"time"

	"github.com/walrus-edge/walrus/cluster"
)

// topicState is the STATE reply: the original's TopicState fields, in its
// order, with string map keys, followed by Walrus's additions.
type topicState struct {
	CurrentSegment        uint64            `json:"current_segment"`
	LeaderNode            uint64            `json:"leader_node"`
	LastSealedEntryOffset uint64            `json:"last_sealed_entry_offset"`
	SealedSegments        map[string]uint64 `json:"sealed_segments"`
	SegmentLeaders        map[string]uint64 `json:"segment_leaders"`
	// Walrus additions.
	PendingSegments []uint64 `json:"pending_segments,omitempty"`
	Cursor          uint64   `json:"cursor"`
	CurrentEpoch    uint64   `json:"current_epoch"`
	// FirstOffset is the first topic offset retention kept.
	FirstOffset uint64 `json:"first_offset"`
}

// State returns the STATE JSON of topic.
func (s *Server) State(topic string) ([]byte, error) {
	t, ok := s.raft.Metadata().Topic(topic)
	if !ok {
		return nil, unknownTopic(topic)
	}
	open := t.Open()
	st := topicState{
		CurrentSegment:        open.ID,
		LeaderNode:            uint64(open.Leader),
		LastSealedEntryOffset: t.SealedEntries(),
		SealedSegments:        map[string]uint64{},
		SegmentLeaders:        map[string]uint64{},
		Cursor:                t.Cursor,
		CurrentEpoch:          open.Epoch,
		FirstOffset:           t.FirstOffset(),
	}
	for _, seg := range t.Segments {
		id := strconv.FormatUint(seg.ID, 10)
		st.SegmentLeaders[id] = uint64(seg.Leader)
		switch seg.State {
		case cluster.SegmentSealed:
			st.SealedSegments[id] = seg.Count
		case cluster.SegmentPending:
			st.PendingSegments = append(st.PendingSegments, seg.ID)
		}
	}
	return json.Marshal(st)
}

// The METRICS reply mirrors openraft's RaftMetrics as the original printed
// it, so that tools written for it keep working: they read current_leader,
// state, last_log_index, membership_config.membership.{configs,nodes} and
// replication.<id>.index.
type (
	leaderID struct {
		Term   uint64 `json:"term"`
		NodeID uint64 `json:"node_id"`
	}
	logID struct {
		LeaderID leaderID `json:"leader_id"`
		Index    uint64   `json:"index"`
	}
	vote struct {
		LeaderID  leaderID `json:"leader_id"`
		Committed bool     `json:"committed"`
	}
	nodeAddr struct {
		Addr string `json:"addr"`
	}
	membership struct {
		Configs [][]uint64          `json:"configs"`
		Nodes   map[string]nodeAddr `json:"nodes"`
	}
	membershipConfig struct {
		LogID      *logID     `json:"log_id"`
		Membership membership `json:"membership"`
	}
	raftMetrics struct {
		RunningState         map[string]any    `json:"running_state"`
		ID                   uint64            `json:"id"`
		CurrentTerm          uint64            `json:"current_term"`
		Vote                 vote              `json:"vote"`
		LastLogIndex         *uint64           `json:"last_log_index"`
		LastApplied          *logID            `json:"last_applied"`
		Snapshot             *logID            `json:"snapshot"`
		Purged               *logID            `json:"purged"`
		State                string            `json:"state"`
		CurrentLeader        *uint64           `json:"current_leader"`
		MillisSinceQuorumAck *uint64           `json:"millis_since_quorum_ack"`
		LastQuorumAcked      *int64            `json:"last_quorum_acked"`
		MembershipConfig     membershipConfig  `json:"membership_config"`
		Heartbeat            map[string]*int64 `json:"heartbeat"`
		Replication          map[string]*logID `json:"replication"`
		Walrus               walrusNodeMetrics `json:"walrus"`
	}
	// walrusNodeMetrics is Walrus's addition to METRICS.
	walrusNodeMetrics struct {
		StorageBackend string `json:"storage_backend"`
		Topics         int    `json:"topics"`
		MetadataIndex  uint64 `json:"metadata_index"`
		DataDirUUID    string `json:"data_dir_uuid"`
	}
)

// Metrics returns the METRICS JSON of this node.
func (s *Server) Metrics() ([]byte, error) {
	st := s.raft.Status()
	m := s.raft.Metadata()
	term := st.CurrentTerm
	leader := uint64(st.LeaderID)
	out := raftMetrics{
		RunningState: map[string]any{"Ok": nil},
		ID:           s.cfg.NodeID,
		CurrentTerm:  term,
		Vote:         vote{LeaderID: leaderID{Term: term, NodeID: leader}, Committed: leader != 0},
		LastLogIndex: ptr(st.LastLogIndex),
		LastApplied:  &logID{LeaderID: leaderID{Term: st.LastLogTerm, NodeID: leader}, Index: st.AppliedIndex},
		State:        st.State,
		MembershipConfig: membershipConfig{Membership: membership{
			Configs: [][]uint64{{}},
			Nodes:   map[string]nodeAddr{},
		}},
		Walrus: walrusNodeMetrics{
			StorageBackend: s.store.Backend(),
			Topics:         m.NumTopics(),
			MetadataIndex:  m.Index,
			DataDirUUID:    s.id.UUID,
		},
	}
	if st.SnapshotIndex > 0 {
		out.Snapshot = &logID{LeaderID: leaderID{Term: st.SnapshotTerm}, Index: st.SnapshotIndex}
	}
	if leader != 0 {
		out.CurrentLeader = ptr(leader)
	}
	for _, id := range st.Voters {
		out.MembershipConfig.Membership.Configs[0] = append(out.MembershipConfig.Membership.Configs[0], uint64(id))
	}
	for id, addr := range st.Nodes {
		out.MembershipConfig.Membership.Nodes[strconv.FormatUint(uint64(id), 10)] = nodeAddr{Addr: addr}
	}
	if st.State == "Leader" {
		out.MillisSinceQuorumAck = ptr(uint64(0))
		now := time.Now().UnixNano()
		out.LastQuorumAcked = &now
		out.Heartbeat, out.Replication = s.replicationView(st, term)
	}
	return json.MarshalIndent(out, "", "  ")
}

// replicationView builds the leader's heartbeat and replication maps: its
// own log, and each follower's applied index from its latest heartbeat.
func (s *Server) replicationView(st cluster.Status, term uint64) (map[string]*int64, map[string]*logID) {
	hb := map[string]*int64{}
	rep := map[string]*logID{}
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, id := range st.Voters {
		key := strconv.FormatUint(uint64(id), 10)
		if id == s.self() {
			now := time.Now().UnixNano()
			hb[key] = &now
			rep[key] = &logID{LeaderID: leaderID{Term: term, NodeID: uint64(id)}, Index: st.LastLogIndex}
			continue
		}
		p, ok := s.mu.peers[id]
		if !ok {
			hb[key], rep[key] = nil, nil
			continue
		}
		seen := p.seen.UnixNano()
		hb[key] = &seen
		rep[key] = &logID{LeaderID: leaderID{Term: term, NodeID: uint64(st.LeaderID)}, Index: p.applied}
	}
	return hb, rep
}

func ptr[T any](v T) *T { return &v }
