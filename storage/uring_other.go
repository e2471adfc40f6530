//go:build !linux

package storage

import (
	"fmt"
	"runtime"
)

// newURingBackend reports that io_uring exists only on Linux.
func newURingBackend() (ioBackend, error) {
	return nil, fmt.Errorf("%w: not supported on %s", errURingUnavailable, runtime.GOOS)
}
