package broker

import (
	"context"

	"github.com/walrus-edge/walrus/bridge"
	"github.com/walrus-edge/walrus/cluster"
	"github.com/walrus-edge/walrus/storage"
)

// SetAfterPropose sets cfg's test hook afterPropose: f runs on the Raft
// leader after each command it proposes has applied, before the proposer
// is answered.
func SetAfterPropose(cfg *Config, f func(cluster.Command, cluster.Result)) { cfg.afterPropose = f }

// OpenSegment returns topic's open segment in s's metadata.
func OpenSegment(s *Server, topic string) cluster.Segment {
	t, _ := s.raft.Metadata().Topic(topic)
	return t.Open()
}

// EnsureSegment is the lazy creation of a segment's storage at an append
// that judged seg open on earlier metadata.
func EnsureSegment(s *Server, topic string, seg cluster.Segment) error {
	_, err := s.ensureSegment(topic, seg)
	return err
}

// HasSegment reports whether s's storage holds segment id of topic.
func HasSegment(s *Server, topic string, id uint64) bool {
	_, err := s.store.Segment(topic, storage.SegmentID(id))
	return err == nil
}

// MarkLeaving sets s's leaving flag as HandOff does first, and nothing
// else: no heartbeat, no rollover, no leadership transfer.
func MarkLeaving(s *Server) { s.leaving.Store(true) }

// ReportHeartbeat delivers hb to s as if a node had sent it, and reports
// whether s then counts that node as leaving.
func ReportHeartbeat(s *Server, hb bridge.Heartbeat) (leaving bool, err error) {
	if _, err := (remote{s}).Heartbeat(context.Background(), hb); err != nil {
		return false, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.mu.peers[cluster.NodeID(hb.NodeID)].leaving, nil
}
