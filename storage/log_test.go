package storage

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"
)

// forEachBackend runs fn on every write path: each backend, with buffered
// and with direct I/O. io_uring is skipped where the kernel or sandbox
// refuses it.
func forEachBackend(t *testing.T, fn func(t *testing.T, opts Options)) {
	for _, b := range []Backend{BackendPwrite, BackendURing} {
		for _, direct := range []bool{false, true} {
			name := string(b)
			if direct {
				name += "+direct"
			}
			t.Run(name, func(t *testing.T) {
				if b == BackendURing {
					skipWithoutURing(t)
				}
				fn(t, Options{Backend: b, DirectIO: direct})
			})
		}
	}
}

func skipWithoutURing(t testing.TB) {
	t.Helper()
	ub, err := newURingBackend()
	if err != nil {
		t.Skipf("io_uring unavailable here: %v", err)
	}
	ub.close()
}

func openTest(t testing.TB, dir string, opts Options) *Log {
	t.Helper()
	l, err := Open(dir, opts)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	t.Cleanup(func() { l.Close() })
	return l
}

func rec(s string) Record { return Record{Value: []byte(s)} }

func mustAppend(t testing.TB, l *Log, topic string, id SegmentID, epoch uint64, recs ...Record) AppendResult {
	t.Helper()
	res, err := l.Append(context.Background(), topic, id, epoch, recs)
	if err != nil {
		t.Fatalf("Append(%s/%d): %v", topic, id, err)
	}
	return res
}

func mustCreate(t testing.TB, l *Log, topic string, id SegmentID, epoch uint64, base Offset) {
	t.Helper()
	if err := l.CreateSegment(topic, id, epoch, base); err != nil {
		t.Fatalf("CreateSegment(%s/%d): %v", topic, id, err)
	}
}

func values(es []Entry) []string {
	out := make([]string, len(es))
	for i, e := range es {
		out[i] = string(e.Value)
	}
	return out
}

func TestLog_AppendRead(t *testing.T) {
	forEachBackend(t, func(t *testing.T, opts Options) {
		l := openTest(t, t.TempDir(), opts)
		mustCreate(t, l, "orders", 1, 7, 100)
		hdrs := []Header{{"Nats-Msg-Id", "a"}, {"X", "1"}, {"X", "2"}, {"", ""}}
		res := mustAppend(t, l, "orders", 1, 7,
			Record{Value: []byte("one"), Headers: hdrs, Timestamp: 42},
			Record{}, // empty payload round-trips
			rec("three"))
		if res.FirstIndex != 0 || res.FirstOffset != 100 || res.Count != 3 {
			t.Fatalf("result = %+v", res)
		}
		res = mustAppend(t, l, "orders", 1, 7, rec("four"))
		if res.FirstIndex != 3 || res.FirstOffset != 103 {
			t.Fatalf("second result = %+v", res)
		}
		es, err := l.Read("orders", 1, 0, ReadLimits{})
		if err != nil {
			t.Fatal(err)
		}
		if got := values(es); fmt.Sprint(got) != fmt.Sprint([]string{"one", "", "three", "four"}) {
			t.Fatalf("values = %q", got)
		}
		if e := es[0]; e.Timestamp != 42 || len(e.Headers) != len(hdrs) || e.Offset != 100 || e.Index != 0 || e.Segment != 1 {
			t.Fatalf("entry 0 = %+v", e)
		}
		for i, h := range hdrs {
			if es[0].Headers[i] != h {
				t.Fatalf("header %d = %+v, want %+v", i, es[0].Headers[i], h)
			}
		}
		if es[2].Timestamp == 0 || es[3].Offset != 103 {
			t.Fatalf("entry 2/3 = %+v / %+v", es[2], es[3])
		}
		// Reading at the count is empty; past it is out of range.
		if es, err := l.Read("orders", 1, 4, ReadLimits{}); err != nil || len(es) != 0 {
			t.Fatalf("read at end = %v, %v", es, err)
		}
		if _, err := l.Read("orders", 1, 5, ReadLimits{}); !errors.Is(err, ErrOffsetOutOfRange) {
			t.Fatalf("read past end err = %v", err)
		}
		if _, err := l.Read("orders", 2, 0, ReadLimits{}); !errors.Is(err, ErrSegmentNotFound) {
			t.Fatalf("read missing segment err = %v", err)
		}
	})
}

