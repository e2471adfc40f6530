package bridge

import (
	"errors"
	"fmt"
	"strconv"
)

// Code is the status of an RPC response. It travels as one byte.
type Code uint8

// Status codes. New codes may be added; an unknown code decodes as is and
// matches no sentinel.
const (
	CodeOK            Code = 0
	CodeUnavailable   Code = 1  // retryable: no handler yet, overloaded, shutting down, not applied
	CodeNotLeader     Code = 2  // this node does not lead the segment (or the Raft group)
	CodeEpochMismatch Code = 3  // the request's epoch is not the segment's
	CodeSealed        Code = 4  // the segment is sealed
	CodeUnknownTopic  Code = 5  // no such topic (or segment)
	CodeOutOfRange    Code = 6  // position past the end of the segment
	CodeCorrupt       Code = 7  // stored data failed verification
	CodeInternal      Code = 8  // any other handler error
	CodeBadRequest    Code = 9  // the request could not be decoded
	CodeTooLarge      Code = 10 // the response would exceed the NATS max payload
)

// Sentinel errors, one per non-OK code, so that callers test a remote
// outcome with errors.Is(err, bridge.ErrNotLeader). Local failures have
// their own sentinels below.
var (
	ErrUnavailable   = errors.New("bridge: unavailable")
	ErrNotLeader     = errors.New("bridge: not leader")
	ErrEpochMismatch = errors.New("bridge: epoch mismatch")
	ErrSealed        = errors.New("bridge: segment sealed")
	ErrUnknownTopic  = errors.New("bridge: unknown topic")
	ErrOutOfRange    = errors.New("bridge: out of range")
	ErrCorrupt       = errors.New("bridge: corrupt data")
	ErrInternal      = errors.New("bridge: internal error")
	ErrBadRequest    = errors.New("bridge: bad request")
	ErrTooLarge      = errors.New("bridge: message too large")
)

// Local errors.
var (
	// ErrClosed is returned by calls on a bridge that is not running.
	ErrClosed = errors.New("bridge: closed")
	// ErrInvalidConfig reports a Config that fails validation.
	ErrInvalidConfig = errors.New("bridge: invalid config")
	// ErrUnreachable reports that no node answered on the target's subject
	// (NATS "no responders"): the node is down, restarting, or its route
	// interest has not reached this node yet. Nothing was executed.
	ErrUnreachable = errors.New("bridge: node unreachable")
	// ErrTimeout reports an attempt that got no reply in time. The request
	// may or may not have been executed.
	ErrTimeout = errors.New("bridge: request timed out")
	// ErrAbandoned reports a call that stopped retrying because its
	// RetryWhile said the target is no longer current, when none of its
	// attempts can have been executed (each found no responder, or was
	// refused): the caller may send the request elsewhere.
	ErrAbandoned = errors.New("bridge: call abandoned before it was executed")
	// ErrMalformed reports a message that does not decode.
	ErrMalformed = errors.New("bridge: malformed message")
)

var codeSentinels = [...]error{
	CodeUnavailable:   ErrUnavailable,
	CodeNotLeader:     ErrNotLeader,
	CodeEpochMismatch: ErrEpochMismatch,
	CodeSealed:        ErrSealed,
	CodeUnknownTopic:  ErrUnknownTopic,
	CodeOutOfRange:    ErrOutOfRange,
	CodeCorrupt:       ErrCorrupt,
	CodeInternal:      ErrInternal,
	CodeBadRequest:    ErrBadRequest,
	CodeTooLarge:      ErrTooLarge,
}

var codeNames = [...]string{
	CodeOK:            "ok",
	CodeUnavailable:   "unavailable",
	CodeNotLeader:     "not leader",
	CodeEpochMismatch: "epoch mismatch",
	CodeSealed:        "sealed",
	CodeUnknownTopic:  "unknown topic",
	CodeOutOfRange:    "out of range",
	CodeCorrupt:       "corrupt",
	CodeInternal:      "internal",
	CodeBadRequest:    "bad request",
	CodeTooLarge:      "too large",
}

func (c Code) String() string {
	if int(c) < len(codeNames) {
		return codeNames[c]
	}
	return "code " + strconv.Itoa(int(c))
}

// sentinel returns the sentinel error of c, or nil for OK and unknown codes.
func (c Code) sentinel() error {
	if int(c) < len(codeSentinels) {
		return codeSentinels[c]
	}
	return nil
}

// RemoteError is a non-OK status returned by the node that served a call,
// or returned by a Handler to choose the status its caller sees.
type RemoteError struct {
	Code    Code
	Message string
}

// Errorf returns a *RemoteError with the given code and a formatted message.
func Errorf(code Code, format string, args ...any) *RemoteError {
	return &RemoteError{Code: code, Message: fmt.Sprintf(format, args...)}
}

func (e *RemoteError) Error() string {
	if e.Message == "" {
		return "bridge: remote: " + e.Code.String()
	}
	return "bridge: remote: " + e.Code.String() + ": " + e.Message
}

// Is makes errors.Is(err, ErrNotLeader) hold for a RemoteError with
// CodeNotLeader, and so on for every code.
func (e *RemoteError) Is(target error) bool {
	s := e.Code.sentinel()
	return s != nil && s == target
}

// errorCode maps a handler's error to the status sent to the caller: a
// *RemoteError keeps its code and message; an error wrapping a code
// sentinel gets that code; anything else is CodeInternal.
func errorCode(err error) (Code, string) {
	var re *RemoteError
	if errors.As(err, &re) {
		if re.Code == CodeOK {
			return CodeInternal, re.Error()
		}
		return re.Code, re.Message
	}
	for c, s := range codeSentinels {
		if s != nil && errors.Is(err, s) {
			return Code(c), err.Error()
		}
	}
	return CodeInternal, err.Error()
}
