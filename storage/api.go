package storage

import (
	"context"
	"errors"
	"fmt"
	"os"
	"slices"
	"sync"
	"time"
)

// AppendResult locates the entries of a successful Append.
type AppendResult struct {
	Segment     SegmentID
	FirstIndex  uint64 // index of the first entry within the segment
	FirstOffset Offset // topic offset of the first entry
	Count       int
}

// Append appends recs, all or nothing, to the open segment id of topic. epoch
// must be the segment's epoch: a writer holding a stale lease is refused with
// ErrEpochMismatch. Append returns when the entries are as durable as the
// fsync policy promises (on disk under FsyncAlways) and visible to readers.
//
// ctx bounds the wait; if it ends after the batch was handed to the writer,
// Append returns ctx's error and the batch may still be written.
func (l *Log) Append(ctx context.Context, topic string, id SegmentID, epoch uint64, recs []Record) (AppendResult, error) {
	s, err := l.segment(topic, id)
	if err != nil {
		return AppendResult{}, err
	}
	if epoch != s.epoch {
		return AppendResult{}, fmt.Errorf("%w: topic %q segment %d is at epoch %d, append carries %d",
			ErrEpochMismatch, topic, id, s.epoch, epoch)
	}
	buf, err := l.encode(recs)
	if err != nil {
		return AppendResult{}, fmt.Errorf("append to topic %q segment %d: %w", topic, id, err)
	}
	r := requestPool.Get().(*request)
	r.kind, r.buf, r.n = reqAppend, *buf, len(recs)
	rep, err := s.call(ctx, r)
	if err != nil {
		return AppendResult{}, err // r and buf may still be in the writer's hands
	}
	*buf = r.buf[:0]
	r.buf = nil
	requestPool.Put(r)
	putBuf(buf)
	if rep.err != nil {
		return AppendResult{}, rep.err
	}
	return AppendResult{Segment: id, FirstIndex: rep.first, FirstOffset: s.base + Offset(rep.first), Count: len(recs)}, nil
}

// encode validates recs and encodes them into one pooled buffer.
func (l *Log) encode(recs []Record) (*[]byte, error) {
	if len(recs) == 0 {
		return nil, ErrEmptyBatch
	}
	var total int64
	for i := range recs {
		if err := validateRecord(&recs[i]); err != nil {
			return nil, fmt.Errorf("record %d: %w", i, err)
		}
		n := frameSize(&recs[i])
		if n > l.opts.MaxEntryBytes {
			return nil, fmt.Errorf("%w: record %d encodes to %d bytes (max %d)", ErrEntryTooLarge, i, n, l.opts.MaxEntryBytes)
		}
		total += n
	}
	if total > l.opts.MaxBatchBytes {
		return nil, fmt.Errorf("%w: %d bytes (max %d)", ErrBatchTooLarge, total, l.opts.MaxBatchBytes)
	}
	buf := getBuf(int(total))
	ts := nowNanos()
	for i := range recs {
		var flags uint16
		if i < len(recs)-1 {
			flags = frameFlagMore // recovery drops an Append that did not land whole
		}
		*buf = appendFrameFlags(*buf, &recs[i], ts, flags)
	}
	return buf, nil
}

// call hands r to the segment's writer and waits for the reply.
func (s *segment) call(ctx context.Context, r *request) (reply, error) {
	if s.reqs == nil {
		return reply{}, s.stoppedErr()
	}
	select {
	case s.reqs <- r:
	case <-s.done:
		return reply{}, s.stoppedErr()
	case <-ctx.Done():
		return reply{}, ctx.Err()
	}
	select {
	case rep := <-r.reply:
		return rep, nil
	case <-s.done:
		// The writer may have answered just before exiting.
		select {
		case rep := <-r.reply:
			return rep, nil
		default:
			return reply{}, s.stoppedErr()
		}
	case <-ctx.Done():
		return reply{}, fmt.Errorf("outcome unknown: %w", ctx.Err())
	}
}