func TestLog_ReadLimitsAndIndex(t *testing.T) {
	forEachBackend(t, func(t *testing.T, opts Options) {
		opts.IndexIntervalBytes = 256 // many index points
		l := openTest(t, t.TempDir(), opts)
		mustCreate(t, l, "t", 1, 1, 0)
		const n = 2000
		recs := make([]Record, n)
		for i := range recs {
			recs[i] = rec(fmt.Sprintf("v%05d-%s", i, bytes.Repeat([]byte("x"), i%97)))
		}
		for i := 0; i < n; i += 100 {
			mustAppend(t, l, "t", 1, 1, recs[i:i+100]...)
		}
		// Every position reads back exactly, through the index.
		for _, from := range []uint64{0, 1, 2, 99, 100, 101, 777, 1500, 1999} {
			es, err := l.Read("t", 1, from, ReadLimits{MaxEntries: 3})
			if err != nil {
				t.Fatal(err)
			}
			want := min(3, n-int(from))
			if len(es) != want {
				t.Fatalf("from %d: %d entries, want %d", from, len(es), want)
			}
			for i, e := range es {
				if e.Index != from+uint64(i) || !bytes.Equal(e.Value, recs[from+uint64(i)].Value) {
					t.Fatalf("from %d: entry %d = %d %q", from, i, e.Index, e.Value)
				}
			}
		}
		// Byte limit: at least one entry, never more bytes than asked after it.
		es, err := l.Read("t", 1, 0, ReadLimits{MaxBytes: 1})
		if err != nil || len(es) != 1 {
			t.Fatalf("MaxBytes 1 = %d entries, %v", len(es), err)
		}
		es, _ = l.Read("t", 1, 10, ReadLimits{MaxBytes: 1000})
		var total int64
		for _, e := range es {
			total += frameSize(&e.Record)
		}
		if total > 1000 || len(es) < 2 {
			t.Fatalf("MaxBytes 1000 returned %d entries, %d bytes", len(es), total)
		}
		// All of it in one read.
		es, _ = l.Read("t", 1, 0, ReadLimits{MaxEntries: n, MaxBytes: 1 << 30})
		if len(es) != n {
			t.Fatalf("full read = %d entries", len(es))
		}
	})
}

func TestLog_BatchAllOrNothing(t *testing.T) {
	forEachBackend(t, func(t *testing.T, opts Options) {
		opts.MaxEntryBytes = 1024
		l := openTest(t, t.TempDir(), opts)
		mustCreate(t, l, "t", 1, 1, 0)
		big := Record{Value: make([]byte, 2000)}
		_, err := l.Append(context.Background(), "t", 1, 1, []Record{rec("a"), big, rec("c")})
		if !errors.Is(err, ErrEntryTooLarge) {
			t.Fatalf("err = %v, want ErrEntryTooLarge", err)
		}
		if _, err := l.Append(context.Background(), "t", 1, 1, nil); !errors.Is(err, ErrEmptyBatch) {
			t.Fatalf("empty batch err = %v", err)
		}
		if got := l.Segments("t")[0].Count; got != 0 {
			t.Fatalf("count after refused batch = %d", got)
		}
		mustAppend(t, l, "t", 1, 1, rec("ok"))
		if es, _ := l.Read("t", 1, 0, ReadLimits{}); len(es) != 1 || string(es[0].Value) != "ok" {
			t.Fatalf("entries = %q", values(es))
		}
	})
}

