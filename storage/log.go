package storage

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// Log is a node's segment store: topics, each holding numbered segments. It
// is safe for concurrent use. Create it with Open and release it with Close.
type Log struct {
	dir     string
	opts    Options
	log     *slog.Logger
	backend ioBackend
	files   *fileCache
	lock    *os.File // holds the flock on dir/LOCK

	// createMu serializes file-system changes to the set of segments
	// (create and delete), so that they run outside mu.
	createMu sync.Mutex

	mu struct {
		sync.RWMutex
		closed      bool
		topics      map[string]*topicSegments
		quarantined []Quarantined
	}

	wg sync.WaitGroup // owner goroutines
}

// topicSegments is a topic's local segments.
type topicSegments struct {
	name string
	dir  string
	segs []*segment // sorted by id
}

func (t *topicSegments) find(id SegmentID) (*segment, int) {
	i, ok := slices.BinarySearchFunc(t.segs, id, func(s *segment, id SegmentID) int {
		return cmpUint(uint64(s.id), uint64(id))
	})
	if !ok {
		return nil, i
	}
	return t.segs[i], i
}

func cmpUint(a, b uint64) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

// Quarantined describes a segment file that Open found corrupt and left
// untouched on disk; it is not served. Repair it from a replica.
type Quarantined struct {
	Path string
	Err  error
}

// Open opens (creating if needed) the log in dir, recovering every segment
// (see recoverSegment), and starts a writer for each open segment. Only one
// process may have a directory open: a second Open fails.
func Open(dir string, opts Options) (*Log, error) {
	if err := opts.Validate(); err != nil {
		return nil, err
	}
	opts = opts.withDefaults()
	backend, err := openBackend(opts.Backend, opts.Logger)
	if err != nil {
		return nil, err
	}
	l, err := openWith(dir, opts, backend)
	if err != nil {
		_ = backend.close() // the open error is the one to report
		return nil, err
	}
	return l, nil
}

// openWith opens the log on an already opened backend, which the log owns
// from then on (Close closes it). opts carries its defaults. Tests use it to
// run the log on a fault-injecting backend.
func openWith(dir string, opts Options, backend ioBackend) (*Log, error) {
	l := &Log{
		dir:     dir,
		opts:    opts,
		log:     opts.Logger.With("component", "storage"),
		files:   newFileCache(opts.MaxOpenReadFiles),
		backend: backend,
	}
	l.mu.topics = make(map[string]*topicSegments)
	if err := mkdirDurable(filepath.Join(dir, topicsDir)); err != nil {
		return nil, fmt.Errorf("storage: create %s: %w", dir, err)
	}
	lock, err := lockDir(dir)
	if err != nil {
		return nil, err
	}
	l.lock = lock
	if l.opts.DirectIO && l.opts.Fsync == FsyncAlways {
		if err := probeDirectIO(dir); err != nil {
			l.log.Warn("O_DIRECT writes fail in this directory, using buffered writes", "dir", dir, "err", err)
			l.opts.DirectIO = false
		}
	}
	if err := l.recoverAll(); err != nil {
		l.stopWriters()
		_ = l.closeFiles() // the recovery error is the one to report
		_ = l.lock.Close()
		return nil, err
	}
	l.log.Info("storage opened", "dir", dir, "backend", l.backend.name(), "fsync", string(opts.Fsync),
		"topics", len(l.mu.topics), "quarantined", len(l.mu.quarantined))
	return l, nil
}

// lockDir takes an exclusive flock on dir/LOCK.
func lockDir(dir string) (*os.File, error) {
	f, err := os.OpenFile(filepath.Join(dir, lockFile), os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return nil, fmt.Errorf("storage: open lock file: %w", err)
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		_ = f.Close() // the lock error is the one to report
		return nil, fmt.Errorf("storage: data directory %s is in use by another process: %w", dir, err)
	}
	return f, nil
}

// recoverAll opens every segment under dir/topics.
func (l *Log) recoverAll() error {
	root := filepath.Join(l.dir, topicsDir)
	dirs, err := os.ReadDir(root)
	if err != nil {
		return fmt.Errorf("storage: list topics: %w", err)
	}
	for _, d := range dirs {
		if !d.IsDir() {
			continue
		}
		if err := l.recoverTopicDir(filepath.Join(root, d.Name())); err != nil {
			return err
		}
	}
	for _, t := range l.mu.topics {
		for _, s := range t.segs {
			if !s.mu.sealed && s.mu.failed == nil {
				s.startOwner()
			}
		}
	}
	return nil
}

func (l *Log) recoverTopicDir(dir string) error {
	names, err := os.ReadDir(dir)
	if err != nil {
		return fmt.Errorf("storage: list %s: %w", dir, err)
	}
	for _, e := range names {
		name := e.Name()
		path := filepath.Join(dir, name)
		if strings.HasSuffix(name, tmpExt) {
			_ = os.Remove(path) // an interrupted index write; a leftover is harmless
			continue
		}
		id, ok := parseSegmentFileName(name)
		if !ok {
			continue
		}
		s, err := l.recoverSegment(path, id)
		var ce *CorruptionError
		switch {
		case errors.Is(err, errIncomplete):
			l.log.Warn("removing segment file whose creation did not complete", "path", path, "err", err)
			if err := os.Remove(path); err != nil {
				return fmt.Errorf("storage: remove incomplete segment: %w", err)
			}
			continue
		case errors.As(err, &ce):
			l.log.Error("segment quarantined: corrupt file left untouched and not served", "path", path, "err", err)
			l.mu.quarantined = append(l.mu.quarantined, Quarantined{Path: path, Err: err})
			continue
		case err != nil:
			return fmt.Errorf("storage: recover %s: %w", path, err)
		}
		t := l.mu.topics[s.topic]
		if t == nil {
			t = &topicSegments{name: s.topic, dir: dir}
			l.mu.topics[s.topic] = t
		}
		_, i := t.find(s.id)
		t.segs = slices.Insert(t.segs, i, s)
	}
	return nil
}

