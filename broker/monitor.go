package broker

import (
	"context"
	"errors"
	"slices"
	"strings"
	"time"

	"github.com/walrus-edge/walrus/bridge"
	"github.com/walrus-edge/walrus/cluster"
	"github.com/walrus-edge/walrus/storage"
)

// every calls fn every d until Shutdown.
func (s *Server) every(d time.Duration, fn func()) {
	t := time.NewTicker(d)
	defer t.Stop()
	for {
		select {
		case <-s.bg.Done():
			return
		case <-t.C:
			fn()
		}
	}
}

// heartbeatLoop reports this node's applied index to the Raft leader every
// HeartbeatInterval (the leader's METRICS shows them as replication); the
// answers renew the node's write lease (leaseValid).
func (s *Server) heartbeatLoop() { s.every(s.cfg.HeartbeatInterval, s.heartbeat) }

func (s *Server) heartbeat() {
	ctx, cancel := context.WithTimeout(s.bg, s.cfg.HeartbeatInterval)
	defer cancel()
	s.sendHeartbeat(ctx, s.leaving.Load())
}

// sendHeartbeat reports to the Raft leader; leaving tells it this node is
// stopping (HandOff). It renews the write lease with the answer and returns
// the answer's Raft index (0 without one).
func (s *Server) sendHeartbeat(ctx context.Context, leaving bool) uint64 {
	leader, _ := s.raft.Leader()
	if leader == 0 || leader == s.self() {
		return 0
	}
	sent := time.Now()
	ack, err := s.bridge.Heartbeat(ctx, uint64(leader), bridge.Heartbeat{
		NodeID: s.cfg.NodeID, AppliedIndex: s.raft.Metadata().Index, SentUnixNano: sent.UnixNano(), Leaving: leaving,
	})
	if err != nil {
		if s.bg.Err() == nil {
			s.log.Debug("heartbeat to the raft leader failed", "leader", leader, "err", err)
		}
		return 0
	}
	if !ack.PeerFailing {
		s.lease.heard(ack.LastIndex, sent)
	}
	return ack.LastIndex
}

// monitorLoop checks, every MonitorInterval (WALRUS_MONITOR_CHECK_MS), the
// segments this node leads: it rolls over those at their entry or byte
// limit, finishes rollovers that were interrupted (sealed in storage, still
// open in the metadata), reports failed-over segments, and keeps the NATS
// route seeds current. It also runs retention: the Raft leader trims
// topics, and every node deletes the files of trimmed segments.
func (s *Server) monitorLoop() {
	s.every(s.cfg.MonitorInterval, func() {
		s.checkRollovers()
		s.finalizePending(s.bg)
		s.applyRetention(s.bg)
		s.deleteTrimmed()
		s.syncRoutes()
	})
}

func (s *Server) checkRollovers() {
	m := s.raft.Metadata()
	for _, name := range m.TopicNames() {
		t, _ := m.Topic(name)
		open := t.Open()
		if open.Leader != s.self() {
			continue
		}
		info, err := s.store.Segment(name, storage.SegmentID(open.ID))
		if err != nil {
			continue // nothing written yet
		}
		if info.Sealed || info.Count >= open.MaxEntries || info.Bytes >= s.cfg.MaxSegmentBytes {
			s.triggerRollover(name)
		}
	}
}

// finalizePending seals and reports the segments that were failed over
// while this node led them (it was unreachable, or restarted).
func (s *Server) finalizePending(ctx context.Context) {
	m := s.raft.Metadata()
	for _, name := range m.TopicNames() {
		t, _ := m.Topic(name)
		for _, seg := range t.Segments {
			if seg.State != cluster.SegmentPending || seg.Leader != s.self() {
				continue
			}
			count, err := s.store.Seal(ctx, name, storage.SegmentID(seg.ID), seg.Epoch)
			if errors.Is(err, storage.ErrSegmentNotFound) {
				count, err = 0, nil // it never received an append here
			}
			if err != nil {
				s.log.Error("cannot seal a failed-over segment", "topic", name, "segment", seg.ID, "err", err)
				continue
			}
			s.slots.forget(name, seg.ID)
			if err := s.finalizeIfPending(ctx, name, seg.ID, seg.Epoch, count); err != nil && ctx.Err() == nil {
				s.log.Warn("report of a failed-over segment did not complete; retrying later",
					"topic", name, "segment", seg.ID, "err", err)
			}
		}
	}
}

// failoverLoop runs on every node but acts only on the Raft leader: an open
// segment whose leader the Raft leader has not reached for FailoverTimeout
// is failed over to the next live node, so the topic stays writable. The
// unreachable leader stopped acknowledging after LeaseTimeout, before that.
func (s *Server) failoverLoop() {
	s.every(min(s.cfg.FailoverTimeout/4, time.Second), s.failOver)
}

func (s *Server) failOver() {
	if !s.raft.IsLeader() {
		return
	}
	if s.leaving.Load() {
		// Handed off, then won an election: hand Raft on again, so that
		// stopping this node costs no election.
		if err := s.raft.TransferLeadership(); err != nil {
			s.log.Debug("leaving: raft leadership not handed off", "err", err)
		}
		if !s.raft.IsLeader() {
			return
		}
	}
	health := s.raft.PeerHealth()
	m := s.raft.Metadata()
	for _, name := range m.TopicNames() {
		topic, _ := m.Topic(name)
		open := topic.Open()
		h, ok := health[open.Leader]
		if open.Leader == s.self() || !ok || !h.Failing || time.Since(h.FailingSince) < s.cfg.FailoverTimeout {
			continue
		}
		res, err := s.propose(s.bg, cluster.Command{
			Type: cluster.CmdFailover, Topic: name, Segment: open.ID, Epoch: open.Epoch,
			MaxEntries: s.cfg.MaxSegmentEntries,
		})
		if err != nil {
			s.log.Warn("failover did not complete", "topic", name, "segment", open.ID, "err", err)
			continue
		}
		if res.Applied {
			s.metrics.failovers.Inc()
			s.log.Warn("failed a segment over: its leader is unreachable", "topic", name,
				"segment", open.ID, "leader", open.Leader, "unreachable_for", time.Since(h.FailingSince).Round(time.Millisecond),
				"next", res.Segment)
		}
	}
}

// syncRoutes keeps the NATS route seeds and peers.json equal to the other
// members' route URLs.
func (s *Server) syncRoutes() {
	s.setRoutes(s.raft.Metadata().Nodes())
}

func (s *Server) setRoutes(members []cluster.NodeInfo) {
	var routes []string
	for _, n := range members {
		if n.ID != s.self() && n.RouteURL != "" {
			routes = append(routes, n.RouteURL)
		}
	}
	slices.Sort(routes)
	key := strings.Join(routes, ",")
	s.mu.Lock()
	same := key == s.mu.routes
	s.mu.routes = key
	s.mu.Unlock()
	if same || len(routes) == 0 {
		return
	}
	if err := s.bridge.SetRoutes(routes); err != nil {
		s.log.Warn("update nats routes", "err", err)
	}
	if err := savePeers(s.dir, routes); err != nil {
		s.log.Warn("save peers", "err", err)
	}
}