func TestLog_EpochFencing(t *testing.T) {
	forEachBackend(t, func(t *testing.T, opts Options) {
		l := openTest(t, t.TempDir(), opts)
		mustCreate(t, l, "t", 1, 5, 0)
		for _, epoch := range []uint64{4, 6, 0} {
			if _, err := l.Append(context.Background(), "t", 1, epoch, []Record{rec("x")}); !errors.Is(err, ErrEpochMismatch) {
				t.Fatalf("append at epoch %d: err = %v", epoch, err)
			}
			if _, err := l.Seal(context.Background(), "t", 1, epoch); !errors.Is(err, ErrEpochMismatch) {
				t.Fatalf("seal at epoch %d: err = %v", epoch, err)
			}
		}
		mustAppend(t, l, "t", 1, 5, rec("x"))
		// Re-creating with another epoch or base is refused; the same is a no-op.
		if err := l.CreateSegment("t", 1, 6, 0); !errors.Is(err, ErrSegmentExists) {
			t.Fatalf("recreate other epoch: %v", err)
		}
		if err := l.CreateSegment("t", 1, 5, 1); !errors.Is(err, ErrSegmentExists) {
			t.Fatalf("recreate other base: %v", err)
		}
		mustCreate(t, l, "t", 1, 5, 0)
	})
}

func TestLog_Seal(t *testing.T) {
	forEachBackend(t, func(t *testing.T, opts Options) {
		dir := t.TempDir()
		l := openTest(t, dir, opts)
		mustCreate(t, l, "t", 1, 1, 0)
		for i := range 10 {
			mustAppend(t, l, "t", 1, 1, rec(fmt.Sprint(i)))
		}
		ctx := context.Background()
		n, err := l.Seal(ctx, "t", 1, 1)
		if err != nil || n != 10 {
			t.Fatalf("Seal = %d, %v", n, err)
		}
		if n, err := l.Seal(ctx, "t", 1, 1); err != nil || n != 10 {
			t.Fatalf("second Seal = %d, %v", n, err)
		}
		if _, err := l.Append(ctx, "t", 1, 1, []Record{rec("late")}); !errors.Is(err, ErrSealed) {
			t.Fatalf("append after seal: %v", err)
		}
		// The pre-written zeros are trimmed: the file ends with the seal frame.
		st, _ := os.Stat(filepath.Join(dir, topicsDir, "t", segmentFileName(1, logExt)))
		info := l.Segments("t")[0]
		if !info.Sealed || info.Count != 10 || st.Size() != dataStart+info.Bytes+sealFrameSize {
			t.Fatalf("info = %+v, file size %d", info, st.Size())
		}
		es, _ := l.Read("t", 1, 0, ReadLimits{})
		if len(es) != 10 {
			t.Fatalf("read sealed = %d entries", len(es))
		}
		// An empty segment seals at 0.
		mustCreate(t, l, "t", 2, 1, 10)
		if n, err := l.Seal(ctx, "t", 2, 1); err != nil || n != 0 {
			t.Fatalf("seal empty = %d, %v", n, err)
		}
	})
}

func TestLog_ConcurrentSealAndAppend(t *testing.T) {
	forEachBackend(t, func(t *testing.T, opts Options) {
		l := openTest(t, t.TempDir(), opts)
		mustCreate(t, l, "t", 1, 1, 0)
		ctx := context.Background()
		var wg sync.WaitGroup
		var mu sync.Mutex
		acked := map[string]bool{}
		for w := range 8 {
			wg.Go(func() {
				for i := 0; ; i++ {
					v := fmt.Sprintf("w%d-%d", w, i)
					_, err := l.Append(ctx, "t", 1, 1, []Record{rec(v)})
					if errors.Is(err, ErrSealed) {
						return
					}
					if err != nil {
						t.Errorf("append: %v", err)
						return
					}
					mu.Lock()
					acked[v] = true
					mu.Unlock()
				}
			})
		}
		time.Sleep(20 * time.Millisecond)
		n, err := l.Seal(ctx, "t", 1, 1)
		if err != nil {
			t.Fatal(err)
		}
		wg.Wait()
		// Rule 3: the sealed count is exactly the acknowledged entries.
		es, _ := l.Read("t", 1, 0, ReadLimits{MaxEntries: 1 << 30, MaxBytes: 1 << 30})
		if uint64(len(es)) != n || len(acked) != int(n) {
			t.Fatalf("sealed %d, read %d, acked %d", n, len(es), len(acked))
		}
		for _, e := range es {
			if !acked[string(e.Value)] {
				t.Fatalf("entry %q was never acknowledged", e.Value)
			}
		}
	})
}

