package broker

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/walrus-edge/walrus/bridge"
	"github.com/walrus-edge/walrus/cluster"
	"github.com/walrus-edge/walrus/storage"
)

// validTopic reports whether name can be a topic: 1 to 255 bytes of UTF-8
// without spaces or control characters (the protocol separates arguments
// with spaces).
func validTopic(name string) bool {
	if name == "" || len(name) > storage.MaxTopicLen || !utf8.ValidString(name) {
		return false
	}
	for _, r := range name {
		if unicode.IsSpace(r) || unicode.IsControl(r) {
			return false
		}
	}
	return true
}

// Register creates topic if it does not exist. It returns once this node's
// metadata knows the topic, so that a PUT right after it on this node works
// (the original could answer "unknown topic" here), and once every node's
// NATS server routes the topic's publish subject, so that a NATS publish
// through any node right after it works too.
func (s *Server) Register(ctx context.Context, topic string) error {
	if !validTopic(topic) {
		return fmt.Errorf("%w: %q", ErrInvalidTopic, topic)
	}
	if _, ok := s.raft.Metadata().Topic(topic); !ok {
		_, err := s.propose(ctx, cluster.Command{
			Type: cluster.CmdCreateTopic, Topic: topic, MaxEntries: s.cfg.MaxSegmentEntries,
		})
		if err != nil {
			return err
		}
	}
	if s.api != nil {
		s.api.WaitPublishable(ctx, topic)
	}
	return nil
}

// Put appends records to topic's open segment, on whichever node leads it,
// and returns when they are durable there. Stale routing (a rollover or a
// failover under way) is retried within ctx and RequestTimeout.
func (s *Server) Put(ctx context.Context, topic string, recs []storage.Record) (bridge.AppendResponse, error) {
	_, res, err := s.put(ctx, topic, recs)
	return res, err
}

// put is Put that also returns the segment the records went to.
func (s *Server) put(ctx context.Context, topic string, recs []storage.Record) (uint64, bridge.AppendResponse, error) {
	ctx, cancel := context.WithTimeout(ctx, s.cfg.RequestTimeout)
	defer cancel()
	var last error
	for wait := 5 * time.Millisecond; ; wait = min(2*wait, 200*time.Millisecond) {
		t, err := s.topic(ctx, topic)
		if err != nil {
			return 0, bridge.AppendResponse{}, err
		}
		open := t.Open()
		if uint64(len(recs)) > open.MaxEntries {
			return 0, bridge.AppendResponse{}, fmt.Errorf("%w: %d records, %d per segment", ErrTooLarge, len(recs), open.MaxEntries)
		}
		var res bridge.AppendResponse
		if open.Leader == s.self() {
			res, err = s.appendLocal(ctx, topic, open.ID, open.Epoch, recs)
		} else {
			// Stop forwarding to a leader that does not answer once the
			// segment is no longer open there (a failover): the loop then
			// follows the metadata to the next segment.
			stillOpen := func() bool {
				t, ok := s.raft.Metadata().Topic(topic)
				return ok && t.Open() == open
			}
			res, err = s.bridge.Append(ctx, uint64(open.Leader), bridge.AppendRequest{
				Topic: topic, Segment: open.ID, Epoch: open.Epoch, Records: toBridgeRecords(recs),
			}, bridge.RetryWhile(stillOpen))
		}
		if err == nil || !retryable(err) {
			return open.ID, res, err
		}
		last = err
		if err := s.waitChange(ctx, wait); err != nil {
			return 0, bridge.AppendResponse{}, fmt.Errorf("put %s: %w (last attempt: %w)", topic, err, last)
		}
	}
}

