package protocol

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math"
)

const (
	// HeaderSize is the size of the little-endian u32 length prefix.
	HeaderSize = 4
	// DefaultMaxFrameSize is the largest request body a server accepts by
	// default: 64 KiB, the original's MAX_FRAME_LEN. Valid request lengths
	// are 1..=DefaultMaxFrameSize.
	DefaultMaxFrameSize = 64 << 10
	// DefaultMaxReplySize is the largest reply a Client accepts by default
	// (64 MiB). The protocol itself puts no limit on replies; this only
	// protects clients from a peer that is not a Walrus server.
	DefaultMaxReplySize = 64 << 20
	// MaxEncodableSize is the largest body a length prefix can describe.
	MaxEncodableSize = math.MaxUint32

	// allocStep bounds the first allocation for a frame larger than itself;
	// the buffer then grows as bytes actually arrive, so a 4-byte header
	// cannot make a client allocate its whole reply limit up front.
	allocStep = 1 << 20
)

// FrameReader reads length-prefixed frames from a byte stream. It is not
// safe for concurrent use.
//
// Next's errors:
//
//   - io.EOF: the stream ended cleanly before a frame, or inside the 4-byte
//     length (the original treats a partial length as a clean close).
//   - io.ErrUnexpectedEOF (wrapped): the stream ended inside a body.
//   - ErrEmptyFrame: the length was 0. Nothing was skipped and the reader
//     stays usable.
//   - ErrFrameTooLarge (wrapped): the length exceeded the maximum. The body
//     was not consumed and the reader must not be used again: a server
//     replies "ERR invalid frame length" and closes the connection. (The
//     original replied and kept reading, parsing the body's first bytes as
//     the next length: a desynchronised stream.)
//   - anything else: the underlying read error, wrapped.
type FrameReader struct {
	r   *bufio.Reader
	max int
	hdr [HeaderSize]byte
}

// NewFrameReader returns a FrameReader on r that rejects frames longer than
// maxSize bytes; maxSize <= 0 means DefaultMaxFrameSize. If r is already a
// *bufio.Reader it is used as is.
func NewFrameReader(r io.Reader, maxSize int) *FrameReader {
	if maxSize <= 0 {
		maxSize = DefaultMaxFrameSize
	}
	br, ok := r.(*bufio.Reader)
	if !ok {
		br = bufio.NewReader(r)
	}
	return &FrameReader{r: br, max: maxSize}
}

// MaxSize returns the largest frame body Next accepts.
func (fr *FrameReader) MaxSize() int { return fr.max }

// Buffered returns the number of bytes already read from the stream but
// not yet returned by Next. In this request→response protocol a client
// finding bytes here before sending a request knows the stream is out of
// step; a server finds the start of a pipelined request.
func (fr *FrameReader) Buffered() int { return fr.r.Buffered() }

// Next reads one frame and returns its body, a new slice owned by the
// caller. It allocates only after the length is known to be within the
// maximum, and never more than the length. See FrameReader for the errors.
func (fr *FrameReader) Next() ([]byte, error) {
	if _, err := io.ReadFull(fr.r, fr.hdr[:]); err != nil {
		if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
			return nil, io.EOF
		}
		return nil, fmt.Errorf("protocol: read frame length: %w", err)
	}
	n := binary.LittleEndian.Uint32(fr.hdr[:])
	if n == 0 {
		return nil, ErrEmptyFrame
	}
	if uint64(n) > uint64(fr.max) {
		return nil, fmt.Errorf("%w: %d bytes, max %d", ErrFrameTooLarge, n, fr.max)
	}
	return fr.readBody(int(n))
}

// readBody reads exactly n bytes. Small bodies get one allocation of n
// bytes; larger ones grow in steps capped at n as data arrives.
func (fr *FrameReader) readBody(n int) ([]byte, error) {
	buf := make([]byte, 0, min(n, allocStep))
	for {
		m, err := io.ReadFull(fr.r, buf[len(buf):cap(buf)])
		buf = buf[:len(buf)+m]
		if err != nil {
			if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
				err = io.ErrUnexpectedEOF
			}
			return nil, fmt.Errorf("protocol: read frame body (%d of %d bytes): %w", len(buf), n, err)
		}
		if len(buf) == n {
			return buf, nil
		}
		grown := make([]byte, len(buf), min(2*cap(buf), n))
		copy(grown, buf)
		buf = grown
	}
}

// AppendFrame appends the frame for payload (length prefix and body) to dst.
// It fails only for a payload longer than MaxEncodableSize.
func AppendFrame(dst, payload []byte) ([]byte, error) {
	if err := checkEncodable(len(payload)); err != nil {
		return dst, err
	}
	dst = binary.LittleEndian.AppendUint32(dst, uint32(len(payload)))
	return append(dst, payload...), nil
}

// WriteFrame writes payload as one frame with a single Write call (length
// and body together, so concurrent writers never interleave a header and
// a body and the peer gets one segment where possible). An empty payload
// writes a zero-length frame, which a server rejects; callers send bodies
// of at least one byte.
func WriteFrame(w io.Writer, payload []byte) error {
	if err := checkEncodable(len(payload)); err != nil {
		return err
	}
	buf := make([]byte, HeaderSize, HeaderSize+len(payload))
	binary.LittleEndian.PutUint32(buf, uint32(len(payload)))
	buf = append(buf, payload...)
	n, err := w.Write(buf)
	if err != nil {
		return fmt.Errorf("protocol: write frame: %w", err)
	}
	if n != len(buf) {
		return fmt.Errorf("protocol: write frame: %w", io.ErrShortWrite)
	}
	return nil
}

// checkEncodable reports whether a body of n bytes fits a u32 length prefix.
func checkEncodable(n int) error {
	if uint64(n) > MaxEncodableSize {
		return fmt.Errorf("%w: %d bytes cannot be encoded", ErrFrameTooLarge, n)
	}
	return nil
}
