package storagebench

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"

	"github.com/walrus-edge/walrus/storage"
)

// Config selects what Run measures. The zero value of every field means its
// default.
type Config struct {
	// Dir is where benchmark files are written (a fresh subdirectory is
	// created and removed). It must be on the disk being measured, not
	// tmpfs. Default os.TempDir().
	Dir string
	// Duration is the length of each measured run. Default 3s.
	Duration time.Duration
	// Backends to measure. Default: pwrite, and io_uring where available.
	Backends []storage.Backend
	// GroupWriters is the group-commit curve (workload d).
	// Default 1, 16, 64, 256.
	GroupWriters []int
	// Only, if set, runs only the workloads whose name contains it.
	Only string
	// NoDirect skips the direct I/O variants of the fsync-always workloads.
	NoDirect bool
}

func (c Config) withDefaults() Config {
	if c.Dir == "" {
		c.Dir = os.TempDir()
	}
	if c.Duration <= 0 {
		c.Duration = 3 * time.Second
	}
	if len(c.Backends) == 0 {
		c.Backends = []storage.Backend{storage.BackendPwrite, storage.BackendURing}
	}
	if len(c.GroupWriters) == 0 {
		c.GroupWriters = []int{1, 16, 64, 256}
	}
	return c
}

// Ceilings are the machine's own limits measured by Run.
type Ceilings struct {
	SeqWriteMBps       float64 // sequential buffered 1 MiB pwrites to a new file
	SyncRateGrowing    float64 // 1 KiB pwrite + fdatasync per record, file growing
	SyncRatePrewritten float64 // the same into zero-filled, synced space
}

// Result is one measured workload run.
type Result struct {
	Name      string
	Backend   string
	Fsync     storage.FsyncPolicy
	Writers   int
	Topics    int
	Entries   uint64
	Bytes     uint64 // payload bytes
	Elapsed   time.Duration
	P50, P99  time.Duration
	EntriesPS float64
	MBps      float64
	// SeqCeilingMBps is, for runs without fsync, the mean of the
	// sequential write ceiling measured right before and right after the
	// run (the page cache's speed drifts as memory is reused, and on VMs
	// that return freed memory to the host it drifts a lot; bracketing
	// compares the run with the machine in the same state). Otherwise it is
	// the ceiling measured at the start.
	SeqCeilingMBps float64
}

// Report is everything Run measured.
type Report struct {
	Machine  string
	Ceilings Ceilings
	Results  []Result
}

// Run measures the ceilings and every workload, printing each line to out
// as it completes.
func Run(ctx context.Context, cfg Config, out io.Writer) (*Report, error) {
	cfg = cfg.withDefaults()
	root, err := os.MkdirTemp(cfg.Dir, "walrus-bench-")
	if err != nil {
		return nil, fmt.Errorf("bench: %w", err)
	}
	defer removeAll(root)

	rep := &Report{Machine: machine(root)}
	fmt.Fprintf(out, "machine: %s\nrun length: %v per workload\n\n", rep.Machine, cfg.Duration)
	fmt.Fprintln(out, "(a) ceilings")
	if rep.Ceilings, err = measureCeilings(ctx, root, cfg.Duration, out); err != nil {
		return nil, err
	}
	fmt.Fprintln(out)
	printHeader(out)
	for _, w := range workloads(cfg) {
		if cfg.Only != "" && !strings.Contains(w.name+" "+string(w.fsync), cfg.Only) {
			continue
		}
		for _, v := range variants(cfg, w) {
			if err := ctx.Err(); err != nil {
				return rep, err
			}
			var before float64
			if w.fsync == storage.FsyncNever {
				if before, err = seqWrite(ctx, filepath.Join(root, "seq"), cfg.Duration); err != nil {
					return rep, err
				}
			}
			r, err := runWorkload(ctx, root, v, w, cfg.Duration)
			if errors.Is(err, errSkip) {
				fmt.Fprintf(out, "%-40s %-14s skipped: %v\n", w.name, v.name(), err)
				continue
			}
			if err != nil {
				return rep, fmt.Errorf("bench %s on %s: %w", w.name, v.name(), err)
			}
			r.SeqCeilingMBps = rep.Ceilings.SeqWriteMBps
			if w.fsync == storage.FsyncNever {
				after, err := seqWrite(ctx, filepath.Join(root, "seq"), cfg.Duration)
				if err != nil {
					return rep, err
				}
				r.SeqCeilingMBps = (before + after) / 2
			}
			rep.Results = append(rep.Results, r)
			printResult(out, r, rep.Ceilings)
		}
	}
	return rep, nil
}

// workload is one shape of load.
type workload struct {
	name    string
	fsync   storage.FsyncPolicy
	writers int
	topics  int // writers are spread over this many topics, one segment each
	minSize int
	maxSize int
	batch   int // entries per Append; default 1
}

func workloads(cfg Config) []workload {
	ws := []workload{
		{name: "(b) 500-1024B, 10 writers/10 topics", fsync: storage.FsyncNever, writers: 10, topics: 10, minSize: 500, maxSize: 1024},
		{name: "(b) 500-1024B, 10 writers/10 topics", fsync: storage.FsyncAlways, writers: 10, topics: 10, minSize: 500, maxSize: 1024},
		{name: "(b) same, 64-entry batches", fsync: storage.FsyncNever, writers: 10, topics: 10, minSize: 500, maxSize: 1024, batch: 64},
		{name: "(c) 100B, 10 writers/10 topics", fsync: storage.FsyncNever, writers: 10, topics: 10, minSize: 100, maxSize: 100},
		{name: "(c) 100B, 10 writers/10 topics", fsync: storage.FsyncAlways, writers: 10, topics: 10, minSize: 100, maxSize: 100},
	}
	for _, n := range cfg.GroupWriters {
		ws = append(ws, workload{
			name: fmt.Sprintf("(d) 1KiB, %d writers/1 segment", n), fsync: storage.FsyncAlways,
			writers: n, topics: 1, minSize: 1024, maxSize: 1024,
		})
	}
	return ws
}

