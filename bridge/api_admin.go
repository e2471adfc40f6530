package bridge

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
)

// onAdmin serves prefix.admin.register.<topic>, .state.<topic>,
// .capture.<topic> and prefix.admin.metrics.
func (a *API) onAdmin(ctx context.Context, msg *nats.Msg) {
	if msg.Reply == "" {
		return
	}
	rest := a.topicOf(msg.Subject, "admin")
	if rest == "metrics" {
		body, err := a.backend.Metrics()
		a.replyBytes(msg, body, err)
		return
	}
	verb, topic, _ := strings.Cut(rest, ".")
	if !validSubject(topic, false) {
		a.replyError(msg, fmt.Errorf("%w: subject %q: want %s.admin.{register,state,capture}.<topic> or %s.admin.metrics",
			ErrBadRequest, msg.Subject, a.cfg.Prefix, a.cfg.Prefix))
		return
	}
	ctx, cancel := context.WithTimeout(ctx, a.cfg.RequestTimeout)
	defer cancel()
	switch verb {
	case "register":
		if err := a.backend.Register(ctx, topic); err != nil {
			a.replyError(msg, err)
			return
		}
		a.replyJSON(msg, struct {
			Topic      string `json:"topic"`
			Registered bool   `json:"registered"`
		}{topic, true})
	case "state":
		body, err := a.backend.State(topic)
		a.replyBytes(msg, body, err)
	case "capture":
		a.setCapture(ctx, msg, topic)
	default:
		a.replyError(msg, fmt.Errorf("%w: unknown admin request %q", ErrBadRequest, verb))
	}
}

func (a *API) replyBytes(msg *nats.Msg, body []byte, err error) {
	if err != nil {
		a.replyError(msg, err)
		return
	}
	a.replyRaw(msg, body)
}

type captureBody struct {
	Topic    string   `json:"topic,omitempty"`
	Subjects []string `json:"subjects"`
}

func (a *API) setCapture(ctx context.Context, msg *nats.Msg, topic string) {
	var req captureBody
	if err := decodeStrict(msg.Data, &req); err != nil {
		a.replyError(msg, err)
		return
	}
	if req.Topic != "" && req.Topic != topic {
		a.replyError(msg, fmt.Errorf("%w: body names topic %q, subject %q", ErrBadRequest, req.Topic, topic))
		return
	}
	for _, s := range req.Subjects {
		if err := a.CheckCapture(s); err != nil {
			a.replyError(msg, err)
			return
		}
	}
	subjects := slices.Compact(slices.Clone(req.Subjects))
	if err := a.backend.SetCapture(ctx, topic, subjects); err != nil {
		a.replyError(msg, err)
		return
	}
	if subjects == nil {
		subjects = []string{}
	}
	a.waitClusterInterest(ctx, subjects)
	a.replyJSON(msg, captureBody{Topic: topic, Subjects: subjects})
}

// CheckCapture reports why subject cannot be captured: it must be a valid
// subject whose first token is a literal that is not the prefix nor a
// system subject's (_WALRUS, _INBOX, $...), so that Walrus never captures
// its own traffic.
func (a *API) CheckCapture(subject string) error {
	if !validSubject(subject, true) {
		return fmt.Errorf("%w: %q is not a valid NATS subject", ErrBadRequest, subject)
	}
	first, _, _ := strings.Cut(subject, ".")
	if first == "*" || first == ">" || first == a.cfg.Prefix || strings.HasPrefix(first, "_") || strings.HasPrefix(first, "$") {
		return fmt.Errorf("%w: cannot capture %q: the first token must be a literal other than %q and not start with _ or $",
			ErrBadRequest, subject, a.cfg.Prefix)
	}
	return nil
}

// captureKey names one subscription of a led topic: its publish subject
// (subject "") or one of its capture subjects.
type captureKey struct{ topic, subject string }

// pubQueue is the queue group of the topics' publish subjects: while a
// segment's leadership moves, old and new leader may both subscribe for a
// moment, and each message must still be stored once.
const pubQueue = "walrus-pub"

