//go:build linux

package storage

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// newTestURing returns an io_uring backend closed at the end of the test, or
// skips the test where io_uring is unavailable (Docker, gVisor, sysctl).
func newTestURing(tb testing.TB) *uringBackend {
	tb.Helper()
	be, err := newURingBackend()
	if errors.Is(err, errURingUnavailable) {
		tb.Skipf("io_uring unavailable: %v", err)
	}
	if err != nil {
		tb.Fatalf("newURingBackend: %v", err)
	}
	b := be.(*uringBackend)
	tb.Cleanup(func() {
		if err := b.close(); err != nil {
			tb.Errorf("close: %v", err)
		}
	})
	return b
}

// openTestFile creates a file in a test directory and returns its fd.
func openTestFile(t *testing.T, name string, flag int) (int, string) {
	t.Helper()
	path := filepath.Join(t.TempDir(), name)
	f, err := os.OpenFile(path, flag|os.O_CREATE, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	return int(f.Fd()), path
}

// randBufs returns n buffers of random contents and lengths in [0, maxLen].
func randBufs(rng *rand.Rand, n, maxLen int) [][]byte {
	bufs := make([][]byte, n)
	for i := range bufs {
		bufs[i] = make([]byte, rng.IntN(maxLen+1))
		for j := range bufs[i] {
			bufs[i][j] = byte(rng.Uint32())
		}
	}
	return bufs
}

func checkFile(t *testing.T, path string, want []byte) {
	t.Helper()
	got, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Fatalf("%s: %d bytes differ from the %d written", path, len(got), len(want))
	}
}

func TestURingWriteSyncRoundTrip(t *testing.T) {
	b := newTestURing(t)
	rng := rand.New(rand.NewPCG(1, 2))
	big := [][]byte{bytes.Repeat([]byte("walrus-io_uring!"), 5<<20/16)} // 5 MiB
	cases := map[string][][]byte{
		"one byte":     {{42}},
		"4KiB":         randBufs(rng, 1, 4096),
		"few":          randBufs(rng, 7, 3000),
		"2500 small":   randBufs(rng, 2500, 40), // three WRITEV SQEs
		"70000 small":  randBufs(rng, 70000, 3), // more than one round
		"with empties": {{}, {1, 2}, {}, {}, {3}, {}},
		"5MiB":         big,
	}
	for name, bufs := range cases {
		t.Run(name, func(t *testing.T) {
			fd, path := openTestFile(t, "f", os.O_RDWR)
			if err := b.writeAt(fd, 0, bufs, true); err != nil {
				t.Fatal(err)
			}
			checkFile(t, path, bytes.Join(bufs, nil))
		})
	}
}

func TestURingOffsetsThenSync(t *testing.T) {
	b := newTestURing(t)
	fd, path := openTestFile(t, "f", os.O_RDWR)
	rng := rand.New(rand.NewPCG(3, 4))
	var want []byte
	for i := range 50 {
		bufs := randBufs(rng, 1+rng.IntN(5), 9000)
		if err := b.writeAt(fd, int64(len(want)), bufs, i%10 == 0); err != nil {
			t.Fatal(err)
		}
		want = append(want, bytes.Join(bufs, nil)...)
	}
	if err := b.writeAt(fd, int64(len(want)), nil, false); err != nil {
		t.Fatalf("empty write: %v", err)
	}
	if err := b.writeAt(fd, int64(len(want)), [][]byte{{}}, true); err != nil {
		t.Fatalf("empty write with sync: %v", err)
	}
	if err := b.sync(fd); err != nil {
		t.Fatal(err)
	}
	checkFile(t, path, want)
}

