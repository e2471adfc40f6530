package storage

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"
)

// errIncomplete marks a segment file whose creation never finished: it holds
// no complete header and no data, so nothing in it was ever acknowledged.
var errIncomplete = errors.New("segment creation did not complete")

// recoverSegment opens the segment file at path and rebuilds its state:
//
//  1. The header must be intact. A file no longer than the header block with
//     a bad header is an interrupted creation (errIncomplete); a bad header
//     in front of data is corruption, and the file is left untouched.
//  2. A sealed segment with a valid .idx whose data end equals the file size
//     and whose last frame is the matching seal frame is taken as is.
//  3. Otherwise every frame is scanned and verified. The scan ends at the
//     seal frame, at the end of the file, or at the first frame that is
//     short or fails its checksum. In an open segment, what follows that
//     point is a torn tail: zeros (pre-written space) are kept, anything
//     else is copied to a .discarded file and the file is truncated, so
//     that no stale frame can ever reappear behind new appends.
//
// Recovery is idempotent: a second run finds the state the first one left.
func (l *Log) recoverSegment(path string, id SegmentID) (*segment, error) {
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		return nil, fmt.Errorf("open segment: %w", err)
	}
	s, err := l.recoverOpened(f, path, id)
	if err != nil {
		_ = f.Close() // the recovery error is the one to report
		return nil, err
	}
	if s.mu.sealed {
		// Sealed segments reopen their file lazily on first read. Recovery
		// synced whatever it changed, so a close error loses nothing.
		_ = f.Close()
		s.f = nil
		s.readOnly.Store(true)
	}
	return s, nil
}

func (l *Log) recoverOpened(f *os.File, path string, id SegmentID) (*segment, error) {
	st, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("stat segment: %w", err)
	}
	size := st.Size()
	hb := make([]byte, dataStart)
	n, err := f.ReadAt(hb, 0)
	if err != nil && !errors.Is(err, io.EOF) {
		return nil, fmt.Errorf("read segment header: %w", err)
	}
	h, reason := decodeSegmentHeader(hb[:n])
	if reason != "" {
		if size <= dataStart {
			return nil, fmt.Errorf("%w: %s", errIncomplete, reason)
		}
		return nil, &CorruptionError{Path: path, Pos: 0, Reason: reason}
	}
	if h.id != id || filepath.Base(filepath.Dir(path)) != topicDirName(h.topic) {
		return nil, &CorruptionError{Path: path, Pos: 0, Reason: fmt.Sprintf(
			"header names topic %q segment %d, which does not belong at this path", h.topic, h.id)}
	}
	s := &segment{l: l, topic: h.topic, id: h.id, epoch: h.epoch, base: h.base, created: h.created, path: path, f: f}
	s.mu.index.interval = l.opts.IndexIntervalBytes
	if l.loadSealedIndex(s, size) {
		return s, nil
	}
	if err := l.scanSegment(s, size); err != nil {
		return nil, err
	}
	return s, nil
}

// loadSealedIndex adopts the .idx file of a sealed segment if it matches the
// log file exactly and the file ends with the matching seal frame.
func (l *Log) loadSealedIndex(s *segment, size int64) bool {
	x, err := readIndexFile(s.idxPath())
	if err != nil || x.id != s.id || x.dataEnd != size {
		return false
	}
	if count, epoch, ok := readSealFrame(s.f, size); !ok || count != x.count || epoch != s.epoch {
		return false
	}
	if !lastPointHolds(s.f, x, size-sealFrameSize) {
		return false
	}
	s.mu.count, s.mu.end, s.mu.sealed = x.count, size-sealFrameSize, true
	s.mu.index.entries = x.points
	return true
}

// readSealFrame decodes the seal frame that ends at end in f.
func readSealFrame(f *os.File, end int64) (count, epoch uint64, ok bool) {
	if end < dataStart+sealFrameSize {
		return 0, 0, false
	}
	b := make([]byte, sealFrameSize)
	if _, err := f.ReadAt(b, end-sealFrameSize); err != nil {
		return 0, 0, false
	}
	fr, st, _ := decodeFrame(b)
	if st != frameOK || !fr.isSeal() {
		return 0, 0, false
	}
	count, epoch = fr.sealInfo()
	return count, epoch, true
}

// lastPointHolds checks an index file's last point against the data: the
// frames from it to the seal frame must be exactly the remaining entries. It
// reads at most one index interval (and a frame), so a cached index is
// verified without a scan of the segment.
func lastPointHolds(f *os.File, x indexFile, end int64) bool {
	if len(x.points) == 0 {
		return x.count == 0 && end == dataStart
	}
	last := x.points[len(x.points)-1]
	sc := frameScanner{read: f.ReadAt, pos: last.pos, limit: end, chunk: minScanChunk, reuse: true}
	n := last.idx
	for sc.pos < end {
		fr, _, st, _, err := sc.next()
		if err != nil || st != frameOK || fr.isSeal() {
			return false
		}
		n++
	}
	return n == x.count && sc.pos == end
}

