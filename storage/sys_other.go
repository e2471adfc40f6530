//go:build !linux

package storage

import (
	"errors"

	"golang.org/x/sys/unix"
)

// maxIovecs bounds the buffers handed to one pwritev emulation call.
const maxIovecs = 1024

// pwritev emulates pwritev(2) with one pwrite per buffer on platforms
// without it. Walrus is built for Linux; this keeps the package portable for
// development.
func pwritev(fd int, bufs [][]byte, off int64) (int, error) {
	total := 0
	for _, b := range bufs {
		for len(b) > 0 {
			n, err := unix.Pwrite(fd, b, off)
			if errors.Is(err, unix.EINTR) {
				continue
			}
			if err != nil {
				return total, err
			}
			total += n
			off += int64(n)
			b = b[n:]
		}
	}
	return total, nil
}

func fdatasync(fd int) error {
	if err := unix.Fsync(fd); err != nil {
		return &FsyncError{Err: err}
	}
	return nil
}

// oDirect is 0 where O_DIRECT does not exist: DirectIO then writes buffered.
const oDirect = 0
