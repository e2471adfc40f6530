package storage

import (
	"encoding/binary"
	"fmt"
	"os"
	"sync"
	"sync/atomic"
	"time"
)

// segment is one segment file and, while it is open, the owner goroutine that
// appends to it. Only the owner writes the file; readers pread it
// concurrently and see what the owner has published.
type segment struct {
	l       *Log
	topic   string
	id      SegmentID
	epoch   uint64
	base    Offset
	created int64
	path    string

	// fileMu guards f against being closed (by eviction, Close or delete)
	// while a read uses it. Only sealed segments lose their file to eviction.
	fileMu  sync.RWMutex
	f       *os.File // nil when closed
	deleted bool     // under fileMu: the files are gone
	// readOnly is set once no writer uses f (sealed at open, or the
	// writer exited after sealing): from then on f is the read cache's.
	readOnly atomic.Bool

	// mu guards the state published to readers.
	mu struct {
		sync.RWMutex
		count   uint64 // entries readers may see (durable under FsyncAlways)
		end     int64  // byte position after the last visible frame
		index   sparseIndex
		sealed  bool
		failed  error // the write or sync failure that stopped the writer
		corrupt bool  // a read found a bad frame below count
		notify  chan struct{}
	}

	// Owner goroutine plumbing; nil for a segment that was sealed when opened.
	reqs     chan *request
	stop     chan struct{} // closed by stopWriter to stop the owner
	stopOnce sync.Once
	done     chan struct{} // closed by the owner when it exits
	// closeErr is a failure of the final sync when the owner was stopped;
	// written by the owner before done is closed.
	closeErr error

	w writer // owner-only state
}

// writer is the owner goroutine's private state.
type writer struct {
	fd          int          // the descriptor appends go to
	directFile  *os.File     // the O_DIRECT descriptor, when used
	direct      *directStage // aligned staging, when writing with O_DIRECT
	size        int64        // next write position
	count       uint64       // entries written
	synced      int64        // bytes known durable
	syncedCount uint64       // entries known durable
	marked      int64        // durable size claimed by the mark on disk
	preallocEnd int64        // the file is pre-written with zeros up to here
	dirty       bool         // written but not yet synced
	syncTimer   *time.Timer
	bufs        [][]byte
	accepted    []*request
	failed      error
}

type requestKind uint8

const (
	reqAppend requestKind = iota
	reqSeal
)

// request is one Append or Seal handed to the owner goroutine.
type request struct {
	kind  requestKind
	buf   []byte // encoded frames (append)
	n     int    // number of frames in buf (append)
	reply chan reply
}

type reply struct {
	first uint64 // index of the first appended entry; the count for a seal
	err   error
}

var requestPool = sync.Pool{New: func() any { return &request{reply: make(chan reply, 1)} }}

// maxQueued bounds the owner's request queue; it also bounds a batch.
const maxQueued = 1024

// startOwner starts the goroutine that appends to s. The caller has set
// s.w.size, s.w.count, s.w.marked and s.w.preallocEnd from the file, which
// is synced up to s.w.size.
func (s *segment) startOwner() {
	s.w.synced, s.w.syncedCount = s.w.size, s.w.count
	s.reqs = make(chan *request, maxQueued)
	s.stop = make(chan struct{})
	s.done = make(chan struct{})
	s.w.fd = int(s.f.Fd())
	if s.l.opts.DirectIO && s.l.opts.Fsync == FsyncAlways {
		s.openDirect()
	}
	s.l.goFunc(s.run)
}

// openDirect switches the writer to an O_DIRECT descriptor of the segment
// file, loading the partial last block. If the file system refuses O_DIRECT
// (tmpfs, some overlays) the writer stays on buffered I/O.
func (s *segment) openDirect() {
	f, err := os.OpenFile(s.path, os.O_WRONLY|oDirect, 0)
	if err != nil {
		s.l.log.Warn("O_DIRECT unavailable, using buffered writes", "path", s.path, "err", err)
		return
	}
	start := s.w.size &^ (directAlign - 1)
	block := make([]byte, s.w.size-start)
	if _, err := s.f.ReadAt(block, start); err != nil {
		_ = f.Close() // nothing was written through it
		s.l.log.Warn("read last block for O_DIRECT, using buffered writes", "path", s.path, "err", err)
		return
	}
	s.w.direct = newDirectStage()
	s.w.direct.reset(block)
	s.w.directFile, s.w.fd = f, int(f.Fd())
}