// scanResult is what a scan of a segment file found.
type scanResult struct {
	count    uint64 // complete entries before stop
	stop     int64  // where the scan stopped: the seal frame's end, EOF, or a bad frame
	sealed   bool
	reason   string     // why the scan stopped early, if it did
	group    indexEntry // start (count, pos) of the last Append's frames
	inGroup  bool       // the last frame said more frames of its Append follow
	durable  int64      // the durable mark's size, or dataStart without one
	durCount uint64
}

// scanSegment verifies every frame of s and settles its state (see
// recoverSegment). It syncs the file, so that everything it serves is
// durable even if the process crashed before the last batch's fsync.
func (l *Log) scanSegment(s *segment, size int64) error {
	r, err := l.scan(s, size)
	if err != nil {
		return err
	}
	s.w.marked = r.durable
	switch {
	case r.sealed:
		s.mu.count, s.mu.end, s.mu.sealed = r.count, r.stop-sealFrameSize, true
		if err := l.settleSealedTail(s, r.stop, size); err != nil {
			return err
		}
		l.writeIndex(s, r.stop)
	case r.reason != "" && l.trailingSeal(s, r, size):
		// A sealed segment whose .idx was lost, with a bad frame inside:
		// keep it sealed at its count, serve the intact prefix, never cut
		// acknowledged entries.
	case r.stop < r.durable, r.inGroup && r.group.pos < r.durable:
		// Damage below the durable mark: acknowledged data, not a torn
		// tail. Keep every byte, serve the intact prefix, take no appends.
		if r.reason == "" {
			r.reason = "the file ends"
		}
		s.quarantineInPlace(&CorruptionError{Path: s.path, Pos: r.stop, Reason: r.reason +
			fmt.Sprintf(" below the durable mark at byte %d (%d entries)", r.durable, r.durCount)})
		s.mu.count, s.mu.end = r.count, r.stop
	default:
		if r.inGroup {
			// The last Append did not land whole: drop its first records.
			r.count, r.stop = r.group.idx, r.group.pos
			s.mu.index.truncate(r.count)
			if r.reason == "" {
				r.reason = "incomplete multi-record append"
			}
		}
		s.mu.count, s.mu.end = r.count, r.stop
		if err := l.settleOpenTail(s, r.stop, size, r.reason); err != nil {
			return err
		}
	}
	if err := s.f.Sync(); err != nil {
		return &FsyncError{Err: fmt.Errorf("sync recovered segment: %w", err)}
	}
	return nil
}

// scan walks s's frames from the start, building its index.
func (l *Log) scan(s *segment, size int64) (scanResult, error) {
	r := scanResult{durable: dataStart}
	mb := make([]byte, markSize)
	if _, err := s.f.ReadAt(mb, markPos); err == nil {
		if sz, c, ok := decodeMark(mb); ok {
			r.durable, r.durCount = sz, c
		}
	}
	sc := frameScanner{read: s.f.ReadAt, pos: dataStart, limit: size, chunk: maxScanChunk, reuse: true}
	for {
		fr, pos, st, why, err := sc.next()
		if err != nil {
			return r, fmt.Errorf("scan segment: %w", err)
		}
		r.stop = pos
		if st != frameOK {
			if pos < size {
				r.reason = why
			}
			return r, nil
		}
		if fr.isSeal() {
			if c, e := fr.sealInfo(); c != r.count || e != s.epoch || r.inGroup {
				r.reason = fmt.Sprintf("seal frame for %d entries at epoch %d after %d entries at epoch %d",
					c, e, r.count, s.epoch)
				return r, nil
			}
			r.sealed, r.stop = true, sc.pos
			return r, nil
		}
		if !r.inGroup {
			r.group = indexEntry{idx: r.count, pos: pos}
		}
		r.inGroup = fr.more()
		s.mu.index.add(r.count, pos)
		r.count++
	}
}

// trailingSeal handles a scan that stopped at a bad frame in a segment whose
// file still ends with a valid seal frame for its epoch (zeros may follow).
// It adopts the segment as sealed and corrupt and reports true.
func (l *Log) trailingSeal(s *segment, r scanResult, size int64) bool {
	nz, err := lastNonZero(s.f, r.stop, size)
	if err != nil {
		return false
	}
	// The seal frame's payload ends with the count and epoch, whose high
	// bytes are usually zero: it ends up to a payload's length past the last
	// non-zero byte. Its checksum makes the probe exact.
	for end := nz; end <= min(nz+sealPayloadSize, size); end++ {
		if end-r.stop < sealFrameSize {
			continue
		}
		count, epoch, ok := readSealFrame(s.f, end)
		if ok && epoch == s.epoch && count >= r.count {
			s.adoptCorruptSealed(r, count, end)
			return true
		}
	}
	return false
}

