//go:build linux

package storage

import (
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"runtime"
	"sync"
	"sync/atomic"
	"unsafe"

	"golang.org/x/sys/unix"
)

// io_uring ABI constants from include/uapi/linux/io_uring.h.
const (
	ioringOffSQRing = 0
	ioringOffCQRing = 0x8000000
	ioringOffSQEs   = 0x10000000

	ioringOpNop    = 0
	ioringOpWritev = 2
	ioringOpFsync  = 3

	ioringFsyncDatasync  = 1 << 0
	iosqeIOLink          = 1 << 2
	ioringEnterGetevents = 1 << 0

	ioringFeatSingleMmap = 1 << 0
	ioringFeatNodrop     = 1 << 1
)

const (
	// uringEntries is the submission queue size of each ring. A round of a
	// call uses at most uringEntries SQEs (uringEntries-1 WRITEVs of up to
	// maxIovecs buffers each, then an FSYNC); larger calls loop in rounds.
	uringEntries = 64
	// uringMaxRings caps the rings of one backend; callers beyond the cap
	// wait for an idle ring.
	uringMaxRings = 64
)

// uringSQOffsets is struct io_sqring_offsets: byte offsets of the submission
// ring's fields inside its mapping.
type uringSQOffsets struct {
	head, tail, ringMask, ringEntries, flags, dropped, array, resv1 uint32
	userAddr                                                        uint64
}

// uringCQOffsets is struct io_cqring_offsets: byte offsets of the completion
// ring's fields inside its mapping.
type uringCQOffsets struct {
	head, tail, ringMask, ringEntries, overflow, cqes, flags, resv1 uint32
	userAddr                                                        uint64
}

// uringParams is struct io_uring_params, filled in by io_uring_setup.
type uringParams struct {
	sqEntries, cqEntries, flags, sqThreadCPU, sqThreadIdle, features, wqFd uint32
	resv                                                                   [3]uint32
	sqOff                                                                  uringSQOffsets
	cqOff                                                                  uringCQOffsets
}

// uringSQE is struct io_uring_sqe, one submission queue entry.
type uringSQE struct {
	opcode      uint8
	flags       uint8
	ioprio      uint16
	fd          int32
	off         uint64
	addr        uint64
	len         uint32
	opFlags     uint32 // rw_flags, fsync_flags, ...
	userData    uint64
	bufIndex    uint16
	personality uint16
	spliceFdIn  int32
	addr3       uint64
	pad         uint64
}

// uringCQE is struct io_uring_cqe, one completion queue entry.
type uringCQE struct {
	userData uint64
	res      int32
	flags    uint32
}

// Compile-time layout checks: each pair fails to compile (negative uintptr
// constant) unless the size is exact.
const (
	_ = unsafe.Sizeof(uringParams{}) - 120
	_ = 120 - unsafe.Sizeof(uringParams{})
	_ = unsafe.Sizeof(uringSQE{}) - 64
	_ = 64 - unsafe.Sizeof(uringSQE{})
	_ = unsafe.Sizeof(uringCQE{}) - 16
	_ = 16 - unsafe.Sizeof(uringCQE{})
)

// uring is one io_uring instance with its shared rings mapped. It is not
// safe for concurrent use: uringBackend hands each ring to one call at a
// time. Between calls the ring is empty: every SQE consumed, every CQE reaped.
type uring struct {
	fd       int
	features uint32 // IORING_FEAT_* reported by the kernel
	entries  uint32 // SQ size

	sqMem, cqMem, sqeMem []byte // mappings; cqMem is nil when shared with sqMem

	sqHead, sqTail *uint32 // kernel-owned head, user-owned tail
	sqMask         uint32
	sqArray        []uint32
	sqes           []uringSQE
	tail           uint32 // local SQ tail, published by run

	cqHead, cqTail *uint32 // user-owned head, kernel-owned tail
	cqMask         uint32
	cqes           []uringCQE

	res         []int32      // completion results of the current round, by user_data
	iov         []unix.Iovec // iovecs of the current round, reused across calls
	spans       []uringSpan  // WRITEV plan of the current round, reused
	broken      bool         // state unknown after a failed io_uring_enter; discard
	shortRounds int          // rounds continued after a short write (diagnostics)
}

