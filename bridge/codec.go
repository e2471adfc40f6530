package bridge

import (
	"encoding/binary"
	"fmt"
	"math"
)

// wireVersion is the first byte of every request and response.
const wireVersion = 1

// op names an RPC operation on the wire.
type op uint8

const (
	opAppend    op = 1
	opRead      op = 2
	opPropose   op = 3
	opHeartbeat op = 4
)

func (o op) String() string {
	switch o {
	case opAppend:
		return "append"
	case opRead:
		return "read"
	case opPropose:
		return "propose"
	case opHeartbeat:
		return "heartbeat"
	}
	return fmt.Sprintf("op %d", uint8(o))
}

// maxRequestID bounds the request id (its length travels as one byte).
const maxRequestID = 255

// Minimum encoded sizes, used to reject counts that the remaining bytes
// cannot hold before allocating for them.
const (
	minRecordSize = 8 + 4 + 4 // timestamp, header count, value length
	minHeaderSize = 4 + 4
	minEntrySize  = 8 + 8 + 8 + minRecordSize
)

// request is the decoded form of an RPC request. Exactly one body field,
// the one named by op, is meaningful.
type request struct {
	op        op
	id        []byte // empty: not deduplicated
	append    AppendRequest
	read      ReadRequest
	propose   ProposeRequest
	heartbeat Heartbeat
}

// response is the decoded form of an RPC response. When code is not OK,
// msg is set and the body fields are zero.
type response struct {
	op        op
	code      Code
	msg       string
	append    AppendResponse
	read      ReadResponse
	propose   ProposeResponse
	heartbeat HeartbeatAck
}

// encodeRequest appends the encoding of r to a new buffer.
func encodeRequest(r *request) ([]byte, error) {
	if len(r.id) > maxRequestID {
		return nil, fmt.Errorf("%w: request id of %d bytes", ErrMalformed, len(r.id))
	}
	b := make([]byte, 0, 64)
	b = append(b, wireVersion, byte(r.op), byte(len(r.id)))
	b = append(b, r.id...)
	switch r.op {
	case opAppend:
		b = putString(b, r.append.Topic)
		b = binary.LittleEndian.AppendUint64(b, r.append.Segment)
		b = binary.LittleEndian.AppendUint64(b, r.append.Epoch)
		b = putCount(b, len(r.append.Records))
		for i := range r.append.Records {
			b = putRecord(b, &r.append.Records[i])
		}
	case opRead:
		b = putString(b, r.read.Topic)
		b = binary.LittleEndian.AppendUint64(b, r.read.Segment)
		b = binary.LittleEndian.AppendUint64(b, r.read.Index)
		b = binary.LittleEndian.AppendUint64(b, uint64(int64(r.read.MaxEntries)))
		b = binary.LittleEndian.AppendUint64(b, uint64(r.read.MaxBytes))
	case opPropose:
		b = putBytes(b, r.propose.Command)
	case opHeartbeat:
		b = binary.LittleEndian.AppendUint64(b, r.heartbeat.NodeID)
		b = binary.LittleEndian.AppendUint64(b, r.heartbeat.AppliedIndex)
		b = binary.LittleEndian.AppendUint64(b, uint64(r.heartbeat.SentUnixNano))
		b = putBool(b, r.heartbeat.Leaving)
	default:
		return nil, fmt.Errorf("%w: unknown %v", ErrMalformed, r.op)
	}
	return b, nil
}