func TestURingErrors(t *testing.T) {
	b := newTestURing(t)
	rofd, _ := openTestFile(t, "ro", os.O_RDONLY)
	for _, sync := range []bool{false, true} {
		err := b.writeAt(rofd, 0, [][]byte{[]byte("x"), make([]byte, 5000)}, sync)
		if !errors.Is(err, unix.EBADF) {
			t.Errorf("writeAt(read-only fd, sync=%t) = %v, want EBADF", sync, err)
		}
		var fe *FsyncError
		if errors.As(err, &fe) {
			t.Errorf("writeAt(read-only fd, sync=%t) = %v, a write failure reported as FsyncError", sync, err)
		}
	}

	f, err := os.Create(filepath.Join(t.TempDir(), "closed"))
	if err != nil {
		t.Fatal(err)
	}
	closedFD := int(f.Fd())
	f.Close()
	for name, call := range map[string]func(fd int) error{
		"sync":             b.sync,
		"writeAt sync nil": func(fd int) error { return b.writeAt(fd, 0, nil, true) },
	} {
		for _, fd := range []int{closedFD, -1, math.MaxInt} {
			err := call(fd)
			var fe *FsyncError
			if !errors.As(err, &fe) || !errors.Is(err, unix.EBADF) {
				t.Errorf("%s(fd %d) = %v, want *FsyncError wrapping EBADF", name, fd, err)
			}
		}
	}

	fd, _ := openTestFile(t, "rw", os.O_RDWR)
	if err := b.writeAt(fd, -1, [][]byte{{1}}, true); !errors.Is(err, unix.EINVAL) {
		t.Errorf("writeAt(offset -1) = %v, want EINVAL", err)
	}
	if err := b.writeAt(fd, 0, [][]byte{{1}}, true); err != nil {
		t.Errorf("ring unusable after errors: %v", err)
	}
}

func TestURingChainDone(t *testing.T) {
	spans := []uringSpan{{off: 100, n: 10}, {off: 110, n: 20}, {off: 130, n: 5}}
	canceled := -int32(unix.ECANCELED)
	for _, tc := range []struct {
		name    string
		res     []int32
		done    int64
		wantErr error
		errOff  string
	}{
		{"complete", []int32{10, 20, 5}, 35, nil, ""},
		{"short first", []int32{4, canceled, canceled}, 4, nil, ""},
		{"short middle", []int32{10, 19, canceled}, 29, nil, ""},
		{"short unlinked", []int32{10, 7, 5}, 17, nil, ""},
		{"eio middle", []int32{10, -int32(unix.EIO), canceled}, 10, unix.EIO, "at 110"},
		{"eio after short", []int32{3, -int32(unix.EIO), canceled}, 3, unix.EIO, "at 110"},
		{"cancel without cause", []int32{canceled, canceled, canceled}, 0, unix.ECANCELED, "at 100"},
		{"zero bytes", []int32{10, 0, canceled}, 10, io.ErrShortWrite, "at 110"},
		{"too many bytes", []int32{11, canceled, canceled}, 0, io.ErrShortWrite, "at 100"},
	} {
		done, err := chainDone(spans, tc.res)
		if done != tc.done || !errors.Is(err, tc.wantErr) || (err == nil) != (tc.wantErr == nil) {
			t.Errorf("%s: chainDone = %d, %v; want %d, %v", tc.name, done, err, tc.done, tc.wantErr)
		}
		if err != nil && !bytes.Contains([]byte(err.Error()), []byte(tc.errOff)) {
			t.Errorf("%s: error %q does not name offset %q", tc.name, err, tc.errOff)
		}
	}
}

func TestURingPlanWritev(t *testing.T) {
	bufs := make([][]byte, 2600)
	for i := range bufs {
		if i%100 != 7 { // some empty buffers, which get no iovec
			bufs[i] = []byte{byte(i), byte(i >> 8)}
		}
	}
	bufs = append(bufs, nil, nil)
	spans, iov, used := planWritev(nil, nil, 1000, bufs, 63)
	if used != len(bufs) || len(iov) != 2574 || len(spans) != 3 {
		t.Fatalf("used %d, %d iovecs, %d spans; want %d, 2574, 3", used, len(iov), len(spans), len(bufs))
	}
	off := int64(1000)
	for i, sp := range spans {
		if sp.off != off || sp.first != i*maxIovecs || sp.count != min(maxIovecs, 2574-i*maxIovecs) || sp.n != 2*int64(sp.count) {
			t.Errorf("span %d = %+v", i, sp)
		}
		off += sp.n
	}

	// Capped at two spans: the rest is left for the next round.
	spans, _, used = planWritev(nil, nil, 0, bufs, 2)
	if len(spans) != 2 || used >= len(bufs) || used < 2*maxIovecs {
		t.Fatalf("capped: %d spans, used %d", len(spans), used)
	}
	// The continuation after a short write resumes mid-buffer.
	rest := advanceBufs(bufs, 5)
	spans, iov, _ = planWritev(nil, nil, 5, rest, 63)
	if spans[0].off != 5 || iov[0].Len != 1 || *iov[0].Base != bufs[2][1] {
		t.Fatalf("continuation: span %+v, first iovec len %d", spans[0], iov[0].Len)
	}
	if spans, iov, used = planWritev(nil, nil, 0, [][]byte{{}, nil}, 63); len(spans) != 0 || len(iov) != 0 || used != 2 {
		t.Fatalf("empty buffers: %d spans, %d iovecs, used %d", len(spans), len(iov), used)
	}
}