// newRing sets up an io_uring with the given SQ size and maps its rings.
func newRing(entries uint32) (*uring, error) {
	var p uringParams
	fd, _, errno := unix.Syscall(unix.SYS_IO_URING_SETUP, uintptr(entries), uintptr(unsafe.Pointer(&p)), 0)
	if errno != 0 {
		return nil, fmt.Errorf("io_uring_setup: %w", errno)
	}
	r := &uring{fd: int(fd), features: p.features, entries: p.sqEntries}
	if err := r.mapRings(&p); err != nil {
		_ = r.close() // the mapping error is the one to report
		return nil, err
	}
	return r, nil
}

// mapRings maps the SQ ring, CQ ring and SQE array of r: with
// IORING_FEAT_SINGLE_MMAP one mapping serves both rings.
func (r *uring) mapRings(p *uringParams) error {
	// Every round is reaped in full before the next, so at most sqEntries
	// CQEs are ever pending: the CQ cannot overflow whether or not the
	// kernel has IORING_FEAT_NODROP, provided it is at least as large.
	if p.cqEntries < p.sqEntries {
		return fmt.Errorf("io_uring: %d CQ entries for %d SQ entries (features %#x, nodrop %t)",
			p.cqEntries, p.sqEntries, p.features, p.features&ioringFeatNodrop != 0)
	}
	const prot, flags = unix.PROT_READ | unix.PROT_WRITE, unix.MAP_SHARED | unix.MAP_POPULATE
	sqSize := int(p.sqOff.array) + int(p.sqEntries)*4
	cqSize := int(p.cqOff.cqes) + int(p.cqEntries)*int(unsafe.Sizeof(uringCQE{}))
	single := p.features&ioringFeatSingleMmap != 0
	if single {
		sqSize = max(sqSize, cqSize)
	}
	var err error
	if r.sqMem, err = unix.Mmap(r.fd, ioringOffSQRing, sqSize, prot, flags); err != nil {
		return fmt.Errorf("io_uring mmap sq ring: %w", err)
	}
	cq := r.sqMem
	if !single {
		if r.cqMem, err = unix.Mmap(r.fd, ioringOffCQRing, cqSize, prot, flags); err != nil {
			return fmt.Errorf("io_uring mmap cq ring: %w", err)
		}
		cq = r.cqMem
	}
	sqeSize := int(p.sqEntries) * int(unsafe.Sizeof(uringSQE{}))
	if r.sqeMem, err = unix.Mmap(r.fd, ioringOffSQEs, sqeSize, prot, flags); err != nil {
		return fmt.Errorf("io_uring mmap sqes: %w", err)
	}
	sq := r.sqMem
	r.sqHead = (*uint32)(ringPtr(sq, p.sqOff.head, 4))
	r.sqTail = (*uint32)(ringPtr(sq, p.sqOff.tail, 4))
	r.sqMask = *(*uint32)(ringPtr(sq, p.sqOff.ringMask, 4))
	r.sqArray = unsafe.Slice((*uint32)(ringPtr(sq, p.sqOff.array, 4*int(p.sqEntries))), p.sqEntries)
	r.sqes = unsafe.Slice((*uringSQE)(ringPtr(r.sqeMem, 0, sqeSize)), p.sqEntries)
	r.cqHead = (*uint32)(ringPtr(cq, p.cqOff.head, 4))
	r.cqTail = (*uint32)(ringPtr(cq, p.cqOff.tail, 4))
	r.cqMask = *(*uint32)(ringPtr(cq, p.cqOff.ringMask, 4))
	r.cqes = unsafe.Slice((*uringCQE)(ringPtr(cq, p.cqOff.cqes, cqSize-int(p.cqOff.cqes))), p.cqEntries)
	r.tail = atomic.LoadUint32(r.sqTail)
	r.res = make([]int32, p.sqEntries)
	return nil
}

// ringPtr returns a pointer to the size bytes at off in the mapping mem. The
// kernel sized the mapping for these offsets, so a mismatch is a broken
// invariant.
func ringPtr(mem []byte, off uint32, size int) unsafe.Pointer {
	if size <= 0 || int(off)+size > len(mem) {
		panic(fmt.Sprintf("io_uring: ring field at %d+%d outside %d-byte mapping", off, size, len(mem)))
	}
	return unsafe.Pointer(&mem[off])
}

