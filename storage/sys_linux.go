package storage

import (
	"errors"

	"golang.org/x/sys/unix"
)

// maxIovecs is IOV_MAX on Linux: the most buffers one pwritev accepts.
const maxIovecs = 1024

func pwritev(fd int, bufs [][]byte, off int64) (int, error) {
	for {
		n, err := unix.Pwritev(fd, bufs, off)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		return n, err
	}
}

func fdatasync(fd int) error {
	for {
		err := unix.Fdatasync(fd)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			return &FsyncError{Err: err}
		}
		return nil
	}
}

// oDirect is O_DIRECT.
const oDirect = unix.O_DIRECT
