package storage

import (
	"errors"
	"os"
	"path/filepath"
	"unsafe"

	"golang.org/x/sys/unix"
)

// directAlign is the alignment of O_DIRECT offsets, lengths and buffers. 4096
// satisfies every Linux block device's logical block size.
const directAlign = 4096

// directStage builds group commits for an O_DIRECT descriptor. Direct I/O
// needs aligned offsets, lengths and memory, so each batch is copied into an
// aligned buffer that starts with the bytes already written to the last,
// partial block and ends padded with zeros to the next block boundary; the
// batch is written at the block boundary. The padding lands in pre-written
// zero space, so the file looks exactly as after a buffered write. Rewriting
// the durable prefix of the partial block with identical bytes cannot lose
// it, even if the write is torn.
type directStage struct {
	buf  []byte // aligned staging memory kept between batches (at most maxKeptStage)
	cur  []byte // the staged write in flight (buf, or a one-off larger buffer)
	tail []byte // aligned copy of the partial last block (size % directAlign bytes used)
}

// maxKeptStage bounds the staging memory an open segment keeps between
// batches; a larger batch gets a buffer of its own.
const maxKeptStage = 1 << 20

func newDirectStage() *directStage {
	return &directStage{tail: alignedBuf(directAlign)}
}

// stage returns the aligned write covering bufs appended at size: the file
// offset (size rounded down) and the buffers to write. The write ends at
// alignUp(end); the caller must have pre-written zeros at least that far.
// After a successful write, commit must be called with the same end.
func (d *directStage) stage(size int64, bufs [][]byte, end int64) (int64, [][]byte) {
	start := size &^ (directAlign - 1)
	n := int(alignUp(end) - start)
	switch {
	case n <= cap(d.buf):
		d.cur = d.buf[:n]
	case n <= maxKeptStage:
		d.buf = alignedBuf(min(max(n, 2*cap(d.buf)), maxKeptStage))
		d.cur = d.buf[:n]
	default:
		d.cur = alignedBuf(int(alignUp(int64(n))))
	}
	b := d.cur
	k := copy(b, d.tail[:size-start])
	for _, p := range bufs {
		k += copy(b[k:], p)
	}
	clear(b[k:])
	return start, [][]byte{b}
}

// commit records the new partial last block after a successful write.
func (d *directStage) commit(size, end int64) {
	start := size &^ (directAlign - 1)
	last := end &^ (directAlign - 1)
	copy(d.tail, d.cur[last-start:end-start])
	d.cur = nil
}

// reset loads the partial last block from b (the file bytes of the block
// holding size), for a segment reopened after recovery.
func (d *directStage) reset(block []byte) {
	clear(d.tail)
	copy(d.tail, block)
}

func alignUp(n int64) int64 { return (n + directAlign - 1) &^ (directAlign - 1) }

// alignedBuf returns n bytes (n a multiple of directAlign) whose address is
// aligned to directAlign. Go heap memory does not move, so the slice can be
// handed to the kernel for direct I/O.
func alignedBuf(n int) []byte {
	b := make([]byte, n+directAlign)
	off := int(-uintptr(unsafe.Pointer(&b[0])) & (directAlign - 1))
	return b[off : off+n : off+n]
}

// probeDirectIO proves that dir's file system takes aligned O_DIRECT writes
// and syncs: some accept the O_DIRECT open and fail the write (EINVAL), which
// would otherwise stop the first segment's writer.
func probeDirectIO(dir string) error {
	path := filepath.Join(dir, ".direct-probe")
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_TRUNC|oDirect, 0o644)
	if err != nil {
		return err
	}
	defer func() {
		_ = f.Close()
		_ = os.Remove(path)
	}()
	n, err := unix.Pwrite(int(f.Fd()), alignedBuf(directAlign), 0)
	if err == nil && n != directAlign {
		err = errors.New("short O_DIRECT write")
	}
	if err == nil {
		err = fdatasync(int(f.Fd()))
	}
	return err
}