// stopWriter asks the owner goroutine, if any, to exit. It is idempotent;
// wait on done for the exit.
func (s *segment) stopWriter() {
	if s.stop != nil {
		s.stopOnce.Do(func() { close(s.stop) })
	}
}

// run is the owner loop: take the first waiting request, gather whatever else
// is queued into one batch, write it with one system call (and one fdatasync
// under FsyncAlways), then answer every request in the batch.
func (s *segment) run() {
	defer close(s.done)
	batch := make([]*request, 0, 64)
	for {
		var tick <-chan time.Time
		if s.w.syncTimer != nil {
			tick = s.w.syncTimer.C
		}
		select {
		case r := <-s.reqs:
			batch = s.gather(append(batch[:0], r))
			if s.process(batch) {
				s.exit()
				// Sealed: hand the file over to the read cache, which reopens
				// it on the next read under its descriptor bound.
				s.readOnly.Store(true)
				if err := s.closeFile(false); err != nil {
					s.l.log.Warn("close sealed segment", "topic", s.topic, "segment", s.id, "err", err)
				}
				return
			}
			clear(batch)
		case <-tick:
			s.intervalSync()
		case <-s.stop:
			s.exit()
			return
		}
	}
}

// gather adds queued requests to batch without blocking, up to maxQueued
// requests or MaxBatchBytes, stopping after a seal.
func (s *segment) gather(batch []*request) []*request {
	bytes := int64(len(batch[0].buf))
	for batch[len(batch)-1].kind != reqSeal && len(batch) < maxQueued {
		select {
		case r := <-s.reqs:
			batch = append(batch, r)
			if bytes += int64(len(r.buf)); bytes >= s.l.opts.MaxBatchBytes {
				return batch
			}
		default:
			return batch
		}
	}
	return batch
}

// process commits the appends in batch and then a trailing seal, if any. It
// reports whether the segment is now sealed.
func (s *segment) process(batch []*request) bool {
	appends := batch
	var seal *request
	if last := batch[len(batch)-1]; last.kind == reqSeal {
		seal, appends = last, batch[:len(batch)-1]
	}
	if len(appends) > 0 {
		s.commit(appends)
	}
	if seal == nil {
		return false
	}
	return s.seal(seal)
}

// commit writes a batch of appends as one write and answers each request.
func (s *segment) commit(batch []*request) {
	if s.w.failed != nil {
		answerAll(batch, reply{err: s.w.failed})
		return
	}
	o := &s.l.opts
	bufs, accepted := s.w.bufs[:0], s.w.accepted[:0]
	end := s.w.size
	for _, r := range batch {
		// Keep room for the seal frame so that a full segment can be sealed.
		if end+int64(len(r.buf))+sealFrameSize > o.MaxSegmentBytes {
			r.reply <- reply{err: fmt.Errorf("%w: topic %q segment %d holds %d bytes (max %d)",
				ErrSegmentFull, s.topic, s.id, end, o.MaxSegmentBytes)}
			continue
		}
		bufs = append(bufs, r.buf)
		accepted = append(accepted, r)
		end += int64(len(r.buf))
	}
	if len(accepted) == 0 {
		return
	}
	sync := o.Fsync == FsyncAlways
	var err error
	if sync {
		err = s.maybeMark()
	}
	if err == nil {
		err = s.write(bufs, end, sync, sync)
	}
	s.w.bufs, s.w.accepted = clearBufs(bufs), accepted
	if err != nil {
		s.fail(fmt.Errorf("write %d bytes at %d: %w", end-s.w.size, s.w.size, err))
		answerAll(accepted, reply{err: s.w.failed})
		clear(accepted)
		return
	}
	first := s.publish(accepted, end)
	if sync {
		s.w.synced, s.w.syncedCount = end, s.w.count
	}
	for _, r := range accepted {
		n := r.n // the caller recycles r once answered
		r.reply <- reply{first: first}
		first += uint64(n)
	}
	clear(accepted)
	if !sync {
		s.markDirty()
	}
}