// TestURingShortWriteContinues forces real short writes: a blocking pipe of
// one page accepts only part of a WRITEV on the kernel's non-blocking first
// attempt, and io_uring completes non-regular files short instead of retrying.
func TestURingShortWriteContinues(t *testing.T) {
	b := newTestURing(t)
	var p [2]int
	if err := unix.Pipe2(p[:], unix.O_CLOEXEC); err != nil {
		t.Fatal(err)
	}
	defer unix.Close(p[0])
	defer unix.Close(p[1])
	if _, err := unix.FcntlInt(uintptr(p[1]), unix.F_SETPIPE_SZ, 4096); err != nil {
		t.Fatal(err)
	}
	rng := rand.New(rand.NewPCG(5, 6))
	bufs := randBufs(rng, 40, 2000)
	want := bytes.Join(bufs, nil)
	got := make(chan []byte, 1)
	go func() {
		time.Sleep(50 * time.Millisecond) // let the first attempt fill the pipe
		var all []byte
		buf := make([]byte, 1000)
		for len(all) < len(want) {
			n, err := unix.Read(p[0], buf)
			if err == unix.EINTR {
				continue
			}
			if err != nil || n == 0 {
				break
			}
			all = append(all, buf[:n]...)
		}
		got <- all
	}()
	r, err := b.acquire()
	if err != nil {
		t.Fatal(err)
	}
	defer b.release(r)
	if err := r.writeAt(int32(p[1]), 0, bufs, false); err != nil {
		t.Fatal(err)
	}
	if all := <-got; !bytes.Equal(all, want) {
		t.Fatalf("read %d bytes differing from the %d written", len(all), len(want))
	}
	if r.shortRounds == 0 {
		t.Errorf("no short write happened; continuation path not exercised")
	}
	t.Logf("%d rounds continued after short writes", r.shortRounds)
}