// close unmaps the rings and closes the ring fd.
func (r *uring) close() error {
	var errs []error
	for _, m := range [][]byte{r.sqeMem, r.cqMem, r.sqMem} {
		if m != nil {
			errs = append(errs, unix.Munmap(m))
		}
	}
	r.sqeMem, r.cqMem, r.sqMem = nil, nil, nil
	if r.fd >= 0 {
		errs = append(errs, unix.Close(r.fd))
		r.fd = -1
	}
	return errors.Join(errs...)
}

// prep claims the next SQE, zeroes it and fills in op, fd and userData (the
// index of its result in r.res). The SQE is published by run.
func (r *uring) prep(op uint8, fd int32, userData int) *uringSQE {
	if r.tail-atomic.LoadUint32(r.sqHead) >= r.entries {
		panic("io_uring: submission queue overflow")
	}
	idx := r.tail & r.sqMask
	sqe := &r.sqes[idx]
	*sqe = uringSQE{opcode: op, fd: fd, userData: uint64(userData)}
	r.sqArray[idx] = idx
	r.tail++
	return sqe
}

// run publishes the n SQEs prepared since the last round, submits them and
// waits for their n completions, storing each result in r.res[user_data].
// After an error the ring's state is unknown: r is marked broken after
// waiting, best effort, for the requests the kernel already consumed.
func (r *uring) run(n int) error {
	start := r.tail - uint32(n)
	atomic.StoreUint32(r.sqTail, r.tail) // store-release: SQEs before tail
	if err := r.submitAndWait(uint32(n)); err != nil {
		r.broken = true
		r.drain(start)
		return err
	}
	head := atomic.LoadUint32(r.cqHead)
	tail := atomic.LoadUint32(r.cqTail) // load-acquire: CQEs before tail
	if tail-head != uint32(n) {
		panic(fmt.Sprintf("io_uring: %d completions for %d submissions", tail-head, n))
	}
	for ; head != tail; head++ {
		cqe := &r.cqes[head&r.cqMask]
		if cqe.userData >= uint64(n) {
			panic(fmt.Sprintf("io_uring: unexpected completion user_data %d", cqe.userData))
		}
		r.res[cqe.userData] = cqe.res
	}
	atomic.StoreUint32(r.cqHead, head)
	return nil
}

// submitAndWait calls io_uring_enter until every published SQE has been
// consumed and n completions are ready. The SQ head tells what the kernel
// already consumed, so an interrupted call never submits an SQE twice.
func (r *uring) submitAndWait(n uint32) error {
	for {
		pending := r.tail - atomic.LoadUint32(r.sqHead)
		ready := atomic.LoadUint32(r.cqTail) - atomic.LoadUint32(r.cqHead)
		if pending == 0 && ready >= n {
			return nil
		}
		var wait uint32
		if ready < n {
			wait = n - ready
		}
		got, _, errno := unix.Syscall6(unix.SYS_IO_URING_ENTER, uintptr(r.fd),
			uintptr(pending), uintptr(wait), ioringEnterGetevents, 0, 0)
		switch {
		case errno == unix.EINTR:
		case errno != 0:
			return fmt.Errorf("io_uring_enter: %w", errno)
		case pending > 0 && got == 0:
			return fmt.Errorf("io_uring_enter: none of %d entries consumed", pending)
		}
	}
}

// drain waits until every SQE the kernel consumed since the SQ head was at
// start has completed, so that no request still reads caller memory when
// the failed call returns. It gives up on any error but EINTR.
func (r *uring) drain(start uint32) {
	for {
		consumed := atomic.LoadUint32(r.sqHead) - start
		ready := atomic.LoadUint32(r.cqTail) - atomic.LoadUint32(r.cqHead)
		if ready >= consumed {
			return
		}
		_, _, errno := unix.Syscall6(unix.SYS_IO_URING_ENTER, uintptr(r.fd),
			0, uintptr(consumed-ready), ioringEnterGetevents, 0, 0)
		if errno != 0 && errno != unix.EINTR {
			return
		}
	}
}

// uringSpan is one IORING_OP_WRITEV of a round: the iovecs
// iov[first:first+count], holding n bytes, written at file offset off.
type uringSpan struct {
	off          int64
	first, count int
	n            int64
}

