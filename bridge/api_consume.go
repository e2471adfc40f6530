package bridge

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"time"

	"github.com/nats-io/nats.go"
)

// onGet serves prefix.get.<topic>: the next entry through the shared cursor.
func (a *API) onGet(ctx context.Context, msg *nats.Msg) {
	topic, ok := a.requestTopic(msg, "get")
	if !ok {
		return
	}
	ctx, cancel := context.WithTimeout(ctx, a.cfg.RequestTimeout)
	defer cancel()
	e, ok, err := a.backend.Next(ctx, topic)
	switch {
	case err != nil:
		a.replyError(msg, err)
	case !ok:
		out := nats.NewMsg(msg.Reply)
		out.Header.Set(HeaderStatus, "empty")
		a.respond(out)
	default:
		a.respond(entryMsg(msg.Reply, topic, e))
	}
}

// requestTopic returns the topic a request names, answering it with an
// error if it names none or has no reply subject.
func (a *API) requestTopic(msg *nats.Msg, verb string) (string, bool) {
	if msg.Reply == "" {
		a.log.Debug("request without reply subject dropped", "subject", msg.Subject)
		return "", false
	}
	topic := a.topicOf(msg.Subject, verb)
	if !validSubject(topic, false) {
		a.replyError(msg, fmt.Errorf("%w: subject %q names no topic", ErrBadRequest, msg.Subject))
		return "", false
	}
	return topic, true
}

// fetchRequest is the JSON body of prefix.fetch.<topic>.
type fetchRequest struct {
	Offset   *uint64 `json:"offset"`
	Group    string  `json:"group"`
	Max      int     `json:"max"`
	MaxBytes int64   `json:"max_bytes"`
	WaitMS   int64   `json:"wait_ms"`
	Commit   bool    `json:"commit"`
}

type fetchEntry struct {
	Offset    uint64              `json:"offset"`
	Segment   uint64              `json:"segment"`
	Index     uint64              `json:"index"`
	Timestamp string              `json:"timestamp"`
	Headers   map[string][]string `json:"headers,omitempty"`
	Data      []byte              `json:"data"` // base64 in JSON
}

type fetchReply struct {
	Topic      string       `json:"topic"`
	Group      string       `json:"group,omitempty"`
	Entries    []fetchEntry `json:"entries"`
	NextOffset uint64       `json:"next_offset"`
}

// decodeStrict decodes one JSON object into v, refusing unknown fields and
// trailing data. An empty body is {}.
func decodeStrict(body []byte, v any) error {
	if len(bytes.TrimSpace(body)) == 0 {
		return nil
	}
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return fmt.Errorf("%w: body is not the expected JSON: %v", ErrBadRequest, err)
	}
	if dec.More() {
		return fmt.Errorf("%w: trailing data after the JSON body", ErrBadRequest)
	}
	return nil
}

func (r *fetchRequest) validate(maxBytesCap int64) error {
	switch {
	case r.Offset != nil && r.Group != "":
		return fmt.Errorf("%w: give offset or group, not both", ErrBadRequest)
	case r.Commit && r.Group == "":
		return fmt.Errorf("%w: commit needs a group", ErrBadRequest)
	case r.Max < 0 || r.Max > maxFetchEntries:
		return fmt.Errorf("%w: max %d: want 1 to %d", ErrBadRequest, r.Max, maxFetchEntries)
	case r.MaxBytes < 0:
		return fmt.Errorf("%w: max_bytes %d is negative", ErrBadRequest, r.MaxBytes)
	case r.WaitMS < 0 || r.WaitMS > maxFetchWait.Milliseconds():
		return fmt.Errorf("%w: wait_ms %d: want 0 to %d", ErrBadRequest, r.WaitMS, maxFetchWait.Milliseconds())
	}
	if r.Max == 0 {
		r.Max = DefaultFetchMax
	}
	if r.MaxBytes == 0 {
		r.MaxBytes = DefaultFetchMaxBytes
	}
	r.MaxBytes = min(r.MaxBytes, maxBytesCap)
	return nil
}

