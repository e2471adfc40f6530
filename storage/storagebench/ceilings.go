package storagebench

import (
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"time"

	"golang.org/x/sys/unix"
)

// measureCeilings measures what the machine can do without Walrus: the
// sequential buffered write bandwidth and the single-thread rate of
// "append 1 KiB, fdatasync" on a growing file and on pre-written space.
func measureCeilings(ctx context.Context, root string, d time.Duration, out io.Writer) (Ceilings, error) {
	var c Ceilings
	var err error
	// Warm up: on VMs that return freed memory to the host (free page
	// reporting), the first page-cache pages cost a host page fault each.
	if _, err = seqWrite(ctx, filepath.Join(root, "seq"), d); err != nil {
		return c, err
	}
	if c.SeqWriteMBps, err = seqWrite(ctx, filepath.Join(root, "seq"), d); err != nil {
		return c, err
	}
	fmt.Fprintf(out, "  sequential buffered write, 1 MiB pwrites:        %8.0f MB/s\n", c.SeqWriteMBps)
	if c.SyncRateGrowing, err = syncRate(ctx, filepath.Join(root, "sync-grow"), d, false); err != nil {
		return c, err
	}
	fmt.Fprintf(out, "  1 KiB pwrite + fdatasync, growing file:          %8.0f syncs/s\n", c.SyncRateGrowing)
	if c.SyncRatePrewritten, err = syncRate(ctx, filepath.Join(root, "sync-pre"), d, true); err != nil {
		return c, err
	}
	fmt.Fprintf(out, "  1 KiB pwrite + fdatasync, pre-written file:      %8.0f syncs/s\n", c.SyncRatePrewritten)
	return c, nil
}

func seqWrite(ctx context.Context, path string, d time.Duration) (float64, error) {
	f, err := os.Create(path)
	if err != nil {
		return 0, err
	}
	defer removeAll(path)
	defer func() { _ = f.Close() }()
	buf := make([]byte, 1<<20)
	for i := range buf {
		buf[i] = byte(i)
	}
	const maxBytes = 16 << 30
	var off int64
	start := time.Now()
	for time.Since(start) < d && off < maxBytes && ctx.Err() == nil {
		if _, err := f.WriteAt(buf, off); err != nil {
			return 0, fmt.Errorf("sequential write: %w", err)
		}
		off += int64(len(buf))
	}
	mbps := float64(off) / time.Since(start).Seconds() / 1e6
	unix.Sync()
	return mbps, nil
}

func syncRate(ctx context.Context, path string, d time.Duration, prewrite bool) (float64, error) {
	f, err := os.Create(path)
	if err != nil {
		return 0, err
	}
	defer removeAll(path)
	defer func() { _ = f.Close() }()
	const region = 256 << 20 // room for 256k records
	if prewrite {
		zeros := make([]byte, 1<<20)
		for off := int64(0); off < region; off += int64(len(zeros)) {
			if _, err := f.WriteAt(zeros, off); err != nil {
				return 0, err
			}
		}
		if err := f.Sync(); err != nil {
			return 0, err
		}
	}
	rec := make([]byte, 1024)
	fd := int(f.Fd())
	var n int64
	start := time.Now()
	for time.Since(start) < d && (n+1)*1024 <= region && ctx.Err() == nil {
		if _, err := unix.Pwrite(fd, rec, n*1024); err != nil {
			return 0, fmt.Errorf("pwrite: %w", err)
		}
		if err := unix.Fdatasync(fd); err != nil {
			return 0, fmt.Errorf("fdatasync: %w", err)
		}
		n++
	}
	return float64(n) / time.Since(start).Seconds(), nil
}

// machine describes where the benchmark ran.
func machine(dir string) string {
	var u unix.Utsname
	_ = unix.Uname(&u) // cannot fail with a valid pointer
	fs := "unknown fs"
	var st unix.Statfs_t
	if unix.Statfs(dir, &st) == nil {
		switch st.Type {
		case unix.EXT4_SUPER_MAGIC:
			fs = "ext4"
		case unix.XFS_SUPER_MAGIC:
			fs = "xfs"
		case unix.BTRFS_SUPER_MAGIC:
			fs = "btrfs"
		case unix.TMPFS_MAGIC:
			fs = "tmpfs (fsync is a no-op: figures are not disk figures)"
		default:
			fs = fmt.Sprintf("fs type %#x", st.Type)
		}
	}
	return fmt.Sprintf("%s %s %s, %d CPUs, %s, %s at %s",
		unix.ByteSliceToString(u.Sysname[:]), unix.ByteSliceToString(u.Release[:]),
		unix.ByteSliceToString(u.Machine[:]), runtime.NumCPU(), runtime.Version(), fs, dir)
}

func printHeader(out io.Writer) {
	fmt.Fprintf(out, "%-40s %-14s %-6s %10s %7s %8s %8s %8s %8s %8s %8s\n",
		"workload", "backend", "fsync", "entries/s", "MB/s", "p50", "p99",
		"seqMB/s", "×seq", "×sync", "×syncPre")
}

// printResult prints r with its ratios to the ceilings: payload bandwidth
// against the sequential write ceiling (bracketed for runs without fsync, see
// Result.SeqCeilingMBps), and entry rate against the single-thread
// fdatasync rates on a growing and on a pre-written file (the original's one
// fsync per write reaches about 1×).
func printResult(out io.Writer, r Result, c Ceilings) {
	fmt.Fprintf(out, "%-40s %-14s %-6s %10.0f %7.1f %8s %8s %8.0f %8.2f %8.1f %8.1f\n",
		r.Name, r.Backend, r.Fsync, r.EntriesPS, r.MBps, roundDur(r.P50), roundDur(r.P99),
		r.SeqCeilingMBps, r.MBps/r.SeqCeilingMBps, r.EntriesPS/c.SyncRateGrowing, r.EntriesPS/c.SyncRatePrewritten)
}

func roundDur(d time.Duration) string {
	switch {
	case d < 10*time.Microsecond:
		return d.Round(10 * time.Nanosecond).String()
	case d < 10*time.Millisecond:
		return d.Round(time.Microsecond).String()
	}
	return d.Round(100 * time.Microsecond).String()
}