// decodeRequest decodes a request. Byte slices in the result alias data.
func decodeRequest(data []byte) (*request, error) {
	d := decoder{buf: data}
	if v := d.u8(); d.err == nil && v != wireVersion {
		return nil, fmt.Errorf("%w: version %d", ErrMalformed, v)
	}
	r := &request{op: op(d.u8())}
	if n := int(d.u8()); n > 0 {
		r.id = d.take(n)
	}
	switch r.op {
	case opAppend:
		r.append.Topic = d.str()
		r.append.Segment = d.u64()
		r.append.Epoch = d.u64()
		if n := d.count(minRecordSize); n > 0 {
			r.append.Records = make([]Record, n)
			for i := range r.append.Records {
				d.record(&r.append.Records[i])
			}
		}
	case opRead:
		r.read.Topic = d.str()
		r.read.Segment = d.u64()
		r.read.Index = d.u64()
		r.read.MaxEntries = d.int()
		r.read.MaxBytes = int64(d.u64())
	case opPropose:
		r.propose.Command = d.bytes()
	case opHeartbeat:
		r.heartbeat.NodeID = d.u64()
		r.heartbeat.AppliedIndex = d.u64()
		r.heartbeat.SentUnixNano = int64(d.u64())
		r.heartbeat.Leaving = d.bool()
	default:
		if d.err == nil {
			return nil, fmt.Errorf("%w: unknown %v", ErrMalformed, r.op)
		}
	}
	if err := d.finish(); err != nil {
		return nil, err
	}
	return r, nil
}

// encodeResponse encodes r. A non-OK response carries only its message.
func encodeResponse(r *response) []byte {
	b := make([]byte, 0, 32)
	b = append(b, wireVersion, byte(r.op), byte(r.code))
	if r.code != CodeOK {
		return putString(b, r.msg)
	}
	switch r.op {
	case opAppend:
		b = binary.LittleEndian.AppendUint64(b, r.append.FirstIndex)
		b = binary.LittleEndian.AppendUint64(b, r.append.FirstOffset)
	case opRead:
		b = binary.LittleEndian.AppendUint64(b, r.read.Count)
		b = putBool(b, r.read.Sealed)
		b = putCount(b, len(r.read.Entries))
		for i := range r.read.Entries {
			e := &r.read.Entries[i]
			b = binary.LittleEndian.AppendUint64(b, e.Segment)
			b = binary.LittleEndian.AppendUint64(b, e.Index)
			b = binary.LittleEndian.AppendUint64(b, e.Offset)
			b = putRecord(b, &e.Record)
		}
	case opPropose:
		b = binary.LittleEndian.AppendUint64(b, r.propose.Index)
		b = putBytes(b, r.propose.Result)
	case opHeartbeat:
		b = binary.LittleEndian.AppendUint64(b, r.heartbeat.LeaderID)
		b = binary.LittleEndian.AppendUint64(b, r.heartbeat.Term)
		b = binary.LittleEndian.AppendUint64(b, r.heartbeat.LastIndex)
		b = putBool(b, r.heartbeat.PeerFailing)
	}
	return b
}

// errorResponse builds a non-OK response.
func errorResponse(o op, code Code, msg string) *response {
	return &response{op: o, code: code, msg: msg}
}

// decodeResponse decodes a response. Byte slices in the result alias data.
func decodeResponse(data []byte) (*response, error) {
	d := decoder{buf: data}
	if v := d.u8(); d.err == nil && v != wireVersion {
		return nil, fmt.Errorf("%w: version %d", ErrMalformed, v)
	}
	r := &response{op: op(d.u8()), code: Code(d.u8())}
	// An error response may echo any op (the request it answers may have
	// been malformed); a successful one names the op its body belongs to.
	if d.err == nil && r.code == CodeOK && (r.op < opAppend || r.op > opHeartbeat) {
		return nil, fmt.Errorf("%w: unknown %v", ErrMalformed, r.op)
	}
	switch {
	case r.code != CodeOK:
		r.msg = d.str()
	case r.op == opAppend:
		r.append.FirstIndex = d.u64()
		r.append.FirstOffset = d.u64()
	case r.op == opRead:
		r.read.Count = d.u64()
		r.read.Sealed = d.bool()
		if n := d.count(minEntrySize); n > 0 {
			r.read.Entries = make([]Entry, n)
			for i := range r.read.Entries {
				e := &r.read.Entries[i]
				e.Segment = d.u64()
				e.Index = d.u64()
				e.Offset = d.u64()
				d.record(&e.Record)
			}
		}
	case r.op == opPropose:
		r.propose.Index = d.u64()
		r.propose.Result = d.bytes()
	case r.op == opHeartbeat:
		r.heartbeat.LeaderID = d.u64()
		r.heartbeat.Term = d.u64()
		r.heartbeat.LastIndex = d.u64()
		r.heartbeat.PeerFailing = d.bool()
	}
	if err := d.finish(); err != nil {
		return nil, err
	}
	return r, nil
}

