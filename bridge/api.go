package bridge

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
)

// The public subject API (docs/nats.md): NATS clients produce to and consume
// from topics with plain subjects under a prefix. The broker implements
// Backend; the API owns the subscriptions, the per-topic produce pipelines
// and the JSON formats.

// Defaults of APIConfig.
const (
	DefaultPrefix          = "walrus"
	DefaultMaxMessageBytes = 1 << 20
	DefaultFetchMax        = 100
	DefaultFetchMaxBytes   = 1 << 20
	maxFetchEntries        = 1000
	maxFetchWait           = 60 * time.Second
	apiQueue               = "walrus-api"
)

// Position is where an entry is stored.
type Position struct {
	Segment uint64
	Offset  uint64
}

// Backend is what the public API needs from the broker. Every method honours
// ctx. Errors are classified with PublicCode (wrap ErrUnknownTopic,
// ErrBadRequest, ErrTooLarge, ErrUnavailable or ErrOutcomeUnknown, or return
// a *RemoteError).
type Backend interface {
	// Produce appends recs to topic in order and returns each one's
	// position. On error the records before len(positions) are stored and
	// the rest are not (or, with ErrOutcomeUnknown, may be).
	Produce(ctx context.Context, topic string, recs []Record) ([]Position, error)
	// Next reads the next entry through the shared destructive cursor; ok is
	// false when the topic has nothing more.
	Next(ctx context.Context, topic string) (e Entry, ok bool, err error)
	// ReadFrom reads up to maxEntries (about maxBytes of payload, at least
	// one entry) from topic offset from, waiting up to wait for the first
	// one. next is the offset to continue from.
	ReadFrom(ctx context.Context, topic string, from uint64, maxEntries int, maxBytes int64, wait time.Duration) (entries []Entry, next uint64, err error)
	// GroupOffset returns a consumer group's committed offset (0 if none).
	GroupOffset(ctx context.Context, topic, group string) (uint64, error)
	// CommitGroup moves a group's offset forward to offset and returns the
	// group's offset afterwards.
	CommitGroup(ctx context.Context, topic, group string, offset uint64) (uint64, error)
	// Register creates topic if it does not exist and returns once it can
	// be produced to through any node (see API.WaitPublishable).
	Register(ctx context.Context, topic string) error
	// State returns the topic's STATE JSON; Metrics the node's METRICS JSON.
	State(topic string) ([]byte, error)
	Metrics() ([]byte, error)
	// SetCapture binds topic to NATS subjects (replacing its list).
	SetCapture(ctx context.Context, topic string, subjects []string) error
	// OpenLeader returns the node that leads topic's open segment, if
	// known.
	OpenLeader(topic string) (node uint64, ok bool)
	// Recent returns topic's entries stored at or after since, oldest
	// first, at most maxEntries and about maxBytes of payload, the newest
	// kept; nothing where this node does not lead the topic. A new
	// producer seeds its deduplication window from them.
	Recent(ctx context.Context, topic string, since time.Time, maxEntries int, maxBytes int64) ([]Entry, error)
}

// APIConfig configures the public API.
type APIConfig struct {
	// Prefix is the first token of every public subject. Default "walrus".
	Prefix string
	// MaxMessageBytes bounds a produced entry's payload plus headers.
	// Default 1 MiB.
	MaxMessageBytes int
	// DedupWindow is how long a Nats-Msg-Id is remembered per topic; 0
	// disables deduplication.
	DedupWindow time.Duration
	// RequestTimeout bounds the backend call of one request (a fetch adds
	// its wait). Default: the bridge's RequestTimeout.
	RequestTimeout time.Duration
	// Dropped, if set, is called when n messages without a reply subject
	// (plain publishes or captures) were not stored, with a short reason:
	// a public error code, or "slow_consumer" when NATS dropped them before
	// they reached the node's produce queue.
	Dropped func(reason string, n int)
	// Logger; default the bridge's.
	Logger *slog.Logger
}

