package bridge

import (
	"context"
	"encoding/json"
	"errors"
	"strconv"
	"time"

	"github.com/nats-io/nats.go"
)

// Headers Walrus sets on the messages it delivers, and the error header.
const (
	HeaderTopic     = "Walrus-Topic"
	HeaderSegment   = "Walrus-Segment"
	HeaderOffset    = "Walrus-Offset"
	HeaderTimestamp = "Walrus-Timestamp"
	HeaderStatus    = "Walrus-Status"
	HeaderError     = "Walrus-Error"
	HeaderSubject   = "Walrus-Subject"
	// HeaderMsgID is the producer's message id used for deduplication
	// (the same header JetStream uses).
	HeaderMsgID = "Nats-Msg-Id"
	// reservedPrefix starts the header keys producers may not set.
	reservedPrefix = "Walrus-"
)

// ErrOutcomeUnknown reports a produce whose entries may or may not be
// stored (public code outcome_unknown): retry with the same Nats-Msg-Id.
var ErrOutcomeUnknown = errors.New("outcome unknown")

// Public error codes (docs/nats.md).
const (
	PublicBadRequest     = "bad_request"
	PublicUnknownTopic   = "unknown_topic"
	PublicTooLarge       = "too_large"
	PublicUnavailable    = "unavailable"
	PublicOutcomeUnknown = "outcome_unknown"
	PublicInternal       = "internal"
)

// PublicCode classifies an error for a public reply.
func PublicCode(err error) string {
	switch {
	case errors.Is(err, ErrBadRequest), errors.Is(err, ErrMalformed):
		return PublicBadRequest
	case errors.Is(err, ErrUnknownTopic):
		return PublicUnknownTopic
	case errors.Is(err, ErrTooLarge):
		return PublicTooLarge
	case errors.Is(err, ErrOutcomeUnknown):
		return PublicOutcomeUnknown
	case errors.Is(err, ErrUnavailable), errors.Is(err, ErrUnreachable), errors.Is(err, ErrTimeout),
		errors.Is(err, ErrNotLeader), errors.Is(err, ErrClosed),
		errors.Is(err, context.DeadlineExceeded), errors.Is(err, context.Canceled):
		return PublicUnavailable
	}
	return PublicInternal
}

type errorBody struct {
	Error struct {
		Code    string `json:"code"`
		Message string `json:"message"`
	} `json:"error"`
}

// replyError answers msg with the JSON error body and the Walrus-Error
// header. A message without a reply subject is counted as dropped.
func (a *API) replyError(msg *nats.Msg, err error) {
	code := PublicCode(err)
	if msg.Reply == "" {
		a.dropped(code)
		a.log.Debug("message not stored", "subject", msg.Subject, "code", code, logKeyErr, err)
		return
	}
	var body errorBody
	body.Error.Code, body.Error.Message = code, err.Error()
	b, _ := json.Marshal(body) // plain strings: cannot fail
	out := nats.NewMsg(msg.Reply)
	out.Header.Set(HeaderError, code)
	out.Data = b
	a.respond(out)
}

// replyJSON answers msg with v as JSON.
func (a *API) replyJSON(msg *nats.Msg, v any) {
	if msg.Reply == "" {
		return
	}
	b, err := json.Marshal(v)
	if err != nil {
		a.replyError(msg, err)
		return
	}
	a.respond(&nats.Msg{Subject: msg.Reply, Data: b})
}

// replyRaw answers msg with body as is (STATE and METRICS JSON).
func (a *API) replyRaw(msg *nats.Msg, body []byte) {
	if msg.Reply != "" {
		a.respond(&nats.Msg{Subject: msg.Reply, Data: body})
	}
}

func (a *API) respond(out *nats.Msg) {
	if err := a.conn.PublishMsg(out); err != nil {
		a.log.Debug("reply not sent", "subject", out.Subject, logKeyErr, err)
	}
}

func (a *API) dropped(reason string) {
	if a.cfg.Dropped != nil {
		a.cfg.Dropped(reason)
	}
}

// entryMsg builds the message that delivers e: its payload, its stored
// headers and the Walrus- position headers.
func entryMsg(subject, topic string, e Entry) *nats.Msg {
	m := nats.NewMsg(subject)
	for _, h := range e.Headers {
		m.Header.Add(h.Key, h.Value)
	}
	m.Header.Set(HeaderTopic, topic)
	m.Header.Set(HeaderSegment, strconv.FormatUint(e.Segment, 10))
	m.Header.Set(HeaderOffset, strconv.FormatUint(e.Offset, 10))
	m.Header.Set(HeaderTimestamp, formatTimestamp(e.Timestamp))
	m.Data = e.Value
	return m
}

func formatTimestamp(ns int64) string {
	return time.Unix(0, ns).UTC().Format(time.RFC3339Nano)
}
