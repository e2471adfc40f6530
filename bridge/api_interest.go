package bridge

import (
	"context"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
)

// Route interest propagates asynchronously: a subscription made on one node
// reaches the others' servers a few milliseconds later. A registration (or a
// capture binding) that replied as soon as the Raft log applied it would let
// a script that registers through one node and publishes through another
// get "no responders". So the node answering the admin request waits until
// every server of the cluster routes the new subjects: its own directly, its
// peers through a scatter request on interestSubject, which each node's API
// answers once its own server has the interest (or gives up).

// interestSubject is the internal subject of interest checks; the body is
// one subject per line.
const interestSubject = "_WALRUS.interest"

// interestPoll is how often a node re-checks its server's interest.
const interestPoll = 5 * time.Millisecond

// interestProbe turns a subscription subject into a literal subject it
// matches, so that wildcard capture subjects can be checked too.
func interestProbe(subject string) string {
	toks := strings.Split(subject, ".")
	for i, t := range toks {
		if t == "*" || t == ">" {
			toks[i] = "_walrus_probe"
		}
	}
	return strings.Join(toks, ".")
}

// hasInterest reports whether this node's server routes every subject to a
// subscriber.
func (a *API) hasInterest(subjects []string) bool {
	srv := a.b.server()
	if srv == nil {
		return false
	}
	acc := srv.GlobalAccount()
	for _, s := range subjects {
		if !acc.SubscriptionInterest(interestProbe(s)) {
			return false
		}
	}
	return true
}

// waitLocalInterest waits until this node's server routes subjects or ctx is
// done, and reports which.
func (a *API) waitLocalInterest(ctx context.Context, subjects []string) bool {
	t := time.NewTicker(interestPoll)
	defer t.Stop()
	for !a.hasInterest(subjects) {
		select {
		case <-ctx.Done():
			return false
		case <-t.C:
		}
	}
	return true
}

// WaitPublishable waits, at most a couple of seconds, until every node of
// the cluster routes topic's publish subject to its leader, so that a
// publish through any node right after a registration finds the topic. The
// broker calls it from every registration, TCP and NATS alike.
func (a *API) WaitPublishable(ctx context.Context, topic string) {
	if validSubject(topic, false) {
		a.waitClusterInterest(ctx, []string{a.cfg.Prefix + ".pub." + topic})
	}
}

// interestWait bounds waitClusterInterest: a node that is up but not
// serving yet must not hold an admin reply for the whole request timeout.
const interestWait = 2 * time.Second

// waitClusterInterest waits until this node's server and every server
// routed to it route subjects to a subscriber, at most interestWait. It
// logs, rather than fails, when the time runs out: the change is committed
// and the cluster will learn the subjects.
func (a *API) waitClusterInterest(ctx context.Context, subjects []string) {
	if len(subjects) == 0 {
		return
	}
	ctx, cancel := context.WithTimeout(ctx, interestWait)
	defer cancel()
	if !a.waitLocalInterest(ctx, subjects) {
		a.log.Warn("new subjects not routed by this node in time", "subjects", subjects)
		return
	}
	srv := a.b.server()
	if srv == nil {
		return
	}
	// Every node's API answers, this one's included.
	peers := srv.NumRemotes() + 1
	if peers == 1 {
		return
	}
	inbox := a.conn.NewRespInbox()
	replies := make(chan *nats.Msg, peers)
	sub, err := a.conn.ChanSubscribe(inbox, replies)
	if err != nil {
		a.log.Warn("interest check: subscribe", logKeyErr, err)
		return
	}
	defer func() { _ = sub.Unsubscribe() }()
	body := []byte(strings.Join(subjects, "\n"))
	if err := a.conn.PublishRequest(interestSubject, inbox, body); err != nil {
		a.log.Warn("interest check: publish", logKeyErr, err)
		return
	}
	for got := 0; got < peers; {
		select {
		case m := <-replies:
			if string(m.Data) == "ok" {
				got++
			}
		case <-ctx.Done():
			a.log.Warn("new subjects not routed by every node in time", "subjects", subjects, "confirmed", got, "peers", peers)
			return
		}
	}
}

// onInterest answers a peer's interest check once this node's server routes
// the subjects; a node that cannot confirm in time stays silent and the
// asking node gives up at its own deadline.
func (a *API) onInterest(ctx context.Context, msg *nats.Msg) {
	if msg.Reply == "" {
		return
	}
	subjects := strings.Split(string(msg.Data), "\n")
	ctx, cancel := context.WithTimeout(ctx, a.cfg.RequestTimeout)
	defer cancel()
	if a.waitLocalInterest(ctx, subjects) {
		a.respond(&nats.Msg{Subject: msg.Reply, Data: []byte("ok")})
	}
}