// topic returns the topic's metadata. A topic this node does not know yet
// may just have been created through another node: wait briefly for the
// metadata to catch up before answering "unknown topic".
func (s *Server) topic(ctx context.Context, name string) (*cluster.Topic, error) {
	deadline := time.Now().Add(s.cfg.RequestTimeout / 5)
	for {
		changed := s.raft.Changed()
		if t, ok := s.raft.Metadata().Topic(name); ok {
			return t, nil
		}
		left := time.Until(deadline)
		if left <= 0 {
			return nil, unknownTopic(name)
		}
		select {
		case <-changed:
		case <-time.After(left):
		case <-ctx.Done():
			return nil, unknownTopic(name)
		}
	}
}

// waitChange waits for the next metadata change, at most d.
func (s *Server) waitChange(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-s.raft.Changed():
		return nil
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// appendLocal appends to a segment this node leads. It checks the metadata
// (the segment is open, here, at this epoch), the lease, and the segment's
// entry limit; storage fences the epoch again. It acknowledges only if the
// lease still holds after the durable write.
func (s *Server) appendLocal(ctx context.Context, topic string, segID, epoch uint64, recs []storage.Record) (bridge.AppendResponse, error) {
	// The epoch is the Raft index that opened the segment: a sender that
	// saw it may be ahead of this node's metadata. Catch up before judging.
	if err := s.catchUp(ctx, epoch); err != nil {
		return bridge.AppendResponse{}, err
	}
	t, ok := s.raft.Metadata().Topic(topic)
	if !ok {
		return bridge.AppendResponse{}, unknownTopic(topic)
	}
	open := t.Open()
	if open.ID != segID || open.Epoch != epoch || open.Leader != s.self() {
		return bridge.AppendResponse{}, fmt.Errorf("%w: topic %s segment %d at epoch %d (open: %d at epoch %d on node %d)",
			ErrNotSegmentLeader, topic, segID, epoch, open.ID, open.Epoch, open.Leader)
	}
	if !s.leaseValid() {
		return bridge.AppendResponse{}, ErrNoLease
	}
	info, err := s.ensureSegment(topic, open)
	if err != nil {
		return bridge.AppendResponse{}, err
	}
	if info.Sealed {
		s.triggerRollover(topic)
		return bridge.AppendResponse{}, fmt.Errorf("%w: topic %s segment %d", ErrRollingOver, topic, segID)
	}
	n := uint64(len(recs))
	held, ok := s.slots.reserve(s.store, topic, segID, n, open.MaxEntries)
	if !ok {
		s.triggerRollover(topic)
		return bridge.AppendResponse{}, fmt.Errorf("%w: topic %s segment %d holds %d of %d entries (stored or being stored)",
			ErrRollingOver, topic, segID, held, open.MaxEntries)
	}
	res, err := s.store.Append(ctx, topic, storage.SegmentID(segID), epoch, recs)
	if ctx.Err() == nil {
		// Otherwise the write may still land: the reservation stays until
		// the segment is sealed (slots.forget).
		s.slots.release(topic, segID, n)
	}
	if err != nil {
		if errors.Is(err, storage.ErrSealed) || errors.Is(err, storage.ErrSegmentFull) {
			s.triggerRollover(topic)
		}
		return bridge.AppendResponse{}, err
	}
	// Stored: wake long polls and publish to live tails, whether or not
	// the append is acknowledged below (readers will see it either way).
	s.tails.appended(topic, segID, res.FirstIndex, uint64(res.FirstOffset), recs)
	s.appended.notify(topic)
	if !s.leaseValid() {
		// Durable but not acknowledged: the outcome is unknown to the client.
		// Not ErrNoLease, which Put and the bridge retry: a retry would write
		// the records a second time once the lease is back.
		return bridge.AppendResponse{}, errUnacknowledged
	}
	s.metrics.appended(len(recs))
	count := res.FirstIndex + uint64(len(recs))
	if count >= open.MaxEntries || s.segmentBytes(topic, segID) >= s.cfg.MaxSegmentBytes {
		// As the original, the append that fills a segment rolls it over
		// before it answers, so STATE right after it shows the new segment.
		// The append is acknowledged either way; the monitor retries a
		// rollover that did not complete.
		s.rolloverOnce(ctx, topic)
	}
	return bridge.AppendResponse{FirstIndex: res.FirstIndex, FirstOffset: uint64(res.FirstOffset)}, nil
}

// catchUp waits (briefly) until this node's metadata has applied index.
func (s *Server) catchUp(ctx context.Context, index uint64) error {
	if s.raft.Metadata().Index >= index {
		return nil
	}
	ctx, cancel := context.WithTimeout(ctx, s.cfg.RequestTimeout/5)
	defer cancel()
	if err := s.raft.WaitIndex(ctx, index); err != nil {
		return fmt.Errorf("%w: metadata behind index %d: %w", ErrUnavailable, index, err)
	}
	return nil
}

// ensureSegment creates the storage segment of an open segment this node
// leads (lazily, at its first append) and returns its state.
func (s *Server) ensureSegment(topic string, seg cluster.Segment) (storage.SegmentInfo, error) {
	info, err := s.store.Segment(topic, storage.SegmentID(seg.ID))
	if err == nil {
		return info, nil
	}
	if !errors.Is(err, storage.ErrSegmentNotFound) {
		return info, err
	}
	s.segMu.Lock()
	defer s.segMu.Unlock()
	// The caller judged seg on metadata read before: since then it may
	// have been sealed, trimmed by retention and its files deleted. Create
	// it only if it is still the open segment here.
	if t, ok := s.raft.Metadata().Topic(topic); !ok || t.Open() != seg {
		return info, fmt.Errorf("%w: topic %s segment %d is no longer open on this node", ErrRollingOver, topic, seg.ID)
	}
	if err := s.store.CreateSegment(topic, storage.SegmentID(seg.ID), seg.Epoch, storage.Offset(seg.Base)); err != nil {
		if !errors.Is(err, storage.ErrSegmentExists) {
			return info, err
		}
		// A concurrent append created the segment after the lookup above,
		// and appends may already have filled and sealed it: the caller
		// sees Sealed and retries on the next segment. An open segment
		// that differs from the metadata stays an error.
		if info, ierr := s.store.Segment(topic, storage.SegmentID(seg.ID)); ierr == nil && info.Sealed {
			return info, nil
		}
		return info, err
	}
	return s.store.Segment(topic, storage.SegmentID(seg.ID))
}

func (s *Server) segmentBytes(topic string, id uint64) int64 {
	info, err := s.store.Segment(topic, storage.SegmentID(id))
	if err != nil {
		return 0
	}
	return info.Bytes
}

// leaseValid reports whether this node may acknowledge appends: it is the
// Raft leader, or
//
//   - it heard from the Raft leader within LeaseTimeout (Raft's last
//     contact), and
//   - within LeaseTimeout it sent a heartbeat (heartbeatLoop) that the Raft
//     leader answered while its replication to this node worked, and this
//     node has since applied the leader's last log index of that answer.
//
// A node cut off from the quorum stops acknowledging before the Raft leader
// may fail its segments over (FailoverTimeout > LeaseTimeout). The second
// condition keeps it from acknowledging once the cut heals but before it
// has learnt what happened meanwhile: Raft heartbeats reach a returning
// follower before the log entries it missed, so its last contact is fresh
// while its metadata may still name it the leader of a segment that was
// failed over. Any failover proposed before the leader answered is at or
// below that answer's index.
func (s *Server) leaseValid() bool {
	if s.raft.IsLeader() {
		return true
	}
	if time.Since(s.raft.LastContact()) >= s.cfg.LeaseTimeout {
		return false
	}
	// Raft's applied index, not the metadata's: the leader's last entry is
	// often a no-op (a new term) or a configuration change, which the
	// metadata never counts.
	at := s.lease.caughtUp(s.raft.AppliedIndex())
	return time.Since(at) < s.cfg.LeaseTimeout
}

// writeLease tracks the heartbeat answers that renew the write lease.
type writeLease struct {
	mu      sync.Mutex
	at      time.Time      // send time of the newest answered heartbeat whose index is applied
	pending []leaseRenewal // answered, index not applied yet; oldest first
}

// leaseRenewal is an answered heartbeat: sent at sent, it renews the lease
// once the node has applied index.
type leaseRenewal struct {
	index uint64
	sent  time.Time
}

// maxPendingRenewals bounds pending: under a steady write load the applied
// index trails the leader's by a little, so a few answers wait at a time.
const maxPendingRenewals = 16

// heard records an answered heartbeat.
func (l *writeLease) heard(index uint64, sent time.Time) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if len(l.pending) == maxPendingRenewals {
		l.pending = l.pending[1:]
	}
	l.pending = append(l.pending, leaseRenewal{index: index, sent: sent})
}