// write writes bufs, which end at end, at the write position. With prealloc
// it first makes sure zeros are pre-written ahead; under direct I/O it
// stages the batch into an aligned block-sized write. It does not advance
// the write position.
func (s *segment) write(bufs [][]byte, end int64, sync, prealloc bool) error {
	off, writeEnd := s.w.size, end
	if s.w.direct != nil {
		off, bufs = s.w.direct.stage(s.w.size, bufs, end)
		writeEnd = alignUp(end)
	}
	if prealloc {
		bufs = s.prealloc(bufs, writeEnd)
	}
	err := s.l.backend.writeAt(s.w.fd, off, bufs, sync)
	if err == nil && s.w.direct != nil {
		s.w.direct.commit(s.w.size, end)
	}
	return err
}

// prealloc extends bufs, which end at from, with zeros so that the file is
// pre-written at least up to from, in PreallocBytes steps (block aligned).
// Writing the zeros in the same write as the data costs one extent-and-size
// sync per step instead of one per group commit.
func (s *segment) prealloc(bufs [][]byte, from int64) [][]byte {
	step := s.l.opts.PreallocBytes
	if step <= 0 || from <= s.w.preallocEnd {
		return bufs
	}
	target := alignUp(min(from+step, s.l.opts.MaxSegmentBytes))
	for pos := from; pos < target; {
		n := min(target-pos, int64(len(zeroBlock)))
		bufs = append(bufs, zeroBlock[:n])
		pos += n
	}
	s.w.preallocEnd = target
	return bufs
}

// zeroBlock is the source of pre-written zeros; it is aligned for direct
// I/O and never written to.
var zeroBlock = alignedBuf(1 << 20)

// publish makes the batch visible to readers: it indexes the new frames and
// advances count and end. It returns the index of the batch's first entry.
func (s *segment) publish(batch []*request, end int64) uint64 {
	first := s.w.count
	idx, pos := first, s.w.size
	s.mu.Lock()
	for _, r := range batch {
		for b := r.buf; len(b) > 0; idx++ {
			s.mu.index.add(idx, pos)
			n := int64(binary.LittleEndian.Uint32(b[0:4]))
			b, pos = b[n:], pos+n
		}
	}
	s.mu.count, s.mu.end = idx, end
	s.wakeReadersLocked()
	s.mu.Unlock()
	s.w.size, s.w.count = end, idx
	return first
}

// wakeReadersLocked closes the channel handed out by Changed. s.mu is held.
func (s *segment) wakeReadersLocked() {
	if s.mu.notify != nil {
		close(s.mu.notify)
		s.mu.notify = nil
	}
}

// markDirty arms the interval sync after an unsynced write.
func (s *segment) markDirty() {
	s.w.dirty = true
	if s.l.opts.Fsync != FsyncInterval || s.w.syncTimer != nil {
		return
	}
	s.w.syncTimer = time.NewTimer(s.l.opts.FsyncInterval)
}

func (s *segment) intervalSync() {
	s.w.syncTimer = nil
	_ = s.syncDirty() // a failure stopped the writer; appends report it
}

// syncDirty fdatasyncs unsynced writes. A failure stops the writer and is
// returned.
func (s *segment) syncDirty() error {
	if s.w.failed != nil {
		return s.w.failed
	}
	if !s.w.dirty {
		return nil
	}
	size, count := s.w.size, s.w.count
	if err := s.markAndSync(false); err != nil {
		return err
	}
	s.w.dirty = false
	s.w.synced, s.w.syncedCount = size, count
	return nil
}

// markAndSync fdatasyncs the file, first writing the durable mark if it lags
// (or always, with all). A failure stops the writer and is returned.
func (s *segment) markAndSync(all bool) error {
	var err error
	if all {
		err = s.writeMark()
	} else {
		err = s.maybeMark()
	}
	if err == nil {
		err = s.l.backend.sync(s.w.fd)
	}
	if err != nil {
		s.fail(err)
		return s.w.failed
	}
	return nil
}

// markEvery is how far the durable mark may lag behind the synced size.
const markEvery = 1 << 20

// maybeMark writes the durable mark, claiming the synced prefix, when it lags
// by markEvery or more. It goes out with the next fdatasync, so it never
// claims more than is durable. The caller stops the writer on an error.
func (s *segment) maybeMark() error {
	if s.w.synced-s.w.marked < markEvery {
		return nil
	}
	return s.writeMark()
}