func TestLog_GroupCommitOrderAndCount(t *testing.T) {
	forEachBackend(t, func(t *testing.T, opts Options) {
		l := openTest(t, t.TempDir(), opts)
		mustCreate(t, l, "t", 1, 1, 0)
		const writers, each = 32, 50
		var wg sync.WaitGroup
		for w := range writers {
			wg.Go(func() {
				for i := range each {
					recs := []Record{rec(fmt.Sprintf("%d:%d:a", w, i)), rec(fmt.Sprintf("%d:%d:b", w, i))}
					if _, err := l.Append(context.Background(), "t", 1, 1, recs); err != nil {
						t.Errorf("append: %v", err)
						return
					}
				}
			})
		}
		wg.Wait()
		es, err := l.Read("t", 1, 0, ReadLimits{MaxEntries: 1 << 20, MaxBytes: 1 << 30})
		if err != nil {
			t.Fatal(err)
		}
		if len(es) != writers*each*2 {
			t.Fatalf("read %d entries, want %d", len(es), writers*each*2)
		}
		next := make([]int, writers)
		for i := 0; i < len(es); i += 2 {
			var w, n int
			var part string
			fmt.Sscanf(string(es[i].Value), "%d:%d:%s", &w, &n, &part)
			// A batch's entries are adjacent, and each writer's batches are in order.
			if part != "a" || string(es[i+1].Value) != fmt.Sprintf("%d:%d:b", w, n) || n != next[w] {
				t.Fatalf("entries %d,%d = %q,%q (writer %d expects %d)", i, i+1, es[i].Value, es[i+1].Value, w, next[w])
			}
			next[w]++
		}
	})
}

func TestLog_ReadWhileAppending(t *testing.T) {
	forEachBackend(t, func(t *testing.T, opts Options) {
		l := openTest(t, t.TempDir(), opts)
		mustCreate(t, l, "t", 1, 1, 0)
		const total = 3000
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		var wg sync.WaitGroup
		wg.Go(func() {
			for i := 0; i < total; i += 3 {
				if _, err := l.Append(ctx, "t", 1, 1, []Record{rec(fmt.Sprint(i)), rec(fmt.Sprint(i + 1)), rec(fmt.Sprint(i + 2))}); err != nil {
					t.Errorf("append: %v", err)
					return
				}
			}
		})
		// A tailing reader sees every entry exactly once and in order.
		next := uint64(0)
		for next < total && ctx.Err() == nil {
			changed, err := l.Changed("t", 1)
			if err != nil {
				t.Fatal(err)
			}
			es, err := l.Read("t", 1, next, ReadLimits{MaxEntries: 50})
			if err != nil {
				t.Fatal(err)
			}
			for _, e := range es {
				if e.Index != next || string(e.Value) != fmt.Sprint(next) {
					t.Fatalf("entry %d = %q, want %d", e.Index, e.Value, next)
				}
				next++
			}
			if len(es) == 0 {
				select {
				case <-changed:
				case <-ctx.Done():
				}
			}
		}
		wg.Wait()
		if next != total {
			t.Fatalf("reader got %d of %d", next, total)
		}
	})
}