// caughtUp returns the send time of the newest answered heartbeat whose
// index is at most applied.
func (l *writeLease) caughtUp(applied uint64) time.Time {
	l.mu.Lock()
	defer l.mu.Unlock()
	keep := l.pending[:0]
	for _, r := range l.pending {
		switch {
		case r.index > applied:
			keep = append(keep, r)
		case r.sent.After(l.at):
			l.at = r.sent
		}
	}
	l.pending = keep
	return l.at
}

// triggerRollover starts a rollover of topic's open segment in the
// background if this node leads it and none is under way.
func (s *Server) triggerRollover(topic string) {
	if !s.claimRollover(topic) {
		return
	}
	s.goFunc(func() { s.runRollover(s.bg, topic) })
}

// rolloverOnce rolls topic's open segment over in the caller's goroutine,
// unless a rollover is already under way.
func (s *Server) rolloverOnce(ctx context.Context, topic string) {
	if s.claimRollover(topic) {
		s.runRollover(ctx, topic)
	}
}

// claimRollover marks a rollover of topic as under way; false if one is.
func (s *Server) claimRollover(topic string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.mu.rolling[topic] || s.mu.shutdown {
		return false
	}
	s.mu.rolling[topic] = true
	return true
}

func (s *Server) runRollover(ctx context.Context, topic string) {
	defer func() {
		s.mu.Lock()
		delete(s.mu.rolling, topic)
		s.mu.Unlock()
	}()
	if err := s.rollover(ctx, topic); err != nil && s.bg.Err() == nil {
		s.log.Warn("rollover did not complete; the monitor retries", "topic", topic, "err", err)
	}
}

