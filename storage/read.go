package storage

import (
	"container/list"
	"fmt"
	"os"
	"sync"
)

// ReadLimits bound one read. Zero fields mean the defaults. A read returns at
// least one entry when one is available, even if it alone exceeds MaxBytes,
// so that a consumer always makes progress.
type ReadLimits struct {
	// MaxEntries bounds the entries returned. Default 1000.
	MaxEntries int
	// MaxBytes bounds the encoded bytes of the entries returned.
	// Default 1 MiB.
	MaxBytes int64
}

func (lim ReadLimits) withDefaults() ReadLimits {
	if lim.MaxEntries <= 0 {
		lim.MaxEntries = 1000
	}
	if lim.MaxBytes <= 0 {
		lim.MaxBytes = 1 << 20
	}
	return lim
}

// read returns entries from index from on, within lim and below the published
// count. Reading at the count returns no entries; past it, ErrOffsetOutOfRange.
// Every returned entry has passed its checksum; the first bad frame ends the
// read (with a *CorruptionError if nothing came before it) and marks the
// segment corrupt.
func (s *segment) read(from uint64, lim ReadLimits) ([]Entry, error) {
	s.mu.RLock()
	count, end := s.mu.count, s.mu.end
	if from >= count {
		s.mu.RUnlock()
		if from > count {
			return nil, fmt.Errorf("%w: topic %q segment %d has %d entries, read at %d",
				ErrOffsetOutOfRange, s.topic, s.id, count, from)
		}
		return nil, nil
	}
	start := s.mu.index.lookup(from)
	s.mu.RUnlock()
	s.l.files.touch(s)

	chunk := minScanChunk
	if lim.MaxEntries > 1 {
		chunk = int(min(max(lim.MaxBytes, minScanChunk), maxScanChunk))
	}
	sc := frameScanner{read: s.pread, pos: start.pos, limit: end, chunk: chunk}
	var out []Entry
	var bytes int64
	for idx := start.idx; idx < count && len(out) < lim.MaxEntries; idx++ {
		fr, pos, st, reason, err := sc.next()
		if err == nil && st == frameOK && fr.isSeal() {
			st, reason = frameBad, "seal frame inside the segment's entries"
		}
		if err != nil || st != frameOK {
			if err == nil {
				err = s.corruptAt(pos, reason)
			}
			if len(out) > 0 {
				return out, nil
			}
			return nil, fmt.Errorf("read topic %q segment %d at index %d: %w", s.topic, s.id, idx, err)
		}
		if idx < from {
			continue
		}
		if len(out) > 0 && bytes+fr.size > lim.MaxBytes {
			break
		}
		bytes += fr.size
		out = append(out, Entry{
			Record:  Record{Timestamp: fr.ts, Headers: fr.headers, Value: fr.value},
			Segment: s.id,
			Index:   idx,
			Offset:  s.base + Offset(idx),
		})
	}
	return out, nil
}

// corruptAt records a bad frame found below the published count and returns
// the error describing it.
func (s *segment) corruptAt(pos int64, reason string) error {
	s.mu.Lock()
	first := !s.mu.corrupt
	s.mu.corrupt = true
	s.mu.Unlock()
	if first {
		s.l.log.Error("corrupt entry in segment", "topic", s.topic, "segment", s.id, "pos", pos, "reason", reason)
	}
	return &CorruptionError{Path: s.path, Pos: pos, Reason: reason}
}

// pread reads from the segment file, reopening it if it was evicted.
func (s *segment) pread(b []byte, off int64) (int, error) {
	f, err := s.acquireFile()
	if err != nil {
		return 0, err
	}
	defer s.fileMu.RUnlock()
	return f.ReadAt(b, off)
}

// acquireFile returns the open file with fileMu read-locked.
func (s *segment) acquireFile() (*os.File, error) {
	for {
		s.fileMu.RLock()
		if s.f != nil {
			return s.f, nil
		}
		s.fileMu.RUnlock()
		opened, err := s.reopen()
		if err != nil {
			return nil, err
		}
		if opened {
			// Every descriptor opened for reading is counted by the cache.
			s.l.files.touch(s)
		}
	}
}

// reopen opens the file of a segment without a writer; it reports whether
// it opened it (rather than finding it open).
func (s *segment) reopen() (bool, error) {
	s.fileMu.Lock()
	defer s.fileMu.Unlock()
	if s.deleted {
		return false, fmt.Errorf("%w: topic %q segment %d was deleted", ErrSegmentNotFound, s.topic, s.id)
	}
	if s.f != nil {
		return false, nil
	}
	f, err := os.Open(s.path)
	if err != nil {
		return false, fmt.Errorf("reopen segment: %w", err)
	}
	s.f = f
	return true, nil
}

// isDeleted reports whether DeleteSegment removed the segment's files.
func (s *segment) isDeleted() bool {
	s.fileMu.Lock()
	defer s.fileMu.Unlock()
	return s.deleted
}

// closeFile closes the segment file; deleted marks the files as gone so
// that no read reopens them.
func (s *segment) closeFile(deleted bool) error {
	s.fileMu.Lock()
	defer s.fileMu.Unlock()
	s.deleted = s.deleted || deleted
	if s.f == nil {
		return nil
	}
	err := s.f.Close()
	s.f = nil
	return err
}

// fileCache bounds the read descriptors held by sealed segments: the least
// recently read are closed, and reopened on their next read. Open segments
// keep their file for their writer and are never cached here.
type fileCache struct {
	mu    sync.Mutex
	max   int
	lru   list.List // of *segment, most recent first
	elems map[*segment]*list.Element
}

func newFileCache(max int) *fileCache {
	return &fileCache{max: max, elems: make(map[*segment]*list.Element)}
}

// touch marks a segment whose file is no longer a writer's as just read,
// evicting the least recently read ones beyond the bound. Other segments are
// ignored: their writer owns the file.
func (c *fileCache) touch(s *segment) {
	if !s.readOnly.Load() {
		return
	}
	var victims []*segment
	c.mu.Lock()
	if s.isDeleted() {
		// A read that raced DeleteSegment: do not cache the descriptor
		// again (DeleteSegment marks the segment deleted before it
		// forgets it, so one of the two drops it).
		c.mu.Unlock()
		return
	}
	if e, ok := c.elems[s]; ok {
		c.lru.MoveToFront(e)
	} else {
		c.elems[s] = c.lru.PushFront(s)
	}
	for c.lru.Len() > c.max {
		v := c.lru.Remove(c.lru.Back()).(*segment)
		delete(c.elems, v)
		victims = append(victims, v)
	}
	c.mu.Unlock()
	for _, v := range victims {
		_ = v.closeFile(false) // a read-only descriptor: nothing to lose
	}
}

// forget drops s from the cache (on delete or close).
func (c *fileCache) forget(s *segment) {
	c.mu.Lock()
	if e, ok := c.elems[s]; ok {
		c.lru.Remove(e)
		delete(c.elems, s)
	}
	c.mu.Unlock()
}

func (s *segment) isSealed() bool {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.mu.sealed
}

// writerRunning reports whether s has an owner goroutine that has not exited.
func (s *segment) writerRunning() bool {
	if s.done == nil {
		return false
	}
	select {
	case <-s.done:
		return false
	default:
		return true
	}
}