// Seal closes segment id of topic to appends and returns its entry count: the
// entries durably written, counted by the log itself. The seal is durable when
// Seal returns, whatever the fsync policy. Sealing a sealed segment at the
// same epoch returns its count again.
func (l *Log) Seal(ctx context.Context, topic string, id SegmentID, epoch uint64) (uint64, error) {
	s, err := l.segment(topic, id)
	if err != nil {
		return 0, err
	}
	if epoch != s.epoch {
		return 0, fmt.Errorf("%w: topic %q segment %d is at epoch %d, seal carries %d",
			ErrEpochMismatch, topic, id, s.epoch, epoch)
	}
	if count, sealed := s.sealedCount(); sealed {
		return count, nil
	}
	rep, err := s.call(ctx, &request{kind: reqSeal, reply: make(chan reply, 1)})
	if err == nil {
		err = rep.err
	}
	if errors.Is(err, ErrSealed) {
		// A concurrent Seal won; answer as it did.
		if count, sealed := s.sealedCount(); sealed {
			return count, nil
		}
	}
	if err != nil {
		return 0, err
	}
	return rep.first, nil
}

func (s *segment) sealedCount() (uint64, bool) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.mu.count, s.mu.sealed
}

// Read returns entries of segment id of topic from index on, within lim.
// Reading at the segment's current count returns no entries and no error.
// Returned entries own their memory.
func (l *Log) Read(topic string, id SegmentID, index uint64, lim ReadLimits) ([]Entry, error) {
	s, err := l.segment(topic, id)
	if err != nil {
		return nil, err
	}
	return s.read(index, lim.withDefaults())
}

// ReadOffset returns entries of topic from topic offset off on, within lim,
// continuing into following local segments while they are contiguous.
// Reading at the end of the topic's last local segment returns no entries;
// an offset before the first local segment, in a gap between local segments
// or past the end is ErrOffsetOutOfRange.
func (l *Log) ReadOffset(topic string, off Offset, lim ReadLimits) ([]Entry, error) {
	lim = lim.withDefaults()
	var out []Entry
	for {
		s, index, err := l.locate(topic, off)
		if err != nil {
			if len(out) > 0 {
				return out, nil
			}
			return nil, err
		}
		if s == nil {
			return out, nil // at the end
		}
		got, err := s.read(index, lim)
		if err != nil || len(got) == 0 {
			if len(out) > 0 {
				return out, nil
			}
			return got, err
		}
		out = append(out, got...)
		lim.MaxEntries -= len(got)
		for _, e := range got {
			lim.MaxBytes -= frameSize(&e.Record)
		}
		off = got[len(got)-1].Offset + 1
		if lim.MaxEntries <= 0 || lim.MaxBytes <= 0 {
			return out, nil
		}
	}
}

// locate finds the segment holding topic offset off, or returns a nil segment
// when off is the end of the topic's last local segment.
func (l *Log) locate(topic string, off Offset) (*segment, uint64, error) {
	l.mu.RLock()
	defer l.mu.RUnlock()
	if l.mu.closed {
		return nil, 0, ErrClosed
	}
	t := l.mu.topics[topic]
	if t == nil || len(t.segs) == 0 {
		return nil, 0, fmt.Errorf("%w: topic %q has no local segments", ErrSegmentNotFound, topic)
	}
	i, _ := slices.BinarySearchFunc(t.segs, off, func(s *segment, off Offset) int {
		return cmpUint(uint64(s.base), uint64(off)+1)
	})
	// t.segs[i-1] is the last segment whose base is <= off.
	if i == 0 {
		return nil, 0, fmt.Errorf("%w: topic %q offset %d is before the first local segment", ErrOffsetOutOfRange, topic, off)
	}
	s := t.segs[i-1]
	count, _ := s.sealedCount()
	switch end := s.base + Offset(count); {
	case off < end:
		return s, uint64(off - s.base), nil
	case off == end && i == len(t.segs):
		return nil, 0, nil
	case off == end && t.segs[i].base == end:
		return t.segs[i], 0, nil
	}
	return nil, 0, fmt.Errorf("%w: topic %q offset %d is not held locally", ErrOffsetOutOfRange, topic, off)
}