// variant is one write path: a backend, with buffered or direct I/O.
type variant struct {
	backend storage.Backend
	direct  bool
}

func (v variant) name() string {
	if v.direct {
		return string(v.backend) + "+direct"
	}
	return string(v.backend)
}

// variants lists the write paths to measure w on. Without fsync both
// backends write with pwritev (the io_uring backend uses the ring only for
// synced writes), so such runs measure one backend. Direct I/O only applies
// to fsync always.
func variants(cfg Config, w workload) []variant {
	var vs []variant
	for _, b := range cfg.Backends {
		vs = append(vs, variant{backend: b})
		if w.fsync == storage.FsyncNever {
			break
		}
	}
	if w.fsync == storage.FsyncAlways && !cfg.NoDirect {
		for _, b := range cfg.Backends {
			vs = append(vs, variant{backend: b, direct: true})
		}
	}
	return vs
}

var errSkip = errors.New("backend unavailable")

// runWorkload runs w for d on a fresh log and reports throughput and latency.
func runWorkload(ctx context.Context, root string, v variant, w workload, d time.Duration) (Result, error) {
	dir, err := os.MkdirTemp(root, "run-")
	if err != nil {
		return Result{}, err
	}
	defer removeAll(dir)
	l, err := storage.Open(dir, storage.Options{Backend: v.backend, DirectIO: v.direct, Fsync: w.fsync})
	if err != nil {
		if v.backend == storage.BackendURing {
			return Result{}, fmt.Errorf("%w: %v", errSkip, err)
		}
		return Result{}, err
	}
	topics := make([]*topicWriter, w.topics)
	for i := range topics {
		topics[i] = &topicWriter{l: l, name: fmt.Sprintf("topic_%d", i), seg: 1}
		if err := l.CreateSegment(topics[i].name, 1, 1, 0); err != nil {
			_ = l.Close() // the create error is the one to report
			return Result{}, err
		}
	}
	payload := make([]byte, w.maxSize)
	for i := range payload {
		payload[i] = byte(i)
	}
	var (
		stop    atomic.Bool
		wg      sync.WaitGroup
		hists   = make([]histogram, w.writers)
		entries = make([]uint64, w.writers)
		bytes   = make([]uint64, w.writers)
		errs    = make(chan error, w.writers)
	)
	runtime.GC()
	start := time.Now()
	for i := range w.writers {
		wg.Go(func() {
			t := topics[i%len(topics)]
			rng := rand.New(rand.NewPCG(uint64(i), 42))
			recs := make([]storage.Record, max(w.batch, 1))
			for !stop.Load() {
				var n int
				for j := range recs {
					size := w.minSize + rng.IntN(w.maxSize-w.minSize+1)
					recs[j].Value = payload[:size]
					n += size
				}
				t0 := time.Now()
				if err := t.append(ctx, recs); err != nil {
					errs <- err
					return
				}
				hists[i].record(time.Since(t0))
				entries[i] += uint64(len(recs))
				bytes[i] += uint64(n)
			}
		})
	}
	timer := time.NewTimer(d)
	select {
	case <-timer.C:
	case <-ctx.Done():
	case err = <-errs:
	}
	stop.Store(true)
	wg.Wait()
	elapsed := time.Since(start)
	if cerr := l.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return Result{}, err
	}
	unix.Sync() // start the next run with no dirty pages

	r := Result{Name: w.name, Backend: v.name(), Fsync: w.fsync, Writers: w.writers, Topics: w.topics, Elapsed: elapsed}
	var h histogram
	for i := range w.writers {
		h.merge(&hists[i])
		r.Entries += entries[i]
		r.Bytes += bytes[i]
	}
	r.P50, r.P99 = h.quantile(0.50), h.quantile(0.99)
	r.EntriesPS = float64(r.Entries) / elapsed.Seconds()
	r.MBps = float64(r.Bytes) / elapsed.Seconds() / 1e6
	return r, nil
}

// topicWriter appends to a topic's current segment and rolls over to the
// next one when it is full, as a broker would.
type topicWriter struct {
	l    *storage.Log
	name string
	mu   sync.Mutex
	seg  storage.SegmentID
	base storage.Offset
}

func (t *topicWriter) append(ctx context.Context, recs []storage.Record) error {
	for {
		t.mu.Lock()
		seg := t.seg
		t.mu.Unlock()
		_, err := t.l.Append(ctx, t.name, seg, uint64(seg), recs)
		if !errors.Is(err, storage.ErrSegmentFull) && !errors.Is(err, storage.ErrSealed) {
			return err
		}
		if err := t.rollover(ctx, seg); err != nil {
			return err
		}
	}
}

func (t *topicWriter) rollover(ctx context.Context, full storage.SegmentID) error {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.seg != full {
		return nil // another writer rolled over already
	}
	n, err := t.l.Seal(ctx, t.name, full, uint64(full))
	if err != nil {
		return err
	}
	t.base += storage.Offset(n)
	t.seg = full + 1
	return t.l.CreateSegment(t.name, t.seg, uint64(t.seg), t.base)
}

// removeAll deletes benchmark files; a failure only leaves a temp directory.
func removeAll(path string) { _ = os.RemoveAll(path) }