// Backend reports the active I/O backend: "io_uring" or "pwrite".
func (l *Log) Backend() string { return l.backend.name() }

// Quarantined lists the segment files Open found corrupt and did not serve.
func (l *Log) Quarantined() []Quarantined {
	l.mu.RLock()
	defer l.mu.RUnlock()
	return slices.Clone(l.mu.quarantined)
}

// segment returns the segment, or ErrSegmentNotFound / ErrClosed.
func (l *Log) segment(topic string, id SegmentID) (*segment, error) {
	l.mu.RLock()
	defer l.mu.RUnlock()
	if l.mu.closed {
		return nil, ErrClosed
	}
	if t := l.mu.topics[topic]; t != nil {
		if s, _ := t.find(id); s != nil {
			return s, nil
		}
	}
	return nil, fmt.Errorf("%w: topic %q segment %d", ErrSegmentNotFound, topic, id)
}

// CreateSegment creates segment id of topic, open for appends at epoch, whose
// first entry will have topic offset base. The file and its directory entry
// are durable when it returns. Creating a segment that exists, open, with the
// same epoch and base is a no-op; otherwise it is ErrSegmentExists.
func (l *Log) CreateSegment(topic string, id SegmentID, epoch uint64, base Offset) error {
	if !validTopic(topic) {
		return fmt.Errorf("%w: %q", ErrInvalidTopic, topic)
	}
	l.createMu.Lock()
	defer l.createMu.Unlock()
	if s, err := l.segment(topic, id); err == nil {
		if s.epoch == epoch && s.base == base && !s.isSealed() {
			return nil
		}
		return fmt.Errorf("%w: topic %q segment %d (epoch %d, base %d, sealed %v)",
			ErrSegmentExists, topic, id, s.epoch, s.base, s.isSealed())
	} else if errors.Is(err, ErrClosed) {
		return err
	}
	dir := filepath.Join(l.dir, topicsDir, topicDirName(topic))
	if err := mkdirDurable(dir); err != nil {
		return fmt.Errorf("storage: create topic directory: %w", err)
	}
	h := segmentHeader{topic: topic, id: id, epoch: epoch, base: base, created: time.Now().UnixNano()}
	path := filepath.Join(dir, segmentFileName(id, logExt))
	f, err := createFileDurable(path, h.encode())
	if err != nil {
		return fmt.Errorf("storage: create topic %q segment %d: %w", topic, id, err)
	}
	s := &segment{l: l, topic: topic, id: id, epoch: epoch, base: base, created: h.created, path: path, f: f}
	s.mu.index.interval = l.opts.IndexIntervalBytes
	s.mu.end = dataStart
	s.w.size, s.w.preallocEnd, s.w.marked = dataStart, dataStart, dataStart

	l.mu.Lock()
	defer l.mu.Unlock()
	if l.mu.closed {
		_ = f.Close() // created and synced; it is recovered on the next Open
		return ErrClosed
	}
	t := l.mu.topics[topic]
	if t == nil {
		t = &topicSegments{name: topic, dir: dir}
		l.mu.topics[topic] = t
	}
	_, i := t.find(id)
	t.segs = slices.Insert(t.segs, i, s)
	s.startOwner()
	return nil
}

// goFunc runs fn on a goroutine that Close waits for.
func (l *Log) goFunc(fn func()) {
	l.wg.Add(1)
	go func() {
		defer l.wg.Done()
		fn()
	}()
}

// Close stops every writer (syncing what it wrote and marking it durable),
// closes every file and releases the directory lock. Appends waiting in a
// writer's queue fail with ErrClosed. It returns any failure of a writer's
// final sync. Close is idempotent.
func (l *Log) Close() error {
	l.mu.Lock()
	if l.mu.closed {
		l.mu.Unlock()
		return nil
	}
	l.mu.closed = true
	l.mu.Unlock()

	// 1. Stop the writers; each syncs what it wrote before exiting.
	l.stopWriters()
	var errs []error
	l.eachSegment(func(s *segment) {
		if s.closeErr != nil {
			errs = append(errs, s.closeErr)
		}
	})
	// 2. Close the files, 3. the backend, 4. the lock.
	errs = append(errs, l.closeFiles(), l.backend.close(), l.lock.Close())
	return errors.Join(errs...)
}

// stopWriters stops every owner goroutine and waits for them.
func (l *Log) stopWriters() {
	l.eachSegment((*segment).stopWriter)
	l.wg.Wait()
}

func (l *Log) closeFiles() error {
	var first error
	l.eachSegment(func(s *segment) {
		l.files.forget(s)
		if err := s.closeFile(false); err != nil && first == nil {
			first = fmt.Errorf("storage: close %s: %w", s.path, err)
		}
	})
	return first
}

func (l *Log) eachSegment(fn func(*segment)) {
	l.mu.RLock()
	defer l.mu.RUnlock()
	for _, t := range l.mu.topics {
		for _, s := range t.segs {
			fn(s)
		}
	}
}