// Changed returns a channel that is closed when segment id of topic next
// publishes entries or stops taking them (sealed, failed, closed). Callers
// use it to wait for new data after a read came back empty; for a segment
// that takes no more entries it is already closed.
func (l *Log) Changed(topic string, id SegmentID) (<-chan struct{}, error) {
	s, err := l.segment(topic, id)
	if err != nil {
		return nil, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.mu.sealed || s.mu.failed != nil || !s.writerRunning() {
		return closedChan, nil
	}
	if s.mu.notify == nil {
		s.mu.notify = make(chan struct{})
	}
	return s.mu.notify, nil
}

var closedChan = func() chan struct{} { c := make(chan struct{}); close(c); return c }()

// SegmentInfo describes one local segment.
type SegmentInfo struct {
	Topic   string
	ID      SegmentID
	Epoch   uint64
	Base    Offset // topic offset of the first entry
	Count   uint64 // entries visible to readers
	Bytes   int64  // bytes of frames (excluding the header block)
	Sealed  bool
	Created time.Time
	// Failed is the write or sync failure that stopped the segment's
	// writer, if any.
	Failed error
	// Corrupt is set when a read found a frame that failed verification.
	Corrupt bool
}

func (s *segment) info() SegmentInfo {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return SegmentInfo{
		Topic: s.topic, ID: s.id, Epoch: s.epoch, Base: s.base,
		Count: s.mu.count, Bytes: s.mu.end - dataStart, Sealed: s.mu.sealed,
		Created: time.Unix(0, s.created), Failed: s.mu.failed, Corrupt: s.mu.corrupt,
	}
}

// Segment describes one local segment.
func (l *Log) Segment(topic string, id SegmentID) (SegmentInfo, error) {
	s, err := l.segment(topic, id)
	if err != nil {
		return SegmentInfo{}, err
	}
	return s.info(), nil
}

// Segments lists topic's local segments in id order.
func (l *Log) Segments(topic string) []SegmentInfo {
	l.mu.RLock()
	defer l.mu.RUnlock()
	t := l.mu.topics[topic]
	if t == nil {
		return nil
	}
	out := make([]SegmentInfo, len(t.segs))
	for i, s := range t.segs {
		out[i] = s.info()
	}
	return out
}

// Topics lists the topics with at least one local segment, sorted.
func (l *Log) Topics() []string {
	l.mu.RLock()
	defer l.mu.RUnlock()
	out := make([]string, 0, len(l.mu.topics))
	for name := range l.mu.topics {
		out = append(out, name)
	}
	slices.Sort(out)
	return out
}

// DeleteSegment removes a sealed segment's files (retention), or a failed
// or quarantined segment's (to be repaired from a replica). Reads already
// under way finish; later reads get ErrSegmentNotFound. The removal is
// durable when DeleteSegment returns.
func (l *Log) DeleteSegment(topic string, id SegmentID) error {
	l.createMu.Lock()
	defer l.createMu.Unlock()
	s, err := l.segment(topic, id)
	if err != nil {
		return err
	}
	info := s.info()
	if !info.Sealed && info.Failed == nil {
		return fmt.Errorf("%w: topic %q segment %d", ErrNotSealed, topic, id)
	}
	if s.done != nil {
		// A sealed segment's writer exits right after answering Seal; a
		// failed one is told to.
		s.stopWriter()
		<-s.done
	}
	l.mu.Lock()
	t := l.mu.topics[topic]
	if _, i := t.find(id); i < len(t.segs) && t.segs[i] == s {
		t.segs = slices.Delete(t.segs, i, i+1)
	}
	if len(t.segs) == 0 {
		delete(l.mu.topics, topic)
	}
	l.mu.Unlock()

	_ = s.closeFile(true) // read-only by now; the files are removed next
	l.files.forget(s)     // after closeFile: a racing read's touch sees it deleted
	if err := os.Remove(s.idxPath()); err != nil && !os.IsNotExist(err) {
		return fmt.Errorf("storage: delete %s: %w", s.idxPath(), err)
	}
	if err := os.Remove(s.path); err != nil {
		return fmt.Errorf("storage: delete %s: %w", s.path, err)
	}
	return syncDir(t.dir)
}

// bufPool recycles append encoding buffers up to maxPooledBuf bytes.
var bufPool sync.Pool

const maxPooledBuf = 1 << 20

func getBuf(n int) *[]byte {
	if p, ok := bufPool.Get().(*[]byte); ok && cap(*p) >= n {
		*p = (*p)[:0]
		return p
	}
	b := make([]byte, 0, max(n, 512))
	return &b
}

func putBuf(p *[]byte) {
	if cap(*p) <= maxPooledBuf {
		bufPool.Put(p)
	}
}