func TestURingConcurrent(t *testing.T) {
	b := newTestURing(t)
	const workers, writes, chunk = 32, 20, 3000
	shared, sharedPath := openTestFile(t, "shared", os.O_RDWR)
	dir := t.TempDir()
	want := make([][]byte, workers)
	var wg sync.WaitGroup
	errs := make(chan error, 2*workers)
	for w := range workers {
		want[w] = make([]byte, writes*chunk)
		for i := range want[w] {
			want[w][i] = byte(w*7 + i)
		}
		f, err := os.Create(filepath.Join(dir, fmt.Sprint(w)))
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		wg.Go(func() {
			base := int64(w * writes * chunk)
			for i := range writes {
				part := want[w][i*chunk : (i+1)*chunk]
				bufs := [][]byte{part[:100], part[100:]}
				sync := i%4 == 3
				if err := b.writeAt(shared, base+int64(i*chunk), bufs, sync); err != nil {
					errs <- err
					return
				}
				if err := b.writeAt(int(f.Fd()), int64(i*chunk), bufs, sync); err != nil {
					errs <- err
					return
				}
			}
			if err := b.sync(int(f.Fd())); err != nil {
				errs <- err
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	checkFile(t, sharedPath, bytes.Join(want, nil))
	for w := range workers {
		checkFile(t, filepath.Join(dir, fmt.Sprint(w)), want[w])
	}
	b.mu.Lock()
	t.Logf("%d rings for %d goroutines", b.live, workers)
	b.mu.Unlock()
}

func TestURingPoolCap(t *testing.T) {
	b := newTestURing(t)
	b.mu.Lock()
	b.maxRings = 2
	b.mu.Unlock()
	fd, _ := openTestFile(t, "f", os.O_RDWR)
	var wg sync.WaitGroup
	for w := range 16 {
		wg.Go(func() {
			for i := range 10 {
				if err := b.writeAt(fd, int64(w*10+i)*512, [][]byte{make([]byte, 512)}, i%2 == 0); err != nil {
					t.Error(err)
				}
			}
		})
	}
	wg.Wait()
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.live > 2 || len(b.idle) != b.live {
		t.Fatalf("%d live rings, %d idle; want at most 2, all idle", b.live, len(b.idle))
	}
}

// openFDs returns the number of open fds and of io_uring fds of the process.
func openFDs(t *testing.T) (all, rings int) {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range ents {
		if target, _ := os.Readlink("/proc/self/fd/" + e.Name()); target == "anon_inode:[io_uring]" {
			rings++
		}
	}
	return len(ents), rings
}

func TestURingCloseReleasesRings(t *testing.T) {
	allBefore, ringsBefore := openFDs(t)
	be, err := newURingBackend()
	if errors.Is(err, errURingUnavailable) {
		t.Skipf("io_uring unavailable: %v", err)
	}
	if err != nil {
		t.Fatal(err)
	}
	b := be.(*uringBackend)
	fd, _ := openTestFile(t, "f", os.O_RDWR)
	var wg sync.WaitGroup
	for w := range 8 {
		wg.Go(func() {
			if err := b.writeAt(fd, int64(w)*4096, [][]byte{make([]byte, 4096)}, true); err != nil {
				t.Error(err)
			}
		})
	}
	wg.Wait()
	if _, rings := openFDs(t); rings <= ringsBefore {
		t.Errorf("no io_uring fds open during use")
	}
	if err := b.close(); err != nil {
		t.Fatal(err)
	}
	// The test file's fd is still open; it is closed by its cleanup.
	if all, rings := openFDs(t); rings != ringsBefore || all != allBefore+1 {
		t.Errorf("after close: %d fds (%d io_uring), before: %d (%d io_uring)", all, rings, allBefore, ringsBefore)
	}
	if err := b.writeAt(fd, 0, [][]byte{{1}}, true); !errors.Is(err, os.ErrClosed) {
		t.Errorf("writeAt after close = %v, want os.ErrClosed", err)
	}
}

// benchWriteSync measures writeAt with sync of size-byte buffers, cycling
// over a pre-written, pre-synced 16 MiB file so that fdatasync flushes data
// only, not allocation metadata.
func benchWriteSync(b *testing.B, be ioBackend, size int) {
	const fileSize = 16 << 20
	f, err := os.Create(filepath.Join(b.TempDir(), "bench"))
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	if _, err := f.Write(make([]byte, fileSize)); err != nil {
		b.Fatal(err)
	}
	if err := f.Sync(); err != nil {
		b.Fatal(err)
	}
	fd := int(f.Fd())
	bufs := [][]byte{bytes.Repeat([]byte{0xa5}, size)}
	b.SetBytes(int64(size))
	var off int64
	for b.Loop() {
		if err := be.writeAt(fd, off, bufs, true); err != nil {
			b.Fatal(err)
		}
		off = (off + int64(size)) % fileSize
	}
}

func BenchmarkURingWriteSync(b *testing.B) {
	be := newTestURing(b)
	for _, size := range []int{1 << 10, 64 << 10} {
		b.Run(fmt.Sprintf("%dKiB", size>>10), func(b *testing.B) { benchWriteSync(b, be, size) })
	}
}

func BenchmarkPwriteWriteSync(b *testing.B) {
	for _, size := range []int{1 << 10, 64 << 10} {
		b.Run(fmt.Sprintf("%dKiB", size>>10), func(b *testing.B) { benchWriteSync(b, pwriteBackend{}, size) })
	}
}
