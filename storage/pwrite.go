package storage

import (
	"fmt"
)

// pwriteBackend writes with pwritev(2) and syncs with fdatasync(2) directly
// from the calling goroutine. It holds no state.
type pwriteBackend struct{}

func (pwriteBackend) name() string { return string(BackendPwrite) }

func (pwriteBackend) writeAt(fd int, off int64, bufs [][]byte, sync bool) error {
	if err := pwritevFull(fd, off, bufs); err != nil {
		return err
	}
	if sync {
		return fdatasync(fd)
	}
	return nil
}

func (pwriteBackend) sync(fd int) error { return fdatasync(fd) }

func (pwriteBackend) close() error { return nil }

// pwritevFull writes every byte of bufs at off, continuing after short writes
// and retrying EINTR. At most maxIovecs buffers go to one system call.
func pwritevFull(fd int, off int64, bufs [][]byte) error {
	for len(bufs) > 0 {
		chunk := bufs
		if len(chunk) > maxIovecs {
			chunk = chunk[:maxIovecs]
		}
		n, err := pwritev(fd, chunk, off)
		if err != nil {
			return fmt.Errorf("pwritev at %d: %w", off, err)
		}
		if n == 0 {
			return fmt.Errorf("pwritev at %d: wrote 0 bytes", off)
		}
		off += int64(n)
		bufs = advanceBufs(bufs, n)
	}
	return nil
}

// advanceBufs returns bufs without its first n bytes. It never modifies the
// caller's slice: a partially written buffer gets a new slice (short writes
// are rare, so the allocation is off the common path).
func advanceBufs(bufs [][]byte, n int) [][]byte {
	for n > 0 && len(bufs) > 0 {
		if n < len(bufs[0]) {
			rest := make([][]byte, 0, len(bufs))
			rest = append(rest, bufs[0][n:])
			return append(rest, bufs[1:]...)
		}
		n -= len(bufs[0])
		bufs = bufs[1:]
	}
	for len(bufs) > 0 && len(bufs[0]) == 0 {
		bufs = bufs[1:]
	}
	return bufs
}