func putString(b []byte, s string) []byte {
	b = binary.LittleEndian.AppendUint32(b, uint32(len(s)))
	return append(b, s...)
}

func putBytes(b, p []byte) []byte {
	b = binary.LittleEndian.AppendUint32(b, uint32(len(p)))
	return append(b, p...)
}

func putCount(b []byte, n int) []byte {
	return binary.LittleEndian.AppendUint32(b, uint32(n))
}

func putBool(b []byte, v bool) []byte {
	if v {
		return append(b, 1)
	}
	return append(b, 0)
}

func putRecord(b []byte, r *Record) []byte {
	b = binary.LittleEndian.AppendUint64(b, uint64(r.Timestamp))
	b = putCount(b, len(r.Headers))
	for _, h := range r.Headers {
		b = putString(b, h.Key)
		b = putString(b, h.Value)
	}
	return putBytes(b, r.Value)
}

// decoder reads little-endian fields from buf. The first error sticks: later
// reads return zero values, and finish reports it.
type decoder struct {
	buf []byte
	off int
	err error
}

func (d *decoder) fail(format string, args ...any) {
	if d.err == nil {
		d.err = fmt.Errorf("%w: "+format, append([]any{ErrMalformed}, args...)...)
	}
}

// take returns the next n bytes (aliasing buf), or nil after an error.
func (d *decoder) take(n int) []byte {
	if d.err != nil {
		return nil
	}
	if n < 0 || n > len(d.buf)-d.off {
		d.fail("truncated at byte %d (need %d more)", d.off, n)
		return nil
	}
	p := d.buf[d.off : d.off+n : d.off+n]
	d.off += n
	return p
}

func (d *decoder) u8() uint8 {
	if p := d.take(1); p != nil {
		return p[0]
	}
	return 0
}

func (d *decoder) u32() uint32 {
	if p := d.take(4); p != nil {
		return binary.LittleEndian.Uint32(p)
	}
	return 0
}

func (d *decoder) u64() uint64 {
	if p := d.take(8); p != nil {
		return binary.LittleEndian.Uint64(p)
	}
	return 0
}

func (d *decoder) int() int {
	v := int64(d.u64())
	if v < math.MinInt || v > math.MaxInt {
		d.fail("integer %d out of range", v)
		return 0
	}
	return int(v)
}

func (d *decoder) bool() bool {
	switch v := d.u8(); v {
	case 0:
		return false
	case 1:
		return true
	default:
		d.fail("bool byte %d", v)
		return false
	}
}

// bytes reads a length-prefixed byte string; an empty one decodes as nil.
func (d *decoder) bytes() []byte {
	n := d.u32()
	if n == 0 {
		return nil
	}
	return d.take(int(n))
}

func (d *decoder) str() string {
	return string(d.bytes())
}

// count reads an element count and rejects one that the remaining bytes
// cannot hold at minSize bytes per element.
func (d *decoder) count(minSize int) int {
	n := int(d.u32())
	if d.err == nil && n > (len(d.buf)-d.off)/minSize {
		d.fail("count %d exceeds the %d remaining bytes", n, len(d.buf)-d.off)
		return 0
	}
	return n
}

func (d *decoder) record(r *Record) {
	r.Timestamp = int64(d.u64())
	if n := d.count(minHeaderSize); n > 0 {
		r.Headers = make([]Header, n)
		for i := range r.Headers {
			r.Headers[i].Key = d.str()
			r.Headers[i].Value = d.str()
		}
	}
	r.Value = d.bytes()
}

// finish reports the first error, or trailing bytes after a complete message.
func (d *decoder) finish() error {
	if d.err == nil && d.off != len(d.buf) {
		d.fail("%d trailing bytes", len(d.buf)-d.off)
	}
	return d.err
}