// API serves the public subjects on the bridge's server. Create it with
// Bridge.StartAPI, stop it with Stop.
type API struct {
	cfg     APIConfig
	b       *Bridge
	backend Backend
	log     *slog.Logger
	conn    *nats.Conn
	ctx     context.Context
	cancel  context.CancelFunc
	sem     chan struct{}
	wg      sync.WaitGroup // handler and producer goroutines

	idleAfter time.Duration // a producer goroutine exits after this long idle (producerIdle; tests shorten it)

	drops struct { // dropped plain publishes, for the rate-limited warning
		sync.Mutex
		last time.Time
		n    int
	}

	mu struct {
		sync.Mutex
		stopped   bool
		subs      []*nats.Subscription
		producers map[string]*producer
		leading   map[captureKey]*nats.Subscription // pub and capture subscriptions of led topics
		retiring  map[captureKey]*retiring          // subscriptions of topics no longer led, until leaderHandoff passes
		slowSeen  map[*nats.Subscription]int        // messages NATS dropped per leading subscription, as counted so far
	}
}

// StartAPI subscribes the public subjects on the running bridge.
func (b *Bridge) StartAPI(cfg APIConfig, backend Backend) (*API, error) {
	if cfg.Prefix == "" {
		cfg.Prefix = DefaultPrefix
	}
	if !validToken(cfg.Prefix) {
		return nil, fmt.Errorf("%w: prefix %q must be one subject token", ErrInvalidConfig, cfg.Prefix)
	}
	if cfg.MaxMessageBytes <= 0 {
		cfg.MaxMessageBytes = DefaultMaxMessageBytes
	}
	if cfg.RequestTimeout <= 0 {
		cfg.RequestTimeout = b.cfg.RequestTimeout
	}
	if cfg.Logger == nil {
		cfg.Logger = b.cfg.Logger
	}
	conn := b.Conn()
	if conn == nil {
		return nil, ErrClosed
	}
	ctx, cancel := context.WithCancel(context.Background())
	a := &API{
		cfg: cfg, b: b, backend: backend, conn: conn, ctx: ctx, cancel: cancel,
		log: cfg.Logger.With(logKeyComponent, "nats-api", logKeyNode, b.cfg.NodeID),
		sem: make(chan struct{}, b.cfg.MaxConcurrent), idleAfter: producerIdle,
	}
	a.mu.producers = map[string]*producer{}
	a.mu.leading = map[captureKey]*nats.Subscription{}
	a.mu.slowSeen = map[*nats.Subscription]int{}
	a.mu.retiring = map[captureKey]*retiring{}
	handlers := []struct {
		verb string
		fn   nats.MsgHandler
	}{
		{"get", a.async(a.onGet)},
		{"fetch", a.async(a.onFetch)},
		{"commit", a.async(a.onCommit)},
		{"admin", a.async(a.onAdmin)},
	}
	for _, h := range handlers {
		sub, err := conn.QueueSubscribe(cfg.Prefix+"."+h.verb+".>", apiQueue, h.fn)
		if err != nil {
			a.unsubscribeAll()
			cancel()
			return nil, fmt.Errorf("bridge: subscribe %s.%s.>: %w", cfg.Prefix, h.verb, err)
		}
		a.mu.subs = append(a.mu.subs, sub)
	}
	fwd, err := conn.Subscribe(forwardSubject(b.cfg.NodeID, ">"), a.onForwarded)
	if err != nil {
		a.unsubscribeAll()
		cancel()
		return nil, fmt.Errorf("bridge: subscribe %s: %w", forwardSubject(b.cfg.NodeID, ">"), err)
	}
	a.mu.subs = append(a.mu.subs, fwd)
	sub, err := conn.Subscribe(interestSubject, a.async(a.onInterest))
	if err != nil {
		a.unsubscribeAll()
		cancel()
		return nil, fmt.Errorf("bridge: subscribe %s: %w", interestSubject, err)
	}
	a.mu.subs = append(a.mu.subs, sub)
	if err := conn.Flush(); err != nil {
		a.unsubscribeAll()
		cancel()
		return nil, fmt.Errorf("bridge: subscribe public api: %w", err)
	}
	onSlow := a.onSlowConsumer
	b.slowConsumer.Store(&onSlow)
	a.log.Info("nats api started", "prefix", cfg.Prefix)
	return a, nil
}

