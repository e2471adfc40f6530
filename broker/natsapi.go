package broker

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"time"

	"github.com/walrus-edge/walrus/bridge"
	"github.com/walrus-edge/walrus/cluster"
	"github.com/walrus-edge/walrus/storage"
)

// natsBackend implements bridge.Backend, the public NATS subject API's view
// of the node (docs/nats.md). Errors are translated to the bridge's public
// sentinels here; the rest of the broker keeps its own.
type natsBackend struct{ s *Server }

var _ bridge.Backend = natsBackend{}

// startAPI subscribes the public subjects and starts the loop that keeps
// the produce subscriptions in line with the metadata.
func (s *Server) startAPI() error {
	api, err := s.bridge.StartAPI(bridge.APIConfig{
		Prefix:          s.cfg.NATSPrefix,
		MaxMessageBytes: s.cfg.NATSMaxMessageBytes,
		DedupWindow:     s.cfg.NATSDedupWindow,
		RequestTimeout:  s.cfg.RequestTimeout,
		Dropped:         func(reason string, n int) { s.metrics.natsDropped.WithLabelValues(reason).Add(float64(n)) },
		Logger:          s.cfg.Logger,
	}, natsBackend{s})
	if err != nil {
		return fmt.Errorf("broker: start nats api: %w", err)
	}
	s.api = api
	s.goFunc(s.leadLoop)
	return nil
}

// leadLoop hands the API the topics whose open segment this node leads,
// with their capture subjects, whenever the metadata changes: only the
// leader subscribes to a topic's publish subjects (see bridge.SetLeading).
func (s *Server) leadLoop() {
	var last map[string][]string
	for {
		changed := s.raft.Changed()
		md := s.raft.Metadata()
		led := map[string][]string{}
		for _, name := range md.TopicNames() {
			if t, ok := md.Topic(name); ok && t.Open().Leader == s.self() && t.Open().State == cluster.SegmentOpen {
				led[name] = t.Capture
			}
		}
		if last == nil || !maps.EqualFunc(led, last, slices.Equal) {
			s.api.SetLeading(led)
			last = led
		}
		select {
		case <-changed:
		case <-s.bg.Done():
			return
		}
	}
}

// publicError translates a broker error into the bridge's public classes.
// produce says whether the call appended: then a timeout or a lost lease
// leaves the outcome unknown rather than merely unavailable.
func publicError(err error, produce bool) error {
	if err == nil {
		return nil
	}
	wrap := func(class error) error { return fmt.Errorf("%w: %w", class, err) }
	switch {
	case errors.Is(err, ErrUnknownTopic), errors.Is(err, bridge.ErrUnknownTopic):
		return wrap(bridge.ErrUnknownTopic)
	case errors.Is(err, ErrInvalidTopic):
		return wrap(bridge.ErrBadRequest)
	case errors.Is(err, ErrTooLarge), errors.Is(err, storage.ErrEntryTooLarge):
		return wrap(bridge.ErrTooLarge)
	case produce && (errors.Is(err, errUnacknowledged) || errors.Is(err, bridge.ErrTimeout) ||
		errors.Is(err, context.DeadlineExceeded) || errors.Is(err, cluster.ErrOutcomeUnknown)):
		return wrap(bridge.ErrOutcomeUnknown)
	case retryable(err), errors.Is(err, bridge.ErrUnreachable), errors.Is(err, bridge.ErrTimeout),
		errors.Is(err, context.DeadlineExceeded), errors.Is(err, storage.ErrClosed), errors.Is(err, cluster.ErrShutdown):
		return wrap(bridge.ErrUnavailable)
	}
	return err
}

// Produce appends recs in order, as many per call as the open segment
// takes (a batch never spans segments).
func (b natsBackend) Produce(ctx context.Context, topic string, recs []bridge.Record) ([]bridge.Position, error) {
	out := make([]bridge.Position, 0, len(recs))
	for len(recs) > 0 {
		t, err := b.s.topic(ctx, topic)
		if err != nil {
			return out, publicError(err, false)
		}
		n := min(uint64(len(recs)), t.Open().MaxEntries)
		seg, res, err := b.s.put(ctx, topic, fromBridgeRecords(recs[:n]))
		if err != nil {
			return out, publicError(err, true)
		}
		for i := range n {
			out = append(out, bridge.Position{Segment: seg, Offset: res.FirstOffset + i})
		}
		recs = recs[n:]
	}
	return out, nil
}

// Next is the shared cursor's GET.
func (b natsBackend) Next(ctx context.Context, topic string) (bridge.Entry, bool, error) {
	e, ok, err := b.s.Get(ctx, topic)
	return e, ok, publicError(err, false)
}