// planWritev appends to iov one iovec per non-empty buffer of bufs and
// groups them into at most maxSpans spans of at most maxIovecs iovecs at
// increasing offsets from off. It returns the spans appended to spans, the
// extended iov and how many buffers of bufs the spans cover (trailing empty
// buffers included).
func planWritev(spans []uringSpan, iov []unix.Iovec, off int64, bufs [][]byte, maxSpans int) ([]uringSpan, []unix.Iovec, int) {
	used := 0
	for used < len(bufs) && len(spans) < maxSpans {
		sp := uringSpan{off: off, first: len(iov)}
		for ; used < len(bufs) && sp.count < maxIovecs; used++ {
			if b := bufs[used]; len(b) > 0 {
				v := unix.Iovec{Base: &b[0]}
				v.SetLen(len(b))
				iov = append(iov, v)
				sp.count++
				sp.n += int64(len(b))
			}
		}
		if sp.count > 0 {
			spans = append(spans, sp)
			off += sp.n
		}
	}
	for used < len(bufs) && len(bufs[used]) == 0 {
		used++
	}
	return spans, iov, used
}

// chainDone interprets the results res of a chain of linked WRITEV spans.
// It returns how many bytes from the start of the chain are known written
// and the chain's first real error. A short write ends that prefix without
// error: the kernel cancels the rest of the chain (-ECANCELED) and the
// caller resubmits from the end of the prefix. A cancellation with no
// earlier short write, and a write of 0 bytes, are errors.
func chainDone(spans []uringSpan, res []int32) (int64, error) {
	var done int64
	short := false
	for i, sp := range spans {
		r := res[i]
		switch {
		case r == -int32(unix.ECANCELED) && short:
			// Cut off by the short write: part of the remainder.
		case r < 0:
			return done, fmt.Errorf("io_uring writev at %d: %w", sp.off, unix.Errno(-r))
		case short:
			// Completed despite the broken chain: rewritten with the remainder.
		case r == 0 || int64(r) > sp.n:
			return done, fmt.Errorf("io_uring writev at %d: wrote %d of %d bytes: %w", sp.off, r, sp.n, io.ErrShortWrite)
		default:
			done += int64(r)
			short = int64(r) < sp.n
		}
	}
	return done, nil
}

// writeAt implements ioBackend.writeAt on the ring, one round per up to
// entries-1 WRITEV SQEs, the FSYNC linked after the last; after a short
// write the remainder (and the fsync) go in a further round.
func (r *uring) writeAt(fd int32, off int64, bufs [][]byte, sync bool) error {
	for {
		spans, iov, used := planWritev(r.spans[:0], r.iov[:0], off, bufs, int(r.entries)-1)
		r.spans, r.iov = spans, iov
		withSync := sync && used == len(bufs)
		if len(spans) == 0 && !withSync {
			return nil
		}
		var total int64
		for i, sp := range spans {
			sqe := r.prep(ioringOpWritev, fd, i)
			sqe.off = uint64(sp.off)
			sqe.addr = uint64(uintptr(unsafe.Pointer(&iov[sp.first])))
			sqe.len = uint32(sp.count)
			if i < len(spans)-1 || withSync {
				sqe.flags = iosqeIOLink
			}
			total += sp.n
		}
		n := len(spans)
		if withSync {
			r.prep(ioringOpFsync, fd, n).opFlags = ioringFsyncDatasync
			n++
		}
		err := r.run(n)
		// The kernel read the iovecs and buffers through raw addresses.
		runtime.KeepAlive(bufs)
		runtime.KeepAlive(iov)
		clear(iov) // do not pin the caller's buffers in an idle ring
		if cap(iov) > 4*maxIovecs {
			r.iov = nil // nor keep a huge call's iovecs
		}
		if err != nil {
			return fmt.Errorf("io_uring writev at %d: %w", off, err)
		}
		done, err := chainDone(spans, r.res)
		if err != nil {
			return err
		}
		if withSync && done == total {
			if res := r.res[len(spans)]; res < 0 {
				return &FsyncError{Err: fmt.Errorf("io_uring fdatasync: %w", unix.Errno(-res))}
			}
			return nil
		}
		if done < total {
			r.shortRounds++
		}
		off += done
		bufs = advanceBufs(bufs, int(done))
	}
}

// sync implements ioBackend.sync on the ring.
func (r *uring) sync(fd int32) error {
	r.prep(ioringOpFsync, fd, 0).opFlags = ioringFsyncDatasync
	err := r.run(1)
	if err == nil && r.res[0] < 0 {
		err = unix.Errno(-r.res[0])
	}
	if err != nil {
		return &FsyncError{Err: fmt.Errorf("io_uring fdatasync: %w", err)}
	}
	return nil
}