// rollover seals the open segment this node leads — storage fences later
// appends and gives the durable count — and proposes the next segment. The
// Raft leader picks the next leader round robin among the live voters. If a
// failover won the race, the count finalizes the pending segment instead.
func (s *Server) rollover(ctx context.Context, topic string) error {
	t, ok := s.raft.Metadata().Topic(topic)
	if !ok {
		return nil
	}
	open := t.Open()
	if open.Leader != s.self() {
		return nil
	}
	if _, err := s.ensureSegment(topic, open); err != nil {
		return err
	}
	count, err := s.store.Seal(ctx, topic, storage.SegmentID(open.ID), open.Epoch)
	if err != nil {
		return fmt.Errorf("seal topic %s segment %d: %w", topic, open.ID, err)
	}
	s.slots.forget(topic, open.ID)
	res, err := s.propose(ctx, cluster.Command{
		Type: cluster.CmdRollover, Topic: topic, Segment: open.ID, Epoch: open.Epoch,
		Count: count, Bytes: s.segmentBytes(topic, open.ID), Time: time.Now().UnixNano(),
		MaxEntries: s.cfg.MaxSegmentEntries,
	})
	if err != nil {
		return err
	}
	if !res.Applied {
		return s.finalizeIfPending(ctx, topic, open.ID, open.Epoch, count)
	}
	s.metrics.rollovers.Inc()
	s.log.Info("rolled over", "topic", topic, "sealed", open.ID, "count", count, "next", res.Segment)
	return nil
}