// ReadFrom reads by topic offset, waiting up to wait for a first entry.
// It wakes on this node's own appends and polls segments led elsewhere.
func (b natsBackend) ReadFrom(ctx context.Context, topic string, from uint64, maxEntries int, maxBytes int64, wait time.Duration) ([]bridge.Entry, uint64, error) {
	deadline := time.Now().Add(wait)
	poll := 10 * time.Millisecond
	for {
		appended := b.s.appended.wait(topic)
		es, next, err := b.s.readFrom(ctx, topic, from, maxEntries, maxBytes)
		left := time.Until(deadline)
		if err != nil || len(es) > 0 || left <= 0 {
			return es, next, publicError(err, false)
		}
		timer := time.NewTimer(min(poll, left))
		select {
		case <-appended:
		case <-timer.C:
		case <-ctx.Done():
		}
		timer.Stop()
		if ctx.Err() != nil {
			return nil, from, nil // the wait is over: nothing arrived
		}
		poll = min(2*poll, 100*time.Millisecond)
	}
}

// OpenLeader returns the node leading topic's open segment.
func (b natsBackend) OpenLeader(topic string) (uint64, bool) {
	t, ok := b.s.raft.Metadata().Topic(topic)
	if !ok {
		return 0, false
	}
	return uint64(t.Open().Leader), true
}

// recentChunk is how many entries Recent reads per step backwards.
const recentChunk = 1024

// Recent returns topic's entries stored at or after since, oldest first:
// at most maxEntries, and reading stops once about maxBytes of payload are
// read (the newest are kept). It reads the log backwards from its end,
// which only the leader of the open segment knows; elsewhere it returns
// nothing. On an error (a failed-over segment not reported yet, a node
// down) it returns what it read with the error.
func (b natsBackend) Recent(ctx context.Context, topic string, since time.Time, maxEntries int, maxBytes int64) ([]bridge.Entry, error) {
	t, ok := b.s.raft.Metadata().Topic(topic)
	if !ok {
		return nil, publicError(unknownTopic(topic), false)
	}
	open := t.Open()
	if open.Leader != b.s.self() {
		return nil, nil
	}
	end := open.Base
	if info, err := b.s.store.Segment(topic, storage.SegmentID(open.ID)); err == nil {
		end += info.Count
	}
	cut := since.UnixNano()
	var chunks [][]bridge.Entry // newest chunk first
	total, bytes := 0, int64(0)
	first := t.FirstOffset() // retention deleted what is before it
	for hi := end; hi > first && total < maxEntries && bytes < maxBytes; {
		lo := hi - min(hi-first, recentChunk)
		var chunk []bridge.Entry
		for off := lo; off < hi; {
			es, next, err := b.s.readFrom(ctx, topic, off, int(hi-off), maxBytes-bytes)
			if err != nil {
				return joinNewestFirst(chunks, chunk, maxEntries), publicError(err, false)
			}
			for _, e := range es {
				if e.Offset < hi {
					chunk = append(chunk, e)
					bytes += int64(len(e.Value))
				}
			}
			if len(es) == 0 || next <= off {
				break
			}
			off = next
		}
		older := len(chunk) > 0 && chunk[0].Timestamp < cut
		i := 0
		for i < len(chunk) && chunk[i].Timestamp < cut {
			i++
		}
		chunks = append(chunks, chunk[i:])
		total += len(chunk) - i
		if older {
			break
		}
		hi = lo
	}
	return joinNewestFirst(chunks, nil, maxEntries), nil
}

// joinNewestFirst puts chunks read backwards (and a partial chunk read
// last, the oldest) back in log order, keeping the newest max entries.
func joinNewestFirst(chunks [][]bridge.Entry, partial []bridge.Entry, max int) []bridge.Entry {
	var out []bridge.Entry
	if partial != nil {
		out = append(out, partial...)
	}
	for i := len(chunks) - 1; i >= 0; i-- {
		out = append(out, chunks[i]...)
	}
	if len(out) > max {
		out = out[len(out)-max:]
	}
	return out
}

// GroupOffset returns a group's committed offset. It reads through the
// Raft log (a commit to offset 0 never applies and answers the current
// offset), so a fetch handled by any node sees a commit handled by another.
func (b natsBackend) GroupOffset(ctx context.Context, topic, group string) (uint64, error) {
	if _, err := b.s.topic(ctx, topic); err != nil {
		return 0, publicError(err, false)
	}
	res, err := b.s.commit(ctx, cluster.Command{Type: cluster.CmdCommitGroup, Topic: topic, Group: group}, false)
	if err != nil {
		return 0, publicError(err, false)
	}
	return res.Cursor, nil
}

