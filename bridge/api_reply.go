package bridge

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"strconv"
	"strings"
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

// publicMessage is err's text without the package and class prefixes that
// the code already says: "bridge: bad request: max -1: want 1 to 1000"
// becomes "max -1: want 1 to 1000".
func publicMessage(err error) string {
	classes := []error{ErrBadRequest, ErrMalformed, ErrUnknownTopic, ErrTooLarge, ErrOutcomeUnknown, ErrUnavailable}
	msg := err.Error()
	for {
		trimmed := strings.TrimPrefix(msg, "bridge: ")
		for _, class := range classes {
			trimmed = strings.TrimPrefix(trimmed, strings.TrimPrefix(class.Error(), "bridge: ")+": ")
		}
		if trimmed == msg || trimmed == "" {
			return msg
		}
		msg = trimmed
	}
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
	body.Error.Code, body.Error.Message = code, publicMessage(err)
	b, _ := marshalJSON(body) // plain strings: cannot fail
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
	b, err := marshalJSON(v)
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

func (a *API) dropped(reason string) { a.droppedN(reason, 1) }

func (a *API) droppedN(reason string, n int) {
	if a.cfg.Dropped != nil {
		a.cfg.Dropped(reason, n)
	}
	// Nobody else is told, so say it in the log: at once after a quiet
	// spell, then at most every dropLogEvery with the count since.
	a.drops.Lock()
	defer a.drops.Unlock()
	a.drops.n += n
	if now := time.Now(); now.Sub(a.drops.last) >= dropLogEvery {
		a.log.Warn("messages without a reply subject were not stored (at-most-once)",
			"count", a.drops.n, "last_reason", reason, "metric", "walrus_nats_publish_dropped_total")
		a.drops.last, a.drops.n = now, 0
	}
}

// dropLogEvery rate-limits the warning about dropped plain publishes.
const dropLogEvery = 10 * time.Second

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

// marshalJSON encodes v without the HTML escaping of json.Marshal: subjects
// such as "sensors.>" read back as written, not as "sensors.\u003e".
func marshalJSON(v any) ([]byte, error) {
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(v); err != nil {
		return nil, err
	}
	return bytes.TrimSuffix(buf.Bytes(), []byte("\n")), nil
}