// onFetch serves prefix.fetch.<topic>: a batch by offset or group, without
// moving the shared cursor, waiting up to wait_ms for the first entry.
func (a *API) onFetch(ctx context.Context, msg *nats.Msg) {
	topic, ok := a.requestTopic(msg, "fetch")
	if !ok {
		return
	}
	var req fetchRequest
	if err := decodeStrict(msg.Data, &req); err != nil {
		a.replyError(msg, err)
		return
	}
	// base64 takes 4 bytes for 3; keep room for headers and framing.
	if err := req.validate((a.b.cfg.MaxPayload - responseOverhead) / 4 * 3); err != nil {
		a.replyError(msg, err)
		return
	}
	wait := time.Duration(req.WaitMS) * time.Millisecond
	ctx, cancel := context.WithTimeout(ctx, wait+a.cfg.RequestTimeout)
	defer cancel()
	var from uint64
	if req.Offset != nil {
		from = *req.Offset
	}
	if req.Group != "" {
		off, err := a.backend.GroupOffset(ctx, topic, req.Group)
		if err != nil {
			a.replyError(msg, err)
			return
		}
		from = off
	}
	entries, next, err := a.backend.ReadFrom(ctx, topic, from, req.Max, req.MaxBytes, wait)
	if err != nil {
		a.replyError(msg, err)
		return
	}
	reply := fetchReply{Topic: topic, Group: req.Group, Entries: make([]fetchEntry, 0, len(entries)), NextOffset: next}
	for _, e := range entries {
		fe := fetchEntry{Offset: e.Offset, Segment: e.Segment, Index: e.Index,
			Timestamp: formatTimestamp(e.Timestamp), Data: e.Value}
		if fe.Data == nil {
			fe.Data = []byte{}
		}
		if len(e.Headers) > 0 {
			fe.Headers = map[string][]string{}
			for _, h := range e.Headers {
				fe.Headers[h.Key] = append(fe.Headers[h.Key], h.Value)
			}
		}
		reply.Entries = append(reply.Entries, fe)
	}
	body, err := a.fitFetch(&reply)
	if err != nil {
		a.replyError(msg, err)
		return
	}
	if req.Commit && reply.NextOffset > from {
		if _, err := a.backend.CommitGroup(ctx, topic, req.Group, reply.NextOffset); err != nil {
			a.replyError(msg, fmt.Errorf("read %d entries but could not commit: %w", len(reply.Entries), err))
			return
		}
	}
	a.replyRaw(msg, body)
}

// fitFetch encodes reply, dropping entries from the end until it fits the
// NATS max payload; a single entry that cannot fit is an error.
func (a *API) fitFetch(reply *fetchReply) ([]byte, error) {
	limit := int(a.b.cfg.MaxPayload) - 1024
	for {
		body, err := marshalJSON(reply)
		if err != nil {
			return nil, fmt.Errorf("encode fetch reply: %w", err)
		}
		if len(body) <= limit {
			return body, nil
		}
		if len(reply.Entries) <= 1 {
			return nil, fmt.Errorf("%w: the entry at offset %d does not fit a NATS message as JSON (%d bytes); read it with walrus.get or the TCP protocol",
				ErrTooLarge, reply.Entries[0].Offset, len(body))
		}
		half := len(reply.Entries) / 2
		reply.Entries = reply.Entries[:half]
		reply.NextOffset = reply.Entries[half-1].Offset + 1
	}
}

type commitRequest struct {
	Group  string  `json:"group"`
	Offset *uint64 `json:"offset"`
}

type commitReply struct {
	Topic  string `json:"topic"`
	Group  string `json:"group"`
	Offset uint64 `json:"offset"`
}

// onCommit serves prefix.commit.<topic>: moves a group's offset forward.
func (a *API) onCommit(ctx context.Context, msg *nats.Msg) {
	topic, ok := a.requestTopic(msg, "commit")
	if !ok {
		return
	}
	var req commitRequest
	if err := decodeStrict(msg.Data, &req); err != nil {
		a.replyError(msg, err)
		return
	}
	if req.Group == "" || req.Offset == nil {
		a.replyError(msg, fmt.Errorf(`%w: want {"group":"<name>","offset":<n>}`, ErrBadRequest))
		return
	}
	ctx, cancel := context.WithTimeout(ctx, a.cfg.RequestTimeout)
	defer cancel()
	off, err := a.backend.CommitGroup(ctx, topic, req.Group, *req.Offset)
	if err != nil {
		a.replyError(msg, err)
		return
	}
	a.replyJSON(msg, commitReply{Topic: topic, Group: req.Group, Offset: off})
}

// TailInterest reports whether anyone, on any node or upstream, subscribes
// to the topic's tail subject.
func (a *API) TailInterest(topic string) bool {
	srv := a.b.server()
	if srv == nil {
		return false
	}
	acc := srv.GlobalAccount()
	return acc != nil && acc.SubscriptionInterest(a.tailSubject(topic))
}

func (a *API) tailSubject(topic string) string { return a.cfg.Prefix + ".tail." + topic }

// Tail publishes newly appended entries on prefix.tail.<topic>, in the
// order given.
func (a *API) Tail(topic string, entries []Entry) {
	if !validSubject(topic, false) {
		return
	}
	subject := a.tailSubject(topic)
	for _, e := range entries {
		if err := a.conn.PublishMsg(entryMsg(subject, topic, e)); err != nil {
			a.log.Debug("tail publish", "topic", topic, logKeyErr, err)
			return
		}
	}
}