// finalizeIfPending reports the count of a segment that was failed over
// while this node led it.
func (s *Server) finalizeIfPending(ctx context.Context, topic string, segID, epoch, count uint64) error {
	t, ok := s.raft.Metadata().Topic(topic)
	if !ok {
		return nil
	}
	seg, ok := t.Segment(segID)
	if !ok || seg.State != cluster.SegmentPending || seg.Epoch != epoch {
		return nil
	}
	res, err := s.propose(ctx, cluster.Command{
		Type: cluster.CmdFinalizeSeal, Topic: topic, Segment: segID, Epoch: epoch, Count: count,
		Bytes: s.segmentBytes(topic, segID), Time: time.Now().UnixNano(),
	})
	if err == nil && res.Applied {
		s.log.Info("finalized a failed-over segment", "topic", topic, "segment", segID, "count", count)
	}
	return err
}

func toBridgeRecords(recs []storage.Record) []bridge.Record {
	out := make([]bridge.Record, len(recs))
	for i, r := range recs {
		out[i] = bridge.Record{Timestamp: r.Timestamp, Value: r.Value}
		if len(r.Headers) > 0 {
			out[i].Headers = make([]bridge.Header, len(r.Headers))
			for j, h := range r.Headers {
				out[i].Headers[j] = bridge.Header{Key: h.Key, Value: h.Value}
			}
		}
	}
	return out
}

func fromBridgeRecords(recs []bridge.Record) []storage.Record {
	out := make([]storage.Record, len(recs))
	for i, r := range recs {
		out[i] = storage.Record{Timestamp: r.Timestamp, Value: r.Value}
		if len(r.Headers) > 0 {
			out[i].Headers = make([]storage.Header, len(r.Headers))
			for j, h := range r.Headers {
				out[i].Headers[j] = storage.Header{Key: h.Key, Value: h.Value}
			}
		}
	}
	return out
}

// entrySlots keeps a segment within its entry limit under concurrent
// appends: each append reserves its entries before it writes and releases
// them once the write returned. A check of the stored count alone would let
// appends that are in flight together overfill the segment, and a failover
// reserves exactly MaxEntries offsets for it: the extra entries' offsets
// would overlap the next segment's, and its count would never finalize.
type entrySlots struct {
	mu       sync.Mutex
	inflight map[segmentKey]uint64 // entries reserved by appends under way
}

type segmentKey struct {
	topic string
	id    uint64
}

// reserve reserves n entries of segment id if its stored entries, those
// being stored and n fit in limit. It reports the entries held otherwise.
// The stored count is read under the lock: an append adds its entries to it
// before it releases its reservation, so the sum never falls short.
func (e *entrySlots) reserve(store *storage.Log, topic string, id, n, limit uint64) (uint64, bool) {
	e.mu.Lock()
	defer e.mu.Unlock()
	var stored uint64
	if info, err := store.Segment(topic, storage.SegmentID(id)); err == nil {
		stored = info.Count
	}
	k := segmentKey{topic, id}
	held := stored + e.inflight[k]
	if held+n > limit {
		return held, false
	}
	if e.inflight == nil {
		e.inflight = make(map[segmentKey]uint64)
	}
	e.inflight[k] += n
	return held, true
}

// release returns n entries reserved by an append that has returned.
func (e *entrySlots) release(topic string, id, n uint64) {
	e.mu.Lock()
	defer e.mu.Unlock()
	k := segmentKey{topic, id}
	if e.inflight[k] <= n { // forgotten meanwhile, or the last one
		delete(e.inflight, k)
		return
	}
	e.inflight[k] -= n
}

// forget drops the reservations of a segment sealed in storage: no append
// can land in it any more.
func (e *entrySlots) forget(topic string, id uint64) {
	e.mu.Lock()
	defer e.mu.Unlock()
	delete(e.inflight, segmentKey{topic, id})
}
