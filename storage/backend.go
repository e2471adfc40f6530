package storage

import (
	"errors"
	"fmt"
	"log/slog"
)

// ioBackend performs the positioned writes and data syncs of the append path.
// One backend is shared by every segment of a Log and must be safe for
// concurrent use; each call is synchronous and returns only when the requested
// work is complete.
type ioBackend interface {
	// name reports the backend for logs, metrics and the benchmark:
	// "io_uring" or "pwrite".
	name() string

	// writeAt writes the concatenation of bufs at offset off of fd and, when
	// sync is set, then makes the file's data durable (fdatasync). It returns
	// nil only if every byte was written (and synced). A short write is
	// continued for the remainder, never silently accepted; any error
	// (EIO, ENOSPC, a cancelled link, ...) is returned wrapped.
	writeAt(fd int, off int64, bufs [][]byte, sync bool) error

	// sync makes the data written to fd durable (fdatasync).
	sync(fd int) error

	// close releases the backend's resources. It is called once, after every
	// other call has returned.
	close() error
}

// Backend names an I/O backend choice in Options.
type Backend string

// Backends selectable in Options.Backend.
const (
	// BackendAuto picks the measured default for the platform (see
	// docs/benchmarks.md) and falls back to pwrite when io_uring is
	// unavailable.
	BackendAuto Backend = ""
	// BackendURing requires io_uring; Open fails if it cannot be set up.
	BackendURing Backend = "io_uring"
	// BackendPwrite uses pwritev(2) and fdatasync(2).
	BackendPwrite Backend = "pwrite"
)

// defaultBackend is what BackendAuto prefers, chosen by the storage
// benchmark on Linux (docs/benchmarks.md).
const defaultBackend = BackendPwrite

// errURingUnavailable is wrapped by newURingBackend when io_uring cannot be
// used on this kernel or in this sandbox (EPERM, ENOSYS, disabled by sysctl).
var errURingUnavailable = errors.New("storage: io_uring unavailable")

// openBackend returns the backend named by want. BackendAuto prefers
// defaultBackend and falls back to pwrite if io_uring cannot be set up,
// logging the reason once.
func openBackend(want Backend, log *slog.Logger) (ioBackend, error) {
	explicit := want != BackendAuto
	if !explicit {
		want = defaultBackend
	}
	switch want {
	case BackendPwrite:
		return pwriteBackend{}, nil
	case BackendURing:
		b, err := newURingBackend()
		if err == nil {
			return b, nil
		}
		if explicit {
			return nil, fmt.Errorf("storage: open io_uring backend: %w", err)
		}
		log.Info("io_uring unavailable, using pwrite", "err", err)
		return pwriteBackend{}, nil
	default:
		return nil, fmt.Errorf("%w: unknown backend %q", ErrInvalidOptions, want)
	}
}