// writeMark writes the durable mark claiming the synced prefix (not synced).
func (s *segment) writeMark() error {
	mark := encodeMark(s.w.synced, s.w.syncedCount)
	if err := pwritevFull(int(s.f.Fd()), markPos, [][]byte{mark}); err != nil {
		return fmt.Errorf("write durable mark: %w", err)
	}
	s.w.marked = s.w.synced
	return nil
}

// seal appends the seal frame, syncs, trims the pre-written zeros and
// installs the index file. It reports whether the segment is sealed.
func (s *segment) seal(r *request) bool {
	if s.w.failed != nil {
		r.reply <- reply{err: s.w.failed}
		return false
	}
	frame := appendSealFrame(nil, s.w.count, s.epoch)
	if err := s.write([][]byte{frame}, s.w.size+int64(len(frame)), true, false); err != nil {
		s.fail(fmt.Errorf("write seal frame at %d: %w", s.w.size, err))
		r.reply <- reply{err: s.w.failed}
		return false
	}
	s.w.size += int64(len(frame))
	s.w.dirty = false
	if s.w.preallocEnd > s.w.size {
		// The zeros past the seal frame are harmless (recovery stops at the
		// seal); trimming them only saves space, so a failure is logged.
		if err := s.f.Truncate(s.w.size); err != nil {
			s.l.log.Warn("trim sealed segment", "topic", s.topic, "segment", s.id, "err", err)
		}
	}
	s.mu.Lock()
	s.mu.sealed = true
	points := append([]indexEntry(nil), s.mu.index.entries...)
	s.mu.Unlock()
	idx := indexFile{id: s.id, count: s.w.count, dataEnd: s.w.size, points: points}
	if err := writeIndexFile(s.idxPath(), &idx); err != nil {
		s.l.log.Warn("index file not written; it will be rebuilt on open", "topic", s.topic, "segment", s.id, "err", err)
	}
	r.reply <- reply{first: s.w.count}
	return true
}

// fail stops the writer after a write or sync error: every later append gets
// ErrFailed. The data stays readable up to the last published entry.
func (s *segment) fail(err error) {
	s.w.failed = fmt.Errorf("%w: topic %q segment %d: %w", ErrFailed, s.topic, s.id, err)
	s.mu.Lock()
	s.mu.failed = s.w.failed
	s.wakeReadersLocked()
	s.mu.Unlock()
	s.l.log.Error("segment writer stopped", "topic", s.topic, "segment", s.id, "err", err)
}

// exit answers everything still queued, syncs unsynced writes and wakes
// waiting readers. When the segment stays open it also marks the whole file
// durable, so that a bad frame anywhere in it is later seen as corruption
// rather than a torn tail. A sync failure is kept in closeErr for Close. The
// owner closes done after it.
func (s *segment) exit() {
	if s.w.failed == nil { // a failure before the stop was reported to its appends
		s.closeErr = s.syncDirty()
		if s.closeErr == nil && !s.isSealed() && s.w.marked < s.w.synced {
			s.closeErr = s.markAndSync(true)
		}
	}
	if s.w.syncTimer != nil {
		s.w.syncTimer.Stop()
	}
	if s.w.directFile != nil {
		// Everything written through it was synced above or failed the
		// writer already; a close error changes nothing on disk.
		_ = s.w.directFile.Close()
		s.w.directFile, s.w.fd = nil, -1
	}
	s.mu.Lock()
	s.wakeReadersLocked()
	s.mu.Unlock()
	err := s.stoppedErr()
	for {
		select {
		case r := <-s.reqs:
			r.reply <- reply{err: err}
		default:
			return
		}
	}
}

// stoppedErr is the error for a request that reached a stopped owner.
func (s *segment) stoppedErr() error {
	s.mu.RLock()
	defer s.mu.RUnlock()
	switch {
	case s.mu.failed != nil:
		return s.mu.failed
	case s.mu.sealed:
		return fmt.Errorf("%w: topic %q segment %d", ErrSealed, s.topic, s.id)
	default:
		return fmt.Errorf("%w: topic %q segment %d", ErrClosed, s.topic, s.id)
	}
}

func answerAll(batch []*request, rep reply) {
	for _, r := range batch {
		r.reply <- rep
	}
}

// clearBufs drops the references to the batch's buffers so that the reused
// slice does not keep them alive.
func clearBufs(bufs [][]byte) [][]byte {
	clear(bufs)
	return bufs[:0]
}

func (s *segment) idxPath() string {
	return s.path[:len(s.path)-len(logExt)] + idxExt
}
