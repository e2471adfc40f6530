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
// Only the leading run of sealed segments can go: blocked is the pending
// segment that ends it when r would delete it or more (0 otherwise).
func (r Retention) firstKept(t *cluster.Topic, now time.Time) (keep uint64, why string, blocked uint64) {
	last := len(t.Segments) - 1 // the open segment, never deleted
	prefix := 0                 // the sealed segments before the first open or pending one
	for prefix < last && t.Segments[prefix].State == cluster.SegmentSealed {
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
	// cut is how many leading segments the limits delete, up to the open
	// one; a pending segment caps it below.
	cut := 0
	if r.MaxSegments > 0 && sealed > r.MaxSegments {
		n, extra := 0, sealed-r.MaxSegments
		for ; n < last && extra > 0; n++ {
			if t.Segments[n].State == cluster.SegmentSealed {
				extra--
			}
		}
		cut, why = n, "max segments"
	}
	if r.MaxBytes > 0 {
		n := 0
		for ; n < last && bytes > r.MaxBytes; n++ {
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
		for n := last; n > cut; n-- {
			if at := t.Segments[n-1].SealedAt; at != 0 && now.Sub(time.Unix(0, at)) > r.MaxAge {
				cut, why = n, "max age"
				break
			}
		}
	}
	if cut > prefix {
		blocked, cut = t.Segments[prefix].ID, prefix
	}
	if cut == 0 {
		return t.Segments[0].ID, "", blocked
	}
	return t.Segments[cut].ID, why, blocked
}

// applyRetention runs on the Raft leader: it trims every topic whose
// oldest sealed segments the policy deletes. Each node then deletes its
// own files of the trimmed segments (deleteTrimmed). It stops as soon as
// this node no longer leads Raft (it never forwards its policy to another
// leader), and within RequestTimeout, so that it cannot hold up the
// monitor's rollovers.
func (s *Server) applyRetention(ctx context.Context) {
	if !s.cfg.Retention.enabled() {
		return
	}
	ctx, cancel := context.WithTimeout(ctx, s.cfg.RequestTimeout)
	defer cancel()
	m := s.raft.Metadata()
	now := time.Now()
	for _, name := range m.TopicNames() {
		if !s.raft.IsLeader() || ctx.Err() != nil {
			return
		}
		t, _ := m.Topic(name)
		keep, why, blocked := s.cfg.Retention.firstKept(t, now)
		s.noteBlocked(t, blocked)
		if why == "" {
			continue
		}
		res, err := s.proposeAsLeader(ctx, cluster.Command{Type: cluster.CmdTrimTopic, Topic: name, Segment: keep})
		if err != nil {
			s.log.Warn("retention: trim did not complete; retrying later", "topic", name, "keep", keep, "err", err)
			continue
		}
		if res.Applied {
			kept, _ := t.Segment(keep)
			s.log.Info("retention: deleted the oldest segments", "topic", name, "first_segment", keep,
				"first_offset", kept.Base, "limit", why)
		}
	}
}

// noteBlocked logs, once per segment, a pending segment that keeps
// retention from deleting the sealed segments after it: its node must
// come back and report it first.
func (s *Server) noteBlocked(t *cluster.Topic, blocked uint64) {
	seen := s.trims[t.Name]
	if blocked == 0 || seen.blockedBy == blocked {
		return
	}
	seg, _ := t.Segment(blocked)
	s.log.Warn("retention: a failed-over segment waits for its node; nothing after it is deleted until the node reports it",
		"topic", t.Name, "segment", blocked, "node", seg.Leader)
	seen.blockedBy = blocked
	s.trims[t.Name] = seen
}

// trimSeen is what deleteTrimmed remembers of a topic's latest trim.
type trimSeen struct {
	first     uint64    // the topic's first segment in the metadata
	since     time.Time // when this node first saw it there
	blockedBy uint64    // the pending segment last logged by noteBlocked
}

// deleteTrimmed removes this node's files of segments retention trimmed
// from the metadata: those before their topic's first segment. Trims only
// move forward, so a node behind in the log deletes less, never wrongly.
//
// It waits RequestTimeout after it first sees a trim: a read that another
// node began on metadata from before the trim (applied there a moment
// later than here) has finished or timed out by then, and gets its entries
// rather than an error.
func (s *Server) deleteTrimmed() {
	s.segMu.Lock()
	defer s.segMu.Unlock()
	m := s.raft.Metadata()
	now := time.Now()
	for _, name := range s.store.Topics() {
		t, ok := m.Topic(name)
		if !ok {
			continue // created elsewhere and not applied here yet, or not a topic
		}
		first := t.Segments[0].ID
		seen := s.trims[name]
		if seen.first != first {
			seen.first, seen.since = first, now
			s.trims[name] = seen
		}
		if now.Sub(seen.since) < s.cfg.RequestTimeout {
			continue
		}
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
