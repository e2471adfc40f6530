package broker

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"time"

	"github.com/walrus-edge/walrus/bridge"
	"github.com/walrus-edge/walrus/cluster"
	"github.com/walrus-edge/walrus/storage"
)

// Get reads the next entry of topic through the shared destructive cursor
// (the original's GET), the same on every node and durable across restarts.
// It reads the entry at the cursor, then moves the cursor past it with a
// compare-and-set through Raft, and returns the entry only if the move
// applied: two GETs racing through different nodes never both get it. ok is
// false when the topic is drained (the original's EMPTY).
func (s *Server) Get(ctx context.Context, topic string) (entry bridge.Entry, ok bool, err error) {
	ctx, cancel := context.WithTimeout(ctx, s.cfg.RequestTimeout)
	defer cancel()
	for {
		t, err := s.topic(ctx, topic)
		if err != nil {
			return bridge.Entry{}, false, err
		}
		cur := max(t.Cursor, s.cursorHint(topic))
		seg := t.SegmentFor(cur)
		switch {
		case seg.State == cluster.SegmentSealed && cur >= seg.End():
			// Past a sealed segment (or in the gap a failover left): move
			// to the next segment's first offset, delivering nothing.
			next, _ := t.Segment(seg.ID + 1)
			if err := s.advance(ctx, topic, cur, next.Base); err != nil {
				return bridge.Entry{}, false, err
			}
			continue
		case seg.State == cluster.SegmentPending:
			return bridge.Entry{}, false, fmt.Errorf("%w: topic %s segment %d was failed over from node %d, which has not reported it yet",
				ErrUnavailable, topic, seg.ID, seg.Leader)
		}
		resp, err := s.readAt(ctx, topic, seg, cur-seg.Base, storage.ReadLimits{MaxEntries: 1})
		if err != nil {
			return bridge.Entry{}, false, err
		}
		if len(resp.Entries) == 0 {
			if seg.State == cluster.SegmentOpen && resp.Sealed {
				// The segment is being rolled over: wait for the new one.
				if err := s.waitChange(ctx, 50*time.Millisecond); err != nil {
					return bridge.Entry{}, false, err
				}
				continue
			}
			return bridge.Entry{}, false, nil
		}
		// The token makes a replay of this move (after an unknown outcome)
		// answer Applied instead of losing the entry.
		res, err := s.moveCursor(ctx, topic, cur, cur+1)
		if err != nil {
			return bridge.Entry{}, false, err
		}
		if res.Applied {
			s.metrics.delivered.Inc()
			return resp.Entries[0], true, nil
		}
		// Another GET took it: read at the cursor the leader reported.
	}
}

// moveCursor compare-and-sets topic's cursor from → to through the Raft
// leader. It does not wait for this node's metadata: the leader's answer
// carries the cursor (to if the move applied, the current one if not), kept
// as a hint for the next GET. The cursor only moves forward, so a hint is
// never ahead of it, and a failed move corrects it.
func (s *Server) moveCursor(ctx context.Context, topic string, from, to uint64) (cluster.Result, error) {
	res, err := s.commit(ctx, cluster.Command{
		Type: cluster.CmdAdvanceCursor, Topic: topic, From: from, To: to, Token: newToken(),
	}, false)
	if err != nil {
		return res, err
	}
	s.mu.Lock()
	s.mu.cursors[topic] = res.Cursor
	s.mu.Unlock()
	return res, nil
}

func (s *Server) cursorHint(topic string) uint64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.mu.cursors[topic]
}

// newToken returns a unique id for a cursor move.
func newToken() string {
	var b [12]byte
	_, _ = rand.Read(b[:]) // crypto/rand never fails on Linux
	return hex.EncodeToString(b[:])
}

// advance moves the cursor without delivering anything (skipping the end of
// a sealed segment). Losing the race is fine: someone else moved it.
func (s *Server) advance(ctx context.Context, topic string, from, to uint64) error {
	_, err := s.moveCursor(ctx, topic, from, to)
	return err
}

// Fetch reads the entry at index of segment segID without moving any
// cursor. ok is false when there is no entry there yet.
func (s *Server) Fetch(ctx context.Context, topic string, segID, index uint64) (bridge.Entry, bool, error) {
	ctx, cancel := context.WithTimeout(ctx, s.cfg.RequestTimeout)
	defer cancel()
	t, err := s.topic(ctx, topic)
	if err != nil {
		return bridge.Entry{}, false, err
	}
	seg, ok := t.Segment(segID)
	if !ok {
		if segID > t.Open().ID {
			return bridge.Entry{}, false, nil
		}
		return bridge.Entry{}, false, fmt.Errorf("%w: topic %s has no segment %d", storage.ErrOffsetOutOfRange, topic, segID)
	}
	if seg.State == cluster.SegmentPending {
		return bridge.Entry{}, false, fmt.Errorf("%w: topic %s segment %d waits for node %d", ErrUnavailable, topic, segID, seg.Leader)
	}
	if seg.State == cluster.SegmentSealed && index >= seg.Count {
		return bridge.Entry{}, false, nil
	}
	resp, err := s.readAt(ctx, topic, seg, index, storage.ReadLimits{MaxEntries: 1})
	if err != nil || len(resp.Entries) == 0 {
		return bridge.Entry{}, false, err
	}
	return resp.Entries[0], true, nil
}

// readAt reads from the node that holds seg.
func (s *Server) readAt(ctx context.Context, topic string, seg cluster.Segment, index uint64, lim storage.ReadLimits) (bridge.ReadResponse, error) {
	if seg.Leader == s.self() {
		return s.readLocal(topic, seg.ID, index, lim)
	}
	resp, err := s.bridge.Read(ctx, uint64(seg.Leader), bridge.ReadRequest{
		Topic: topic, Segment: seg.ID, Index: index, MaxEntries: lim.MaxEntries, MaxBytes: lim.MaxBytes,
	})
	if err != nil {
		return resp, fmt.Errorf("read topic %s segment %d from node %d: %w", topic, seg.ID, seg.Leader, err)
	}
	return resp, nil
}

// readLocal reads a segment held by this node. A segment this node leads
// but never wrote to is empty.
func (s *Server) readLocal(topic string, segID, index uint64, lim storage.ReadLimits) (bridge.ReadResponse, error) {
	info, err := s.store.Segment(topic, storage.SegmentID(segID))
	if errors.Is(err, storage.ErrSegmentNotFound) {
		if t, ok := s.raft.Metadata().Topic(topic); ok {
			if seg, ok := t.Segment(segID); ok && seg.Leader == s.self() && seg.State == cluster.SegmentOpen {
				return bridge.ReadResponse{}, nil
			}
		}
		return bridge.ReadResponse{}, fmt.Errorf("%w: topic %s segment %d is not on node %d", ErrUnavailable, topic, segID, s.cfg.NodeID)
	}
	if err != nil {
		return bridge.ReadResponse{}, err
	}
	resp := bridge.ReadResponse{Count: info.Count, Sealed: info.Sealed}
	if index >= info.Count {
		return resp, nil
	}
	es, err := s.store.Read(topic, storage.SegmentID(segID), index, lim)
	if err != nil {
		return resp, err
	}
	resp.Entries = make([]bridge.Entry, len(es))
	for i, e := range es {
		resp.Entries[i] = bridge.Entry{
			Segment: uint64(e.Segment), Index: e.Index, Offset: uint64(e.Offset),
			Record: toBridgeRecords([]storage.Record{e.Record})[0],
		}
	}
	return resp, nil
}
