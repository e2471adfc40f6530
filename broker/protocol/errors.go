package protocol

import (
	"errors"
	"fmt"
)

// Sentinel errors of the protocol package. Returned errors wrap them with
// context; test them with errors.Is.
var (
	// ErrEmptyFrame reports a frame whose length prefix is 0. The stream is
	// still in step (there is no body to skip): a server answers
	// "ERR invalid frame length" and reads the next frame.
	ErrEmptyFrame = errors.New("protocol: empty frame")
	// ErrFrameTooLarge reports a frame whose length prefix exceeds the
	// reader's maximum, or a payload too long to encode. The body has NOT
	// been consumed, so the stream is out of step: a server answers
	// "ERR invalid frame length" and closes the connection.
	ErrFrameTooLarge = errors.New("protocol: frame too large")
	// ErrInvalidUTF8 reports a request body, topic or payload that is not
	// valid UTF-8.
	ErrInvalidUTF8 = errors.New("protocol: invalid utf-8")
	// ErrUnknownCommand reports an empty, whitespace-only or unrecognised
	// verb (verbs are case-sensitive).
	ErrUnknownCommand = errors.New("protocol: unknown command")
	// ErrMissingTopic reports a command that needs a topic and has none (or
	// an empty one, from a double space).
	ErrMissingTopic = errors.New("protocol: missing topic")
	// ErrMissingPayload reports a PUT without a payload.
	ErrMissingPayload = errors.New("protocol: missing payload")
	// ErrInvalidArgument reports FETCH arguments that are missing or not
	// unsigned decimal integers.
	ErrInvalidArgument = errors.New("protocol: invalid argument")
	// ErrInvalidTopic reports a topic that ends in whitespace (the server
	// trims it when the topic is the last token, so such a topic could be
	// created but never read) or, from Command.Validate, one that cannot be
	// encoded unchanged: it contains an ASCII space or is not valid UTF-8.
	ErrInvalidTopic = errors.New("protocol: invalid topic")
	// ErrMalformedReply reports a reply that cannot be parsed at all (an
	// empty body) or a FETCH reply without a valid next offset.
	ErrMalformedReply = errors.New("protocol: malformed reply")
	// ErrUnexpectedReply reports a well-formed reply of the wrong kind for
	// the request (for example EMPTY to a PUT).
	ErrUnexpectedReply = errors.New("protocol: unexpected reply")
	// ErrClosed is returned by Client calls after Close.
	ErrClosed = errors.New("protocol: client closed")
	// ErrConnBroken is returned by Client calls after the connection failed
	// when reconnecting is disabled (see WithReconnect).
	ErrConnBroken = errors.New("protocol: connection broken")
)

// Exact reply texts (what follows "ERR ") of the protocol-level errors. They
// are part of the wire contract: tools written for the original match on
// them, so never change them.
const (
	MsgInvalidFrameLength    = "invalid frame length"
	MsgInvalidUTF8           = "invalid utf-8"
	MsgUnknownCommand        = "unknown command"
	MsgRegisterRequiresTopic = "REGISTER requires a topic"
	MsgPutRequiresTopic      = "PUT requires a topic"
	MsgPutRequiresPayload    = "PUT requires a payload"
	MsgGetRequiresTopic      = "GET requires a topic"
	MsgStateRequiresTopic    = "STATE requires a topic"
	// MsgFetchRequiresArgs answers every malformed FETCH (Walrus extension).
	MsgFetchRequiresArgs = "FETCH requires a topic, a segment and an offset"
	// MsgInvalidTopicPrefix starts the reply to a topic that ends in
	// whitespace (Walrus); the quoted topic and the reason follow.
	MsgInvalidTopicPrefix = "invalid topic "
	// MsgUnknownTopicPrefix starts the reply to a command naming a topic the
	// node does not know; the topic follows. Use UnknownTopicMessage.
	MsgUnknownTopicPrefix = "unknown topic "
)

// UnknownTopicMessage returns the original's reply text for an unknown
// topic: "unknown topic <topic>".
func UnknownTopicMessage(topic string) string { return MsgUnknownTopicPrefix + topic }

// CommandError is the error Parse and Command.Validate return. Msg is the
// exact text a server sends after "ERR "; Err is one of the package
// sentinels (ErrInvalidUTF8, ErrUnknownCommand, ErrMissingTopic,
// ErrMissingPayload, ErrInvalidArgument, ErrInvalidTopic).
type CommandError struct {
	// Verb is the recognised verb, or VerbUnknown.
	Verb Verb
	// Msg is the reply text, for example "PUT requires a payload".
	Msg string
	// Err is the sentinel the error wraps.
	Err error
}

// Error returns "protocol: " followed by the reply text.
func (e *CommandError) Error() string { return "protocol: " + e.Msg }

// Unwrap returns the sentinel, so errors.Is(err, ErrMissingTopic) works.
func (e *CommandError) Unwrap() error { return e.Err }

// ServerError is an "ERR <message>" reply turned into a Go error by the
// Client's typed methods. Message is the server's text verbatim.
type ServerError struct {
	// Message is everything after "ERR ", e.g. "unknown topic logs".
	Message string
}

// Error returns "protocol: server error: <message>".
func (e *ServerError) Error() string { return "protocol: server error: " + e.Message }

// ReplyMessager is implemented by errors (typically in the server) that
// know the exact text to send after "ERR ". ErrorMessage honours it, so a
// server maps every error to a reply in one call.
type ReplyMessager interface {
	ReplyMessage() string
}

// ErrorMessage returns the text a server sends after "ERR " for err. This is
// the single mapping table from errors to wire messages:
//
//	*CommandError (from Parse)              → its Msg
//	ErrEmptyFrame, ErrFrameTooLarge         → "invalid frame length"
//	ErrInvalidUTF8                          → "invalid utf-8"
//	ErrUnknownCommand                       → "unknown command"
//	*ServerError (a forwarded reply)        → its Message, unchanged
//	an error implementing ReplyMessager     → ReplyMessage()
//	anything else                           → err.Error()
//
// The original printed only the outermost message of an error chain; so
// does the last rule, so wrap with care.
func ErrorMessage(err error) string {
	if err == nil {
		return ""
	}
	var ce *CommandError
	if errors.As(err, &ce) {
		return ce.Msg
	}
	switch {
	case errors.Is(err, ErrEmptyFrame), errors.Is(err, ErrFrameTooLarge):
		return MsgInvalidFrameLength
	case errors.Is(err, ErrInvalidUTF8):
		return MsgInvalidUTF8
	case errors.Is(err, ErrUnknownCommand):
		return MsgUnknownCommand
	}
	var se *ServerError
	if errors.As(err, &se) {
		return se.Message
	}
	var rm ReplyMessager
	if errors.As(err, &rm) {
		return rm.ReplyMessage()
	}
	return err.Error()
}

// unexpected builds an ErrUnexpectedReply naming the request and the reply
// (shortened, so a huge reply does not flood logs).
func unexpected(verb Verb, reply []byte) error {
	return fmt.Errorf("%w to %s: %q", ErrUnexpectedReply, verb, shorten(reply))
}