func TestLog_ReadOffsetAcrossSegments(t *testing.T) {
	forEachBackend(t, func(t *testing.T, opts Options) {
		l := openTest(t, t.TempDir(), opts)
		ctx := context.Background()
		// Segments 1 and 2 are local and contiguous (offsets 0..4, 5..7);
		// segment 3 (8..9) lives on another node; 4 starts at 10.
		mustCreate(t, l, "t", 1, 1, 0)
		for i := range 5 {
			mustAppend(t, l, "t", 1, 1, rec(fmt.Sprint(i)))
		}
		l.Seal(ctx, "t", 1, 1)
		mustCreate(t, l, "t", 2, 2, 5)
		mustAppend(t, l, "t", 2, 2, rec("5"), rec("6"), rec("7"))
		l.Seal(ctx, "t", 2, 2)
		mustCreate(t, l, "t", 4, 4, 10)
		mustAppend(t, l, "t", 4, 4, rec("10"))

		es, err := l.ReadOffset("t", 3, ReadLimits{})
		if err != nil || fmt.Sprint(values(es)) != "[3 4 5 6 7]" {
			t.Fatalf("ReadOffset(3) = %q, %v", values(es), err)
		}
		if es[2].Segment != 2 || es[2].Index != 0 || es[2].Offset != 5 {
			t.Fatalf("entry at offset 5 = %+v", es[2])
		}
		if es, _ := l.ReadOffset("t", 1, ReadLimits{MaxEntries: 2}); fmt.Sprint(values(es)) != "[1 2]" {
			t.Fatalf("limited = %q", values(es))
		}
		if _, err := l.ReadOffset("t", 8, ReadLimits{}); !errors.Is(err, ErrOffsetOutOfRange) {
			t.Fatalf("offset in the gap: %v", err)
		}
		if es, err := l.ReadOffset("t", 10, ReadLimits{}); err != nil || fmt.Sprint(values(es)) != "[10]" {
			t.Fatalf("ReadOffset(10) = %q, %v", values(es), err)
		}
		if es, err := l.ReadOffset("t", 11, ReadLimits{}); err != nil || len(es) != 0 {
			t.Fatalf("ReadOffset at end = %q, %v", values(es), err)
		}
		if _, err := l.ReadOffset("t", 12, ReadLimits{}); !errors.Is(err, ErrOffsetOutOfRange) {
			t.Fatalf("past the end: %v", err)
		}
		if _, err := l.ReadOffset("nope", 0, ReadLimits{}); !errors.Is(err, ErrSegmentNotFound) {
			t.Fatalf("unknown topic: %v", err)
		}
	})
}

func TestLog_Reopen(t *testing.T) {
	forEachBackend(t, func(t *testing.T, opts Options) {
		dir := t.TempDir()
		ctx := context.Background()
		l, err := Open(dir, opts)
		if err != nil {
			t.Fatal(err)
		}
		mustCreate(t, l, "a/b c", 1, 3, 0) // a name that needs escaping
		mustAppend(t, l, "a/b c", 1, 3, rec("x"), rec("y"))
		if _, err := l.Seal(ctx, "a/b c", 1, 3); err != nil {
			t.Fatal(err)
		}
		mustCreate(t, l, "a/b c", 2, 4, 2)
		mustAppend(t, l, "a/b c", 2, 4, Record{Value: []byte("z"), Headers: []Header{{"k", "v"}}})
		if err := l.Close(); err != nil {
			t.Fatal(err)
		}
		if _, err := l.Read("a/b c", 1, 0, ReadLimits{}); !errors.Is(err, ErrClosed) {
			t.Fatalf("read after close: %v", err)
		}

		l = openTest(t, dir, opts)
		if got := l.Topics(); fmt.Sprint(got) != "[a/b c]" {
			t.Fatalf("topics = %q", got)
		}
		segs := l.Segments("a/b c")
		if len(segs) != 2 || !segs[0].Sealed || segs[0].Count != 2 || segs[1].Sealed || segs[1].Count != 1 ||
			segs[1].Epoch != 4 || segs[1].Base != 2 {
			t.Fatalf("segments = %+v", segs)
		}
		es, err := l.ReadOffset("a/b c", 0, ReadLimits{})
		if err != nil || fmt.Sprint(values(es)) != "[x y z]" || es[2].Headers[0] != (Header{"k", "v"}) {
			t.Fatalf("read back = %q, %v", values(es), err)
		}
		// The open segment keeps taking appends after the restart.
		res := mustAppend(t, l, "a/b c", 2, 4, rec("w"))
		if res.FirstIndex != 1 || res.FirstOffset != 3 {
			t.Fatalf("append after reopen = %+v", res)
		}
	})
}