// Stop unsubscribes every public subject, lets the produce pipelines and
// running requests finish until ctx is done, then cancels them and waits.
// It is idempotent.
func (a *API) Stop(ctx context.Context) error {
	a.mu.Lock()
	if a.mu.stopped {
		a.mu.Unlock()
		return nil
	}
	a.mu.stopped = true
	a.mu.Unlock()
	a.b.slowConsumer.Store(nil)
	a.unsubscribeAll()
	for _, p := range a.producerList() {
		p.wake()
	}
	done := make(chan struct{})
	go func() { // owned here: Stop waits for it
		a.wg.Wait()
		close(done)
	}()
	var err error
	select {
	case <-done:
	case <-ctx.Done():
		err = fmt.Errorf("bridge: stop public api: %w", ctx.Err())
	}
	a.cancel()
	<-done
	return err
}

func (a *API) unsubscribeAll() {
	a.mu.Lock()
	subs := a.mu.subs
	for _, s := range a.mu.leading {
		subs = append(subs, s)
	}
	for _, r := range a.mu.retiring {
		r.timer.Stop()
		subs = append(subs, r.sub)
	}
	clear(a.mu.retiring)
	a.mu.subs, a.mu.leading = nil, map[captureKey]*nats.Subscription{}
	clear(a.mu.slowSeen)
	a.mu.Unlock()
	for _, s := range subs {
		if err := s.Unsubscribe(); err != nil && !errors.Is(err, nats.ErrConnectionClosed) {
			a.log.Debug("unsubscribe", "subject", s.Subject, logKeyErr, err)
		}
	}
}

// async runs fn on its own goroutine (at most MaxConcurrent at once; beyond
// that the request is answered unavailable).
func (a *API) async(fn func(ctx context.Context, msg *nats.Msg)) nats.MsgHandler {
	return func(msg *nats.Msg) {
		select {
		case a.sem <- struct{}{}:
		default:
			a.replyError(msg, fmt.Errorf("%w: node busy: too many requests in flight", ErrUnavailable))
			return
		}
		if !a.goFunc(func() {
			defer func() { <-a.sem }()
			fn(a.ctx, msg)
		}) {
			<-a.sem
			a.replyError(msg, fmt.Errorf("%w: node is stopping", ErrUnavailable))
		}
	}
}

// goFunc starts fn unless the API is stopped.
func (a *API) goFunc(fn func()) bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.mu.stopped {
		return false
	}
	a.wg.Add(1)
	go func() {
		defer a.wg.Done()
		fn()
	}()
	return true
}

// topicOf returns the topic named by the tokens of subject after
// prefix.verb., or "" if there are none.
func (a *API) topicOf(subject, verb string) string {
	return strings.TrimPrefix(subject, a.cfg.Prefix+"."+verb+".")
}

// validToken reports whether s is one literal subject token.
func validToken(s string) bool {
	if s == "" || s == "*" || s == ">" {
		return false
	}
	for _, r := range s {
		if r == '.' || r <= ' ' || r == 0x7f {
			return false
		}
	}
	return !strings.HasPrefix(s, "_") && !strings.HasPrefix(s, "$")
}

// validSubject reports whether s is a subject; with wildcards false it must
// be a literal one (a topic name used in a subject).
func validSubject(s string, wildcards bool) bool {
	if s == "" {
		return false
	}
	toks := strings.Split(s, ".")
	for i, t := range toks {
		if t == "" || strings.ContainsFunc(t, func(r rune) bool { return r <= ' ' || r == 0x7f }) {
			return false
		}
		if (t == "*" || t == ">") && (!wildcards || (t == ">" && i != len(toks)-1)) {
			return false
		}
	}
	return true
}
