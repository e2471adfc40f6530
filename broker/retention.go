package broker

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/walrus-edge/walrus/cluster"
	"github.com/walrus-edge/walrus/storage"
)

// Retention is a topic retention policy: a topic's oldest sealed segments
// are deleted, whole, while any limit is exceeded. Zero fields are no
// limit; the zero Retention keeps everything. The open segment, a segment
// failed over and not yet reported (pending), and every segment after it
// are never deleted, so a limit may be exceeded for a while. docs/retention.md
// explains the policy.
type Retention struct {
	// MaxAge deletes a sealed segment this long after it was sealed.
	MaxAge time.Duration
	// MaxBytes bounds the total size of a topic's sealed segments.
	MaxBytes int64
	// MaxSegments bounds how many sealed segments a topic keeps.
	MaxSegments int
}

// enabled reports whether the policy has a limit.
func (r Retention) enabled() bool { return r.MaxAge > 0 || r.MaxBytes > 0 || r.MaxSegments > 0 }

// firstKept returns the id of the first segment of t that r keeps at now,
// and which limit deletes the ones before it ("" when none is deleted).
// Only the leading run of sealed segments can go.
func (r Retention) firstKept(t *cluster.Topic, now time.Time) (uint64, string) {
	prefix := 0 // the sealed segments before the first open or pending one
	for prefix < len(t.Segments) && t.Segments[prefix].State == cluster.SegmentSealed {
		prefix++
	}
	var sealed int
	var bytes int64
	for _, s := range t.Segments {
		if s.State == cluster.SegmentSealed {
			sealed++
			bytes += s.Bytes
		}
	}
	cut, why := 0, ""
	if r.MaxSegments > 0 && sealed > r.MaxSegments {
		cut, why = sealed-r.MaxSegments, "max segments"
	}
	if r.MaxBytes > 0 {
		n := 0
		for ; n < prefix && bytes > r.MaxBytes; n++ {
			bytes -= t.Segments[n].Bytes
		}
		if n > cut {
			cut, why = n, "max bytes"
		}
	}
	if r.MaxAge > 0 {
		// Segments are sealed in order: the last expired one takes the
		// ones before it along, even those sealed before their time was
		// recorded (SealedAt 0).
		for n := prefix; n > cut; n-- {
			if at := t.Segments[n-1].SealedAt; at != 0 && now.Sub(time.Unix(0, at)) > r.MaxAge {
				cut, why = n, "max age"
				break
			}
		}
	}
	cut = min(cut, prefix)
	if cut == 0 {
		return t.Segments[0].ID, ""
	}
	return t.Segments[cut].ID, why
}

// applyRetention runs on the Raft leader: it trims every topic whose
// oldest sealed segments the policy deletes. Each node then deletes its
// own files of the trimmed segments (deleteTrimmed).
func (s *Server) applyRetention(ctx context.Context) {
	if !s.cfg.Retention.enabled() || !s.raft.IsLeader() {
		return
	}
	m := s.raft.Metadata()
	now := time.Now()
	for _, name := range m.TopicNames() {
		t, _ := m.Topic(name)
		keep, why := s.cfg.Retention.firstKept(t, now)
		if why == "" {
			continue
		}
		res, err := s.propose(ctx, cluster.Command{Type: cluster.CmdTrimTopic, Topic: name, Segment: keep})
		if err != nil {
			if ctx.Err() == nil {
				s.log.Warn("retention: trim did not complete; retrying later", "topic", name, "keep", keep, "err", err)
			}
			continue
		}
		if res.Applied {
			s.log.Info("retention: deleted the oldest segments", "topic", name, "first_kept", keep,
				"first_offset", t.Segments[0].Base, "limit", why)
		}
	}
}

// deleteTrimmed removes this node's files of segments retention trimmed
// from the metadata: those before their topic's first segment. Trims only
// move forward, so a node behind in the log deletes less, never wrongly.
func (s *Server) deleteTrimmed() {
	m := s.raft.Metadata()
	for _, name := range s.store.Topics() {
		t, ok := m.Topic(name)
		if !ok {
			continue // created elsewhere and not applied here yet, or not a topic
		}
		first := t.Segments[0].ID
		for _, info := range s.store.Segments(name) {
			if uint64(info.ID) >= first {
				break
			}
			if err := s.store.DeleteSegment(name, info.ID); err != nil {
				if !errors.Is(err, storage.ErrSegmentNotFound) {
					s.log.Warn("retention: cannot delete a trimmed segment", "topic", name, "segment", info.ID, "err", err)
				}
				continue
			}
			s.metrics.retained.WithLabelValues("segments").Inc()
			s.metrics.retained.WithLabelValues("bytes").Add(float64(info.Bytes))
			s.log.Debug("retention: deleted segment files", "topic", name, "segment", info.ID, "bytes", info.Bytes)
		}
	}
}

// ErrTrimmed reports a read of a segment retention deleted.
var ErrTrimmed = errors.New("deleted by retention")

// errTrimmed reports that topic's segment segID is gone.
func errTrimmed(t *cluster.Topic, segID uint64) error {
	return fmt.Errorf("%w: topic %s segment %d (the topic starts at segment %d, offset %d)",
		ErrTrimmed, t.Name, segID, t.Segments[0].ID, t.FirstOffset())
}