// CommitGroup moves a group forward and waits until this node's metadata
// shows it, so that a fetch through this node right after sees the commit.
func (b natsBackend) CommitGroup(ctx context.Context, topic, group string, offset uint64) (uint64, error) {
	if _, err := b.s.topic(ctx, topic); err != nil {
		return 0, publicError(err, false)
	}
	res, err := b.s.propose(ctx, cluster.Command{Type: cluster.CmdCommitGroup, Topic: topic, Group: group, Offset: offset})
	if err != nil {
		return 0, publicError(err, false)
	}
	return res.Cursor, nil
}

// Register creates the topic.
func (b natsBackend) Register(ctx context.Context, topic string) error {
	return publicError(b.s.Register(ctx, topic), false)
}

// State is the STATE JSON.
func (b natsBackend) State(topic string) ([]byte, error) {
	st, err := b.s.State(topic)
	return st, publicError(err, false)
}

// Metrics is the METRICS JSON.
func (b natsBackend) Metrics() ([]byte, error) { return b.s.Metrics() }

// SetCapture stores the topic's capture subjects in the metadata.
func (b natsBackend) SetCapture(ctx context.Context, topic string, subjects []string) error {
	if _, err := b.s.topic(ctx, topic); err != nil {
		return publicError(err, false)
	}
	_, err := b.s.propose(ctx, cluster.Command{Type: cluster.CmdSetCapture, Topic: topic, Subjects: subjects})
	return publicError(err, false)
}

// readFrom reads up to maxEntries entries (about maxBytes of payload, at
// least one) from topic offset from, across segments: it skips the end of
// sealed segments and the offsets a failover left unused, and stops at the
// open segment's end or before a pending segment. An offset retention
// deleted reads from the first one kept. next is the offset after the last
// entry returned (or from).
func (s *Server) readFrom(ctx context.Context, topic string, from uint64, maxEntries int, maxBytes int64) ([]bridge.Entry, uint64, error) {
	ctx, cancel := context.WithTimeout(ctx, s.cfg.RequestTimeout)
	defer cancel()
	for {
		t, err := s.topic(ctx, topic)
		if err != nil {
			return nil, from, err
		}
		out, next, err := s.readTopic(ctx, t, from, maxEntries, maxBytes)
		if err != nil && len(out) == 0 && s.trimmedSince(t) {
			continue // retention deleted a segment meanwhile: read from what is left
		}
		return out, next, err
	}
}

// trimmedSince reports whether retention trimmed t since this metadata.
func (s *Server) trimmedSince(t *cluster.Topic) bool {
	now, ok := s.raft.Metadata().Topic(t.Name)
	return ok && now.Segments[0].ID > t.Segments[0].ID
}

// readTopic is readFrom on one version of t's metadata.
func (s *Server) readTopic(ctx context.Context, t *cluster.Topic, from uint64, maxEntries int, maxBytes int64) ([]bridge.Entry, uint64, error) {
	topic := t.Name
	var out []bridge.Entry
	off, bytes := max(from, t.FirstOffset()), int64(0)
	if off != from {
		s.log.Debug("read below the first offset retention kept", "topic", topic, "from", from, "first", off)
	}
	for len(out) < maxEntries && bytes < maxBytes {
		seg := t.SegmentFor(off)
		if seg.State == cluster.SegmentPending {
			if len(out) == 0 {
				return nil, from, fmt.Errorf("%w: topic %s segment %d was failed over from node %d, which has not reported it yet",
					ErrUnavailable, topic, seg.ID, seg.Leader)
			}
			break
		}
		if seg.State == cluster.SegmentSealed && off >= seg.End() {
			nextSeg, ok := t.Segment(seg.ID + 1)
			if !ok {
				break
			}
			off = max(off, nextSeg.Base)
			continue
		}
		resp, err := s.readAt(ctx, topic, seg, off-seg.Base, storage.ReadLimits{
			MaxEntries: maxEntries - len(out), MaxBytes: maxBytes - bytes,
		})
		if err != nil {
			if len(out) > 0 {
				break // return what was read; the next call reports it
			}
			return nil, from, err
		}
		for _, e := range resp.Entries {
			out = append(out, e)
			bytes += int64(len(e.Value))
			off = e.Offset + 1
		}
		if seg.State == cluster.SegmentOpen || len(resp.Entries) == 0 {
			break // the end of the log (or of a segment being sealed)
		}
	}
	return out, off, nil
}