func TestLog_DeleteSegment(t *testing.T) {
	forEachBackend(t, func(t *testing.T, opts Options) {
		dir := t.TempDir()
		l := openTest(t, dir, opts)
		ctx := context.Background()
		mustCreate(t, l, "t", 1, 1, 0)
		mustAppend(t, l, "t", 1, 1, rec("a"))
		if err := l.DeleteSegment("t", 1); !errors.Is(err, ErrNotSealed) {
			t.Fatalf("delete open segment: %v", err)
		}
		l.Seal(ctx, "t", 1, 1)
		if err := l.DeleteSegment("t", 1); err != nil {
			t.Fatal(err)
		}
		if _, err := l.Read("t", 1, 0, ReadLimits{}); !errors.Is(err, ErrSegmentNotFound) {
			t.Fatalf("read deleted: %v", err)
		}
		matches, _ := filepath.Glob(filepath.Join(dir, topicsDir, "t", "*"))
		if len(matches) != 0 {
			t.Fatalf("files left: %v", matches)
		}
		if err := l.DeleteSegment("t", 1); !errors.Is(err, ErrSegmentNotFound) {
			t.Fatalf("second delete: %v", err)
		}
	})
}

func TestLog_SegmentFull(t *testing.T) {
	forEachBackend(t, func(t *testing.T, opts Options) {
		opts.MaxEntryBytes = 1000
		opts.MaxSegmentBytes = dataStart + 1000 + sealFrameSize + 100
		l := openTest(t, t.TempDir(), opts)
		mustCreate(t, l, "t", 1, 1, 0)
		mustAppend(t, l, "t", 1, 1, Record{Value: make([]byte, 900)})
		if _, err := l.Append(context.Background(), "t", 1, 1, []Record{{Value: make([]byte, 900)}}); !errors.Is(err, ErrSegmentFull) {
			t.Fatalf("err = %v, want ErrSegmentFull", err)
		}
		// A full segment can still be sealed.
		if n, err := l.Seal(context.Background(), "t", 1, 1); err != nil || n != 1 {
			t.Fatalf("seal full segment = %d, %v", n, err)
		}
	})
}

func TestLog_FsyncPolicies(t *testing.T) {
	for _, p := range []FsyncPolicy{FsyncInterval, FsyncNever} {
		t.Run(string(p), func(t *testing.T) {
			forEachBackend(t, func(t *testing.T, opts Options) {
				opts.Fsync, opts.FsyncInterval = p, time.Millisecond
				dir := t.TempDir()
				l, err := Open(dir, opts)
				if err != nil {
					t.Fatal(err)
				}
				mustCreate(t, l, "t", 1, 1, 0)
				for i := range 100 {
					mustAppend(t, l, "t", 1, 1, rec(fmt.Sprint(i)))
				}
				time.Sleep(5 * time.Millisecond) // let an interval sync run
				if err := l.Close(); err != nil {
					t.Fatal(err)
				}
				l = openTest(t, dir, opts)
				if got := l.Segments("t")[0].Count; got != 100 {
					t.Fatalf("count after reopen = %d", got)
				}
			})
		})
	}
}

func TestLog_Validation(t *testing.T) {
	l := openTest(t, t.TempDir(), Options{})
	for _, topic := range []string{"", string(make([]byte, MaxTopicLen+1)), "bad\xff"} {
		if err := l.CreateSegment(topic, 1, 1, 0); !errors.Is(err, ErrInvalidTopic) {
			t.Fatalf("topic %q: %v", topic, err)
		}
	}
	long := string(bytes.Repeat([]byte("é"), MaxTopicLen/2)) // escapes past 255 bytes
	mustCreate(t, l, long, 1, 1, 0)
	mustAppend(t, l, long, 1, 1, rec("x"))
	for _, bad := range []Options{
		{Fsync: "sometimes"},
		{Backend: "mmap"},
		{MaxEntryBytes: 5},
		{FsyncInterval: -1},
		{MaxSegmentBytes: 100},
	} {
		if _, err := Open(t.TempDir(), bad); !errors.Is(err, ErrInvalidOptions) {
			t.Fatalf("Open(%+v) = %v, want ErrInvalidOptions", bad, err)
		}
	}
}