// adoptCorruptSealed keeps a sealed segment with a bad frame at r.stop
// sealed at count, its seal frame ending at end.
func (s *segment) adoptCorruptSealed(r scanResult, count uint64, end int64) {
	s.mu.count, s.mu.end, s.mu.sealed, s.mu.corrupt = count, end-sealFrameSize, true, true
	s.l.log.Error("sealed segment has a corrupt entry: serving the entries before it, keeping every byte",
		"topic", s.topic, "segment", s.id, "pos", r.stop, "reason", r.reason, "count", count)
}

// quarantineInPlace marks an open segment that holds damaged acknowledged
// data: it stays readable up to the damage and takes no appends.
func (s *segment) quarantineInPlace(ce *CorruptionError) {
	s.mu.corrupt = true
	s.mu.failed = fmt.Errorf("%w: topic %q segment %d: %w", ErrFailed, s.topic, s.id, ce)
	s.w.failed = s.mu.failed
	s.l.log.Error("segment quarantined: damage below the durable mark; serving the entries before it",
		"topic", s.topic, "segment", s.id, "err", ce)
}

// writeIndex caches a sealed segment's index (best effort: it is a cache).
func (l *Log) writeIndex(s *segment, dataEnd int64) {
	idx := indexFile{id: s.id, count: s.mu.count, dataEnd: dataEnd, points: s.mu.index.entries}
	if err := writeIndexFile(s.idxPath(), &idx); err != nil {
		l.log.Warn("index file not written", "topic", s.topic, "segment", s.id, "err", err)
	}
}

// settleSealedTail trims what lies past a sealed segment's seal frame. Only
// zeros are expected there (pre-written space whose trim was interrupted);
// anything else is kept aside before the trim.
func (l *Log) settleSealedTail(s *segment, end, size int64) error {
	if end == size {
		return nil
	}
	return l.cutTail(s, end, size, "bytes after the seal frame")
}

// settleOpenTail keeps a pre-written zero tail and cuts anything else.
func (l *Log) settleOpenTail(s *segment, end, size int64, reason string) error {
	s.w.size, s.w.count, s.w.preallocEnd = end, s.mu.count, end
	if end == size {
		return nil
	}
	zero, err := isZero(s.f, end, size)
	if err != nil {
		return err
	}
	if zero {
		s.w.preallocEnd = size
		return nil
	}
	return l.cutTail(s, end, size, reason)
}

// cutTail copies [end, size) of s to a .discarded file unless it is all
// zeros, then truncates the segment to end and syncs it.
func (l *Log) cutTail(s *segment, end, size int64, reason string) error {
	zero, err := isZero(s.f, end, size)
	if err != nil {
		return err
	}
	if !zero {
		keep := fmt.Sprintf("%s.%d%s", s.path, time.Now().UnixNano(), discardedExt)
		if err := copyRange(s.f, end, size, keep); err != nil {
			return fmt.Errorf("keep discarded tail: %w", err)
		}
		l.log.Warn("discarded torn tail of segment", "topic", s.topic, "segment", s.id,
			"pos", end, "bytes", size-end, "reason", reason, "kept_in", keep)
	}
	if err := s.f.Truncate(end); err != nil {
		return fmt.Errorf("truncate segment to %d: %w", end, err)
	}
	if err := s.f.Sync(); err != nil {
		return &FsyncError{Err: err}
	}
	s.w.preallocEnd = end
	return nil
}

// lastNonZero returns the position after the last non-zero byte of f in
// [from, to), or from if there is none.
func lastNonZero(f *os.File, from, to int64) (int64, error) {
	buf := make([]byte, min(to-from, 1<<20))
	for end := to; end > from; {
		n := min(int64(len(buf)), end-from)
		if _, err := f.ReadAt(buf[:n], end-n); err != nil {
			return 0, err
		}
		for i := n - 1; i >= 0; i-- {
			if buf[i] != 0 {
				return end - n + i + 1, nil
			}
		}
		end -= n
	}
	return from, nil
}

// isZero reports whether f holds only zero bytes in [from, to).
func isZero(f *os.File, from, to int64) (bool, error) {
	buf := make([]byte, min(to-from, 1<<20))
	for pos := from; pos < to; {
		n := min(int64(len(buf)), to-pos)
		if _, err := f.ReadAt(buf[:n], pos); err != nil {
			return false, fmt.Errorf("read tail at %d: %w", pos, err)
		}
		for _, c := range buf[:n] {
			if c != 0 {
				return false, nil
			}
		}
		pos += n
	}
	return true, nil
}

// copyRange writes [from, to) of f into a new durable file at path.
func copyRange(f *os.File, from, to int64, path string) error {
	out, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o644)
	if err != nil {
		return err
	}
	_, err = io.Copy(out, io.NewSectionReader(f, from, to-from))
	if err == nil {
		err = out.Sync()
	}
	if cerr := out.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = syncDir(filepath.Dir(path))
	}
	return err
}
