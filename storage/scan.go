package storage

import (
	"errors"
	"fmt"
	"io"
)

// preader reads len(b) bytes at off, like io.ReaderAt.
type preader func(b []byte, off int64) (int, error)

// frameScanner walks the frames of a segment file from pos to limit through a
// read window. Recovery reuses one window; reads allocate a fresh window per
// refill so that returned entries may alias it.
type frameScanner struct {
	read   preader
	pos    int64 // file position of the next frame
	limit  int64 // scanning stops here
	win    []byte
	winPos int64 // file position of win[0]
	chunk  int   // next refill size
	reuse  bool  // reuse the window's memory across refills
}

const (
	minScanChunk = 16 << 10
	maxScanChunk = 1 << 20
)

// errScanIO marks read failures (as opposed to bad data) from the scanner.
var errScanIO = errors.New("read failed")

// next decodes the frame at sc.pos and advances past it. On frameShort or
// frameBad it does not advance. err is set only for I/O failures.
func (sc *frameScanner) next() (fr frame, pos int64, st frameStatus, reason string, err error) {
	pos = sc.pos
	if err := sc.ensure(frameHeaderSize); err != nil {
		return frame{}, pos, 0, "", err
	}
	b := sc.window()
	size, st := peekFrameSize(b)
	if st != frameOK {
		if st == frameShort {
			return frame{}, pos, st, "frame header extends past end of data", nil
		}
		return frame{}, pos, st, "invalid frame size", nil
	}
	if size > int64(len(b)) {
		if err := sc.ensure(size); err != nil {
			return frame{}, pos, 0, "", err
		}
		b = sc.window()
	}
	fr, st, reason = decodeFrame(b)
	if st == frameOK {
		sc.pos += fr.size
	}
	return fr, pos, st, reason, nil
}

// window returns the buffered bytes from sc.pos on.
func (sc *frameScanner) window() []byte {
	start := sc.pos - sc.winPos
	if start < 0 || start > int64(len(sc.win)) {
		return nil
	}
	return sc.win[start:]
}

// ensure makes the window hold n bytes from sc.pos, or everything up to
// limit if fewer remain.
func (sc *frameScanner) ensure(n int64) error {
	if int64(len(sc.window())) >= n || sc.winPos+int64(len(sc.win)) >= sc.limit && sc.pos >= sc.winPos {
		return nil
	}
	want := max(n, int64(sc.chunk))
	if rest := sc.limit - sc.pos; want > rest {
		want = rest
	}
	var buf []byte
	if sc.reuse && int64(cap(sc.win)) >= want {
		buf = sc.win[:want]
	} else {
		buf = make([]byte, want)
	}
	got, err := sc.read(buf, sc.pos)
	switch {
	case errors.Is(err, io.EOF):
		buf = buf[:got] // the file is shorter than limit: a torn tail
	case err != nil:
		return fmt.Errorf("%w at %d: %w", errScanIO, sc.pos, err)
	}
	sc.win, sc.winPos = buf, sc.pos
	if sc.chunk < maxScanChunk {
		sc.chunk *= 2
	}
	return nil
}
