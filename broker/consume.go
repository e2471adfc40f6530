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
			if s.trimmedSince(t) {
				continue // retention deleted the segment meanwhile (and moved the cursor)
			}
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
		// The entry is this GET's only if the move applies. claim resolves
		// an unknown outcome; an error means nothing was consumed, unless
		// it says the outcome is unknown.
		res, err := s.claim(ctx, topic, cur)
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
	s.setCursorHint(topic, res.Cursor)
	return res, nil
}

// claim moves topic's cursor from → from+1 for a GET that read the entry
// at from: the entry is the GET's if and only if the result is Applied.
//
// Unlike moveCursor it never leaves the outcome unknown lightly. The move
// is proposed to the Raft leader (forwarded over the bridge when this node
// is not the leader); when no answer comes back (the request or its reply
// is stuck in a stalled route past the deadline, the leader changes), the
// move may be in the Raft log and apply anyway: answering ERR then would
// consume the entry for nobody. So once a proposal may have been sent, the
// same command, with the same token, is proposed again until a leader
// answers: if an earlier proposal applied, the FSM recognises the token and
// answers Applied without moving the cursor again, and the GET delivers
// the entry; if none did, the replay is the compare-and-set the first one
// would have been. This goes on past ctx, for at most another
// RequestTimeout, so that the first attempt's timeout cannot end it (only
// a shutdown ends it early).
//
// If the outcome is still unknown then, or the FSM no longer remembers the
// moves since from (Result.TokenForgotten on a replay), the error wraps
// bridge.ErrOutcomeUnknown and says the entry may be consumed (TCP:
// "ERR outcome unknown: ...", NATS: outcome_unknown). Any other error
// means nothing was consumed. (docs/cluster.md, "Reads and the shared
// cursor", explains why the token is not kept for the client's next GET.)
func (s *Server) claim(ctx context.Context, topic string, from uint64) (cluster.Result, error) {
	cmd := cluster.Command{Type: cluster.CmdAdvanceCursor, Topic: topic, From: from, To: from + 1, Token: newToken()}
	// sent: a proposal of cmd may have reached the Raft log. replay: the
	// last attempt was made after one that may have.
	var sent, replay bool
	propose := func(ctx context.Context) (cluster.Result, error) {
		for backoff := 10 * time.Millisecond; ; backoff = min(2*backoff, 500*time.Millisecond) {
			replay = sent
			res, err := s.proposeOnce(ctx, cmd)
			if err == nil {
				return res, nil
			}
			// Only a missing leader proves the proposal was not sent: any
			// other failure may come after it was appended (a forwarded
			// call may even have been answered once and retried).
			sent = sent || !errors.Is(err, cluster.ErrNoLeader)
			if errors.Is(err, cluster.ErrShutdown) || errors.Is(err, bridge.ErrClosed) {
				return res, err
			}
			select {
			case <-time.After(backoff):
			case <-ctx.Done():
				return res, fmt.Errorf("%s: %w (last attempt: %w)", cmd.Type, ctx.Err(), err)
			}
		}
	}
	res, err := propose(ctx)
	if err != nil && sent {
		s.log.Info("GET: cursor move outcome unknown, proposing it again",
			"topic", topic, "from", from, "token", cmd.Token, "err", err)
		rctx, cancel := context.WithTimeout(s.bg, s.cfg.RequestTimeout)
		defer cancel()
		if res, err = propose(rctx); err == nil {
			s.log.Info("GET: cursor move outcome resolved", "topic", topic, "from", from,
				"token", cmd.Token, "applied", res.Applied, "reason", res.Reason)
		}
	}
	unknown := func(why any) error {
		s.log.Warn("GET: cursor move outcome unknown: the entry may be consumed undelivered",
			"topic", topic, "offset", from, "token", cmd.Token, "err", why)
		return errGetOutcomeUnknown(topic, from, why)
	}
	switch {
	case err != nil && sent:
		return res, unknown(err)
	case err != nil:
		return res, err
	case res.TokenForgotten && replay:
		return res, unknown(res.Reason)
	}
	s.setCursorHint(topic, res.Cursor)
	return res, nil
}

// errGetOutcomeUnknown reports a GET whose cursor move past the entry at
// offset from may or may not have applied. The cause is formatted, not
// wrapped: the class of this error is outcome unknown, whatever the cause's
// (a timeout would read as unavailable, which tells a client that nothing
// happened).
func errGetOutcomeUnknown(topic string, from uint64, why any) error {
	return fmt.Errorf("%w: GET %s: the cursor move past offset %d was neither confirmed nor refused by the raft leader: "+
		"the entry at offset %d may have been consumed without being delivered (%v)",
		bridge.ErrOutcomeUnknown, topic, from, from, why)
}

func (s *Server) setCursorHint(topic string, cursor uint64) {
	s.mu.Lock()
	s.mu.cursors[topic] = cursor
	s.mu.Unlock()
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
		switch {
		case segID > t.Open().ID:
			return bridge.Entry{}, false, nil
		case segID != 0 && segID < t.Segments[0].ID:
			return bridge.Entry{}, false, errTrimmed(t, segID)
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
	if now, ok := s.raft.Metadata().Topic(topic); err != nil && ok && segID < now.Segments[0].ID {
		return bridge.Entry{}, false, errTrimmed(now, segID) // deleted while being read
	}
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
			if segID < t.Segments[0].ID {
				return bridge.ReadResponse{}, errTrimmed(t, segID)
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
