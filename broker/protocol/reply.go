package protocol

import (
	"bytes"
	"fmt"
	"io"
	"strconv"
)

// Reply texts. STATE and METRICS replies are raw JSON with no prefix, as in
// the original.
const (
	// TextOK is the whole reply to a successful REGISTER or PUT.
	TextOK = "OK"
	// TextEmpty is the reply to GET or FETCH when there is nothing to read.
	TextEmpty = "EMPTY"
	// PrefixOK starts a reply that carries a payload: "OK <payload>".
	PrefixOK = "OK "
	// PrefixErr starts an error reply: "ERR <message>".
	PrefixErr = "ERR "
	// PongPayload is the payload of the reply to PING ("OK PONG").
	PongPayload = "PONG"
)

// ReplyKind classifies a reply.
type ReplyKind uint8

// The reply kinds.
const (
	// ReplyInvalid is the zero ReplyKind; ParseReply never returns it.
	ReplyInvalid ReplyKind = iota
	// ReplyOK is exactly "OK".
	ReplyOK
	// ReplyOKPayload is "OK <payload>" (the payload may be empty: "OK ").
	ReplyOKPayload
	// ReplyEmpty is exactly "EMPTY".
	ReplyEmpty
	// ReplyErr is "ERR <message>" (or a bare "ERR").
	ReplyErr
	// ReplyRaw is any other body: the JSON of STATE and METRICS.
	ReplyRaw
)

// String returns the kind's name.
func (k ReplyKind) String() string {
	switch k {
	case ReplyOK:
		return "OK"
	case ReplyOKPayload:
		return "OKPayload"
	case ReplyEmpty:
		return "Empty"
	case ReplyErr:
		return "Err"
	case ReplyRaw:
		return "Raw"
	}
	return "Invalid"
}

// Reply is one response. Servers build it with the constructors below and
// send it with WriteReply; clients get it from ParseReply.
type Reply struct {
	// Kind classifies the reply.
	Kind ReplyKind
	// Payload is the text after "OK " (ReplyOKPayload) or the whole body
	// (ReplyRaw); nil otherwise. ParseReply returns a sub-slice of the body.
	Payload []byte
	// Message is the text after "ERR " (ReplyErr).
	Message string
}

// OKReply returns the reply "OK".
func OKReply() Reply { return Reply{Kind: ReplyOK} }

// PayloadReply returns "OK <payload>". GET in the original returned the
// entry as lossy UTF-8; the payload is sent as given here.
func PayloadReply(payload []byte) Reply { return Reply{Kind: ReplyOKPayload, Payload: payload} }

// EmptyReply returns the reply "EMPTY".
func EmptyReply() Reply { return Reply{Kind: ReplyEmpty} }

// ErrorReply returns "ERR <msg>"; msg should be one of the Msg constants or
// a server message. Use ReplyForError to map an error.
func ErrorReply(msg string) Reply { return Reply{Kind: ReplyErr, Message: msg} }

// ReplyForError returns "ERR <ErrorMessage(err)>".
func ReplyForError(err error) Reply { return ErrorReply(ErrorMessage(err)) }

// RawReply returns a reply sent verbatim with no prefix: the STATE and
// METRICS JSON. The body must be non-empty and must not start with "OK",
// "ERR" or "EMPTY" (JSON never does).
func RawReply(body []byte) Reply { return Reply{Kind: ReplyRaw, Payload: body} }

// FetchReply returns the FETCH hit reply "OK <next_offset> <payload>". The
// space after next_offset is always present, even for an empty payload.
func FetchReply(next uint64, payload []byte) Reply {
	p := make([]byte, 0, 21+len(payload))
	p = strconv.AppendUint(p, next, 10)
	p = append(p, ' ')
	p = append(p, payload...)
	return PayloadReply(p)
}

// PongReply returns the PING reply "OK PONG".
func PongReply() Reply { return PayloadReply([]byte(PongPayload)) }

// Encode returns the reply body (without the length prefix).
func (r Reply) Encode() []byte {
	switch r.Kind {
	case ReplyOK:
		return []byte(TextOK)
	case ReplyOKPayload:
		b := make([]byte, 0, len(PrefixOK)+len(r.Payload))
		return append(append(b, PrefixOK...), r.Payload...)
	case ReplyEmpty:
		return []byte(TextEmpty)
	case ReplyErr:
		return []byte(PrefixErr + r.Message)
	case ReplyRaw:
		return r.Payload
	}
	return []byte(PrefixErr + "invalid reply")
}

// String returns Encode as a string.
func (r Reply) String() string { return string(r.Encode()) }

// Err returns a *ServerError for a ReplyErr and nil for every other kind.
func (r Reply) Err() error {
	if r.Kind == ReplyErr {
		return &ServerError{Message: r.Message}
	}
	return nil
}

// WriteReply writes r as one frame.
func WriteReply(w io.Writer, r Reply) error { return WriteFrame(w, r.Encode()) }

// ParseReply classifies a reply body: exactly "OK", "OK <payload>",
// exactly "EMPTY", "ERR <message>" (a bare "ERR" has an empty message), and
// anything else as ReplyRaw. Only an empty body is an error
// (ErrMalformedReply): servers never send one. Payload aliases body.
func ParseReply(body []byte) (Reply, error) {
	switch {
	case len(body) == 0:
		return Reply{}, fmt.Errorf("%w: empty reply", ErrMalformedReply)
	case string(body) == TextOK:
		return OKReply(), nil
	case bytes.HasPrefix(body, []byte(PrefixOK)):
		return Reply{Kind: ReplyOKPayload, Payload: body[len(PrefixOK):]}, nil
	case string(body) == TextEmpty:
		return EmptyReply(), nil
	case string(body) == "ERR":
		return ErrorReply(""), nil
	case bytes.HasPrefix(body, []byte(PrefixErr)):
		return ErrorReply(string(body[len(PrefixErr):])), nil
	}
	return RawReply(body), nil
}

// ParseFetchPayload splits the payload of a FETCH hit ("<next_offset>
// <payload>") into its parts. A missing separator after the offset is
// accepted as an empty payload.
func ParseFetchPayload(p []byte) (next uint64, payload []byte, err error) {
	num, payload, _ := bytes.Cut(p, space)
	next, err = strconv.ParseUint(string(num), 10, 64)
	if err != nil {
		return 0, nil, fmt.Errorf("%w: FETCH reply has no next offset: %q", ErrMalformedReply, shorten(p))
	}
	return next, payload, nil
}

// shorten truncates b for error messages.
func shorten(b []byte) []byte {
	const limit = 120
	if len(b) > limit {
		return b[:limit]
	}
	return b
}