func TestLog_DirectoryLock(t *testing.T) {
	dir := t.TempDir()
	openTest(t, dir, Options{})
	if l, err := Open(dir, Options{}); err == nil {
		l.Close()
		t.Fatal("second Open of the same directory succeeded")
	}
}

func TestLog_FileCacheEviction(t *testing.T) {
	l := openTest(t, t.TempDir(), Options{MaxOpenReadFiles: 2})
	ctx := context.Background()
	for id := SegmentID(1); id <= 6; id++ {
		mustCreate(t, l, "t", id, 1, Offset(id-1))
		mustAppend(t, l, "t", id, 1, rec(fmt.Sprint(id)))
		if _, err := l.Seal(ctx, "t", id, 1); err != nil {
			t.Fatal(err)
		}
	}
	for round := range 3 {
		for id := SegmentID(1); id <= 6; id++ {
			es, err := l.Read("t", id, 0, ReadLimits{})
			if err != nil || len(es) != 1 || string(es[0].Value) != fmt.Sprint(id) {
				t.Fatalf("round %d segment %d: %q, %v", round, id, values(es), err)
			}
		}
	}
	// Count read descriptors: a writer that has not yet exited after its
	// seal still owns its file, which the bound does not cover.
	open := 0
	l.eachSegment(func(s *segment) {
		s.fileMu.RLock()
		if s.f != nil && s.readOnly.Load() {
			open++
		}
		s.fileMu.RUnlock()
	})
	if open > 2 {
		t.Fatalf("%d sealed segment files open for reading, bound is 2", open)
	}
}

func TestLog_LargeEntriesAndBatches(t *testing.T) {
	forEachBackend(t, func(t *testing.T, opts Options) {
		l := openTest(t, t.TempDir(), opts)
		mustCreate(t, l, "t", 1, 1, 0)
		big := bytes.Repeat([]byte("0123456789abcdef"), 3<<16) // 3 MiB: larger than a kept direct stage
		mustAppend(t, l, "t", 1, 1, rec("small"), Record{Value: big}, rec("after"))
		batch := make([]Record, 300)
		for i := range batch {
			batch[i] = Record{Value: bytes.Repeat([]byte{byte(i)}, 7000+i)} // ~2 MiB, unaligned sizes
		}
		mustAppend(t, l, "t", 1, 1, batch...)
		mustAppend(t, l, "t", 1, 1, rec("tail"))
		es, err := l.Read("t", 1, 0, ReadLimits{MaxEntries: 1000, MaxBytes: 64 << 20})
		if err != nil || len(es) != 304 {
			t.Fatalf("read %d entries, %v", len(es), err)
		}
		if !bytes.Equal(es[1].Value, big) || string(es[2].Value) != "after" || string(es[303].Value) != "tail" {
			t.Fatal("large entries did not round-trip")
		}
		for i, r := range batch {
			if !bytes.Equal(es[3+i].Value, r.Value) {
				t.Fatalf("batch entry %d differs", i)
			}
		}
	})
}

// TestLog_SwitchDirectIO reopens one open segment alternately with buffered
// and direct writes: the direct writer must pick up the partial last block
// the buffered writer left, and the other way round.
func TestLog_SwitchDirectIO(t *testing.T) {
	dir := t.TempDir()
	var want []string
	for round := range 6 {
		l, err := Open(dir, Options{DirectIO: round%2 == 1})
		if err != nil {
			t.Fatal(err)
		}
		if round == 0 {
			mustCreate(t, l, "t", 1, 1, 0)
		}
		for i := range 5 {
			v := fmt.Sprintf("r%d-%d-%s", round, i, bytes.Repeat([]byte("x"), 100*i+round))
			mustAppend(t, l, "t", 1, 1, rec(v))
			want = append(want, v)
		}
		es, err := l.Read("t", 1, 0, ReadLimits{MaxEntries: 1000})
		if err != nil || fmt.Sprint(values(es)) != fmt.Sprint(want) {
			t.Fatalf("round %d: read %d entries (%v), want %d", round, len(es), err, len(want))
		}
		if err := l.Close(); err != nil {
			t.Fatal(err)
		}
	}
}