// uringBackend is the io_uring ioBackend: a pool of rings, each used by one
// call at a time for its whole submit and reap.
type uringBackend struct {
	mu       sync.Mutex
	cond     sync.Cond // L is &mu; signalled when a ring is released
	idle     []*uring  // rings not in use
	live     int       // rings created and not closed
	maxRings int
	closed   bool
}

// newURingBackend probes io_uring with a ring and a NOP round trip; every
// failure wraps errURingUnavailable.
func newURingBackend() (ioBackend, error) {
	r, err := newRing(uringEntries)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", errURingUnavailable, err)
	}
	r.prep(ioringOpNop, -1, 0)
	if err = r.run(1); err == nil && r.res[0] < 0 {
		err = unix.Errno(-r.res[0])
	}
	if err != nil {
		_ = r.close() // the probe error is the one to report
		return nil, fmt.Errorf("%w: io_uring nop: %w", errURingUnavailable, err)
	}
	b := &uringBackend{idle: []*uring{r}, live: 1, maxRings: uringMaxRings}
	b.cond.L = &b.mu
	return b, nil
}

func (b *uringBackend) name() string { return string(BackendURing) }

// acquire takes an idle ring, creates one below the cap, or waits. If a
// ring cannot be created (fd or memory limits) while others exist, it
// waits for one of those instead of failing.
func (b *uringBackend) acquire() (*uring, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	for {
		if b.closed {
			return nil, fmt.Errorf("io_uring: backend: %w", os.ErrClosed)
		}
		if n := len(b.idle); n > 0 {
			r := b.idle[n-1]
			b.idle[n-1] = nil
			b.idle = b.idle[:n-1]
			return r, nil
		}
		if b.live < b.maxRings {
			b.live++
			b.mu.Unlock()
			r, err := newRing(uringEntries)
			b.mu.Lock()
			if err == nil {
				return r, nil
			}
			b.live--
			if b.live == 0 {
				return nil, fmt.Errorf("io_uring: new ring: %w", err)
			}
			b.maxRings = b.live
		}
		b.cond.Wait()
	}
}

// release returns r to the pool, or closes it if a failure left it broken.
func (b *uringBackend) release(r *uring) {
	if r.broken {
		_ = r.close() // the failure that broke it was returned to the caller
	}
	b.mu.Lock()
	if r.broken {
		b.live--
	} else {
		b.idle = append(b.idle, r)
	}
	b.mu.Unlock()
	b.cond.Signal()
}

// ringFD converts fd for an SQE; values outside int32 become -1, which the
// kernel reports as EBADF like any other bad descriptor.
func ringFD(fd int) int32 {
	if fd < 0 || fd > math.MaxInt32 {
		return -1
	}
	return int32(fd)
}

// writeAt submits the writes linked to the fdatasync in one io_uring_enter.
// A write without sync goes through pwritev instead: on ext4 the kernel hands
// every buffered io_uring write to an io-wq worker thread, which measured
// about 3× slower than pwritev for unsynced appends (docs/benchmarks.md), so
// io_uring is used only where it saves a round trip, the linked sync.
func (b *uringBackend) writeAt(fd int, off int64, bufs [][]byte, sync bool) error {
	if off < 0 {
		return fmt.Errorf("io_uring writev at %d: negative offset: %w", off, unix.EINVAL)
	}
	if !sync {
		return pwritevFull(fd, off, bufs)
	}
	r, err := b.acquire()
	if err != nil {
		return err
	}
	defer b.release(r)
	return r.writeAt(ringFD(fd), off, bufs, sync)
}

func (b *uringBackend) sync(fd int) error {
	r, err := b.acquire()
	if err != nil {
		return &FsyncError{Err: err}
	}
	defer b.release(r)
	return r.sync(ringFD(fd))
}

// close unmaps and closes every ring. All calls must have returned.
func (b *uringBackend) close() error {
	b.mu.Lock()
	defer b.mu.Unlock()
	var errs []error
	for _, r := range b.idle {
		errs = append(errs, r.close())
	}
	b.live -= len(b.idle)
	b.idle = nil
	b.closed = true
	if b.live != 0 {
		errs = append(errs, fmt.Errorf("io_uring: close with %d rings in use", b.live))
	}
	b.cond.Broadcast()
	return errors.Join(errs...)
}
