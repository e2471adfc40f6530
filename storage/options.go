package storage

import (
	"fmt"
	"log/slog"
	"time"
)

// FsyncPolicy says when appended entries are made durable.
type FsyncPolicy string

// Fsync policies.
const (
	// FsyncAlways (the default) acknowledges an append only after its batch
	// was written and fdatasync'd. Nothing acknowledged is lost on power
	// failure.
	FsyncAlways FsyncPolicy = "always"
	// FsyncInterval acknowledges after the write(2) and syncs every
	// Options.FsyncInterval. A power failure can lose the last interval of
	// acknowledged appends; a process crash loses nothing.
	FsyncInterval FsyncPolicy = "interval"
	// FsyncNever acknowledges after the write(2) and leaves syncing to the
	// kernel (and to Seal and Close). Unsafe on power failure.
	FsyncNever FsyncPolicy = "never"
)

// ParseFsyncPolicy parses "always", "interval" or "never"; the empty string
// means FsyncAlways.
func ParseFsyncPolicy(s string) (FsyncPolicy, error) {
	switch p := FsyncPolicy(s); p {
	case "":
		return FsyncAlways, nil
	case FsyncAlways, FsyncInterval, FsyncNever:
		return p, nil
	}
	return "", fmt.Errorf("%w: fsync policy %q (want always, interval or never)", ErrInvalidOptions, s)
}

// Defaults for the zero Options fields.
const (
	DefaultFsyncInterval      = 10 * time.Millisecond
	DefaultMaxEntryBytes      = 8 << 20
	DefaultMaxBatchBytes      = 16 << 20
	DefaultMaxSegmentBytes    = 1 << 30
	DefaultIndexIntervalBytes = 4 << 10
	DefaultPreallocBytes      = 4 << 20
	DefaultMaxOpenReadFiles   = 512
)

// Options configure a Log. The zero value of every field means its default.
type Options struct {
	// Fsync is the durability policy. Default FsyncAlways.
	Fsync FsyncPolicy
	// FsyncInterval is the sync period under FsyncInterval. Default 10ms.
	FsyncInterval time.Duration
	// Backend selects the I/O backend. Default BackendAuto: the measured
	// default for Linux, falling back to pwrite when io_uring cannot be set
	// up (EPERM in containers, ENOSYS in gVisor).
	Backend Backend
	// MaxEntryBytes bounds one encoded entry (payload, headers and the
	// 20-byte frame header). Default 8 MiB.
	MaxEntryBytes int64
	// MaxBatchBytes bounds one Append call's encoded size and one group
	// commit write. Default 16 MiB; never less than MaxEntryBytes.
	MaxBatchBytes int64
	// MaxSegmentBytes bounds a segment file; an append past it gets
	// ErrSegmentFull. Default 1 GiB.
	MaxSegmentBytes int64
	// IndexIntervalBytes is the spacing of the sparse offset index: a read
	// scans at most this many bytes past the nearest index point.
	// Default 4 KiB.
	IndexIntervalBytes int64
	// PreallocBytes is how far ahead of the write position an open segment
	// is pre-written with zeros under FsyncAlways, so that each group
	// commit's fdatasync has no file size or extent metadata to flush.
	// Default 4 MiB; negative disables pre-writing.
	PreallocBytes int64
	// DirectIO writes appends with O_DIRECT under FsyncAlways: each group
	// commit is staged into block-aligned memory and written straight to
	// the device, bypassing the page cache. Falls back to buffered writes
	// where the file system refuses O_DIRECT. Default off
	// (docs/benchmarks.md has the measurements behind the default).
	DirectIO bool
	// MaxOpenReadFiles bounds the file descriptors kept open for reading
	// sealed segments (least recently used are closed). Default 512.
	MaxOpenReadFiles int
	// Logger receives the log's events. Default: discard.
	Logger *slog.Logger
}

// withDefaults returns a copy of o with every zero field set to its default.
func (o Options) withDefaults() Options {
	if o.Fsync == "" {
		o.Fsync = FsyncAlways
	}
	if o.FsyncInterval == 0 {
		o.FsyncInterval = DefaultFsyncInterval
	}
	if o.MaxEntryBytes == 0 {
		o.MaxEntryBytes = DefaultMaxEntryBytes
	}
	if o.MaxBatchBytes == 0 {
		o.MaxBatchBytes = DefaultMaxBatchBytes
	}
	if o.MaxBatchBytes < o.MaxEntryBytes {
		o.MaxBatchBytes = o.MaxEntryBytes
	}
	if o.MaxSegmentBytes == 0 {
		o.MaxSegmentBytes = DefaultMaxSegmentBytes
	}
	if o.IndexIntervalBytes == 0 {
		o.IndexIntervalBytes = DefaultIndexIntervalBytes
	}
	if o.PreallocBytes == 0 {
		o.PreallocBytes = DefaultPreallocBytes
	}
	if o.MaxOpenReadFiles == 0 {
		o.MaxOpenReadFiles = DefaultMaxOpenReadFiles
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	return o
}

// Validate reports the first invalid field of o (after defaults).
func (o Options) Validate() error {
	o = o.withDefaults()
	if _, err := ParseFsyncPolicy(string(o.Fsync)); err != nil {
		return err
	}
	switch {
	case o.FsyncInterval < 0:
		return fmt.Errorf("%w: FsyncInterval %v is negative", ErrInvalidOptions, o.FsyncInterval)
	case o.MaxEntryBytes < frameHeaderSize || o.MaxEntryBytes > maxFrameSize:
		return fmt.Errorf("%w: MaxEntryBytes %d not in [%d, %d]", ErrInvalidOptions, o.MaxEntryBytes, frameHeaderSize, maxFrameSize)
	case o.MaxBatchBytes > maxFrameSize:
		return fmt.Errorf("%w: MaxBatchBytes %d exceeds %d", ErrInvalidOptions, o.MaxBatchBytes, maxFrameSize)
	case o.MaxSegmentBytes < dataStart+o.MaxEntryBytes:
		return fmt.Errorf("%w: MaxSegmentBytes %d is smaller than one maximal entry", ErrInvalidOptions, o.MaxSegmentBytes)
	case o.IndexIntervalBytes < 0:
		return fmt.Errorf("%w: IndexIntervalBytes %d is negative", ErrInvalidOptions, o.IndexIntervalBytes)
	case o.MaxOpenReadFiles < 0:
		return fmt.Errorf("%w: MaxOpenReadFiles %d is negative", ErrInvalidOptions, o.MaxOpenReadFiles)
	}
	switch o.Backend {
	case BackendAuto, BackendURing, BackendPwrite:
	default:
		return fmt.Errorf("%w: unknown backend %q", ErrInvalidOptions, o.Backend)
	}
	return nil
}