// SetLeading makes the node's produce subscriptions match led: the topics
// whose open segment this node leads, each with its capture subjects. The
// broker calls it whenever the metadata changes.
//
// Only the leader subscribes to a topic's publish and capture subjects, so
// every message for a topic travels to one node, over one route, in the
// order its publisher sent it, and is stored by one pipeline in that order;
// the leader also holds the topic's deduplication window. (NATS queue
// groups would hand a connection's messages to random nodes.) When the
// leadership moves, the old leader keeps its subscriptions for
// leaderHandoff, in the same queue group as the new one's, so that no
// publish finds nobody while the new subscription spreads; what it
// receives meanwhile it stores through the new leader.
func (a *API) SetLeading(led map[string][]string) {
	want := map[captureKey]bool{}
	for topic, subjects := range led {
		if validSubject(topic, false) {
			want[captureKey{topic: topic}] = true
		}
		for _, s := range subjects {
			if a.CheckCapture(s) == nil {
				want[captureKey{topic, s}] = true
			}
		}
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.mu.stopped {
		return
	}
	for k, sub := range a.mu.leading {
		if !want[k] {
			// Keep serving for leaderHandoff: the new leader's subscription
			// reaches the other nodes asynchronously, and until it has, an
			// unsubscribed old leader would leave publishes with nobody.
			delete(a.mu.leading, k)
			r := &retiring{sub: sub}
			r.timer = time.AfterFunc(leaderHandoff, func() { a.retire(k, r) })
			a.mu.retiring[k] = r
			a.log.Debug("produce subscription retiring", "topic", k.topic, "subject", sub.Subject)
		}
	}
	for k := range want {
		if _, ok := a.mu.leading[k]; ok {
			continue
		}
		if r, ok := a.mu.retiring[k]; ok { // led again before it retired
			r.timer.Stop()
			delete(a.mu.retiring, k)
			a.mu.leading[k] = r.sub
			if p := a.mu.producers[k.topic]; p != nil && k.subject == "" {
				p.seed = true
			}
			continue
		}
		topic := k.topic
		subject, queue, cb := a.cfg.Prefix+".pub."+topic, pubQueue, nats.MsgHandler(a.onPublish)
		if k.subject != "" {
			subject, queue = k.subject, captureQueue(topic)
			cb = func(msg *nats.Msg) { a.onCapture(topic, msg) }
		}
		sub, err := a.conn.QueueSubscribe(subject, queue, cb)
		if err != nil {
			a.log.Warn("subscribe", "topic", topic, "subject", subject, logKeyErr, err)
			continue
		}
		a.mu.leading[k] = sub
		if p := a.mu.producers[topic]; p != nil && k.subject == "" {
			p.seed = true // others stored in the topic meanwhile: reread the window
		}
		a.log.Debug("produce subscription added", "topic", topic, "subject", subject)
	}
}

// leaderHandoff is how long a node keeps a topic's produce subscriptions
// after it stopped leading the topic.
const leaderHandoff = 2 * time.Second

// retiring is a produce subscription of a topic this node no longer leads,
// unsubscribed when its timer fires.
type retiring struct {
	sub   *nats.Subscription
	timer *time.Timer
}

// retire unsubscribes r unless the topic was led again meanwhile.
func (a *API) retire(k captureKey, r *retiring) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.mu.retiring[k] != r {
		return
	}
	delete(a.mu.retiring, k)
	delete(a.mu.slowSeen, r.sub)
	if err := r.sub.Unsubscribe(); err != nil {
		a.log.Debug("unsubscribe", "topic", k.topic, "subject", r.sub.Subject, logKeyErr, err)
	}
	a.log.Debug("produce subscription removed", "topic", k.topic, "subject", r.sub.Subject)
}

// onCapture stores a message published on a captured subject. Nothing is
// answered: the publisher talks to someone else.
func (a *API) onCapture(topic string, msg *nats.Msg) {
	rec, err := a.record(msg, true)
	if err != nil {
		a.dropped(PublicCode(err))
		a.log.Debug("captured message not stored", "topic", topic, "subject", msg.Subject, logKeyErr, err)
		return
	}
	msg.Reply = ""
	a.enqueue(topic, msg, rec)
}

// captureQueue names the queue group of a topic's captures; topic names
// may hold characters a queue name cannot.
func captureQueue(topic string) string {
	h := sha256.Sum256([]byte(topic))
	return "walrus-capture-" + hex.EncodeToString(h[:8])
}

// server returns the running embedded server, or nil.
func (b *Bridge) server() *server.Server {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.mu.srv
}
