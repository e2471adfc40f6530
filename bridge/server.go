package bridge

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/url"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
)

// startTimeout bounds Start when ctx has no earlier deadline.
const startTimeout = 30 * time.Second

// connCloseWait bounds Shutdown's wait for the in-process connection's
// closed callback (closing is local; it normally takes microseconds).
const connCloseWait = 2 * time.Second

// rpcQueue is the queue group of the RPC subscription: should two processes
// ever claim the same node id, each request still reaches only one.
const rpcQueue = "walrus-rpc"

type state int

const (
	stateNew state = iota
	stateRunning
	stateStopping
	stateStopped
)

// Bridge runs the node's embedded NATS server, its in-process connection
// and the internal RPC service. See the package documentation.
type Bridge struct {
	cfg     Config
	log     *slog.Logger
	subject string
	dedup   *dedup
	sem     chan struct{} // one token per running handler call
	handler atomic.Pointer[handlerBox]
	// slowConsumer, set by the public API, hears of subscriptions whose
	// messages the client library dropped.
	slowConsumer atomic.Pointer[func(*nats.Subscription)]

	// lifeMu serialises Start, Shutdown and SetRoutes; each holds it
	// throughout. It is taken before mu.
	lifeMu sync.Mutex

	mu struct {
		sync.Mutex
		state     state
		routes    []*url.URL      // route seeds, self excluded
		srv       *server.Server  // set while running
		srvOpts   *server.Options // the options srv currently runs with
		conn      *nats.Conn
		sub       *nats.Subscription
		connDone  chan struct{} // closed by the conn's closed callback
		ctx       context.Context
		cancel    context.CancelFunc
		clientURL string
		routeURL  string
	}
	handlers sync.WaitGroup // handler goroutines, added under mu while running
}

type handlerBox struct{ h Handler }

// New validates cfg and allocates a Bridge. It starts no goroutines and
// opens no ports or files.
func New(cfg Config) (*Bridge, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	cfg = cfg.withDefaults()
	routes, err := parseRoutes(cfg.Routes)
	if err != nil {
		return nil, err
	}
	b := &Bridge{
		cfg:     cfg,
		log:     cfg.Logger.With(logKeyComponent, "bridge", logKeyNode, cfg.NodeID),
		subject: rpcSubject(cfg.NodeID),
		dedup:   newDedup(cfg.DedupWindow, cfg.DedupEntries),
		sem:     make(chan struct{}, cfg.MaxConcurrent),
	}
	b.mu.routes = routes
	return b, nil
}

// rpcSubject is the subject node id serves its RPCs on.
func rpcSubject(node uint64) string {
	return "_WALRUS.rpc." + strconv.FormatUint(node, 10)
}

// SetHandler sets the handler of incoming RPCs. It may be called before
// Start or at any time; requests that arrive while no handler is set are
// answered CodeUnavailable, which callers retry.
func (b *Bridge) SetHandler(h Handler) {
	if h == nil {
		b.handler.Store(nil)
		return
	}
	b.handler.Store(&handlerBox{h: h})
}

// Start starts the embedded NATS server, waits until its listeners are up,
// connects the in-process client and subscribes to this node's RPC subject.
// ctx bounds the wait (30s if ctx has no earlier deadline). On error
// everything started is undone and Start may be called again; after
// Shutdown it returns ErrClosed.
func (b *Bridge) Start(ctx context.Context) (err error) {
	b.lifeMu.Lock()
	defer b.lifeMu.Unlock()
	b.mu.Lock()
	st, routes := b.mu.state, b.mu.routes
	b.mu.Unlock()
	switch st {
	case stateRunning:
		return errors.New("bridge: already started")
	case stateStopping, stateStopped:
		return ErrClosed
	}
	ctx, cancelStart := context.WithTimeout(ctx, startTimeout)
	defer cancelStart()

	srv, opts, err := b.startServer(ctx, routes)
	if err != nil {
		return err
	}
	defer func() {
		if err != nil {
			srv.Shutdown()
			srv.WaitForShutdown()
		}
	}()
	conn, connDone, err := b.connect(srv)
	if err != nil {
		return err
	}
	defer func() {
		if err != nil {
			_ = closeConn(conn, connDone) // the start error is the one to report
		}
	}()

	hctx, cancel := context.WithCancel(context.Background())
	b.mu.Lock()
	b.mu.state = stateRunning
	b.mu.srv, b.mu.srvOpts, b.mu.conn, b.mu.connDone = srv, opts, conn, connDone
	b.mu.ctx, b.mu.cancel = hctx, cancel
	b.mu.clientURL = "nats://" + hostPort(b.cfg.Advertise, srv.Addr().(*net.TCPAddr).Port)
	b.mu.routeURL = "nats-route://" + hostPort(b.cfg.Advertise, srv.ClusterAddr().Port)
	b.mu.Unlock()
	defer func() {
		if err != nil {
			b.unwindRunning(cancel)
		}
	}()

	sub, err := conn.QueueSubscribe(b.subject, rpcQueue, b.onRequest)
	if err != nil {
		return fmt.Errorf("bridge: subscribe %s: %w", b.subject, err)
	}
	if err := conn.FlushWithContext(ctx); err != nil {
		return fmt.Errorf("bridge: subscribe %s: %w", b.subject, err)
	}
	b.mu.Lock()
	b.mu.sub = sub
	b.mu.Unlock()
	b.log.Info("bridge started", "client_url", b.ClientURL(), "route_url", b.RouteURL(),
		"routes", len(routes))
	return nil
}

// startServer creates and starts the embedded server and waits until it
// is ready. On error nothing is left running.
func (b *Bridge) startServer(ctx context.Context, routes []*url.URL) (*server.Server, *server.Options, error) {
	if b.cfg.ClusterPort != 0 {
		routes = withoutSelf(routes, "nats-route://"+hostPort(b.cfg.Advertise, b.cfg.ClusterPort))
	}
	opts := b.serverOptions(routes)
	srv, err := server.NewServer(opts)
	if err != nil {
		return nil, nil, fmt.Errorf("bridge: new nats server: %w", err)
	}
	nl := newNATSLogger(b.cfg.Logger)
	debug, trace := nl.levels()
	srv.SetLoggerV2(nl, debug, trace, false)
	srv.Start()
	if err := waitReady(ctx, srv, nl.fatal); err != nil {
		srv.Shutdown()
		srv.WaitForShutdown()
		return nil, nil, err
	}
	return srv, opts, nil
}

// connect opens the in-process connection to srv. The returned channel is
// closed when the connection has closed.
func (b *Bridge) connect(srv *server.Server) (*nats.Conn, chan struct{}, error) {
	connDone := make(chan struct{})
	conn, err := nats.Connect("",
		nats.InProcessServer(srv),
		nats.Name("walrus-bridge-"+strconv.FormatUint(b.cfg.NodeID, 10)),
		nats.NoReconnect(),
		nats.ClosedHandler(func(*nats.Conn) { close(connDone) }),
		nats.ErrorHandler(b.asyncError),
	)
	if err != nil {
		return nil, nil, fmt.Errorf("bridge: connect in-process: %w", err)
	}
	return conn, connDone, nil
}

// closeConn closes conn and waits (briefly) for its closed callback, after
// which its goroutines are exiting.
func closeConn(conn *nats.Conn, done <-chan struct{}) error {
	conn.Close()
	select {
	case <-done:
		return nil
	case <-time.After(connCloseWait):
		return errors.New("bridge: in-process connection did not report closed")
	}
}

// unwindRunning undoes the running state after a failed Start: it refuses
// new handler calls, cancels and waits for the running ones.
func (b *Bridge) unwindRunning(cancel context.CancelFunc) {
	b.mu.Lock()
	b.mu.state = stateStopping
	b.mu.Unlock()
	cancel()
	b.handlers.Wait()
	b.mu.Lock()
	b.mu.state = stateNew
	b.mu.srv, b.mu.srvOpts, b.mu.conn, b.mu.connDone, b.mu.sub = nil, nil, nil, nil, nil
	b.mu.clientURL, b.mu.routeURL = "", ""
	b.mu.Unlock()
}

// serverOptions builds the embedded server's options.
func (b *Bridge) serverOptions(routes []*url.URL) *server.Options {
	port := func(p int) int {
		if p == 0 {
			return server.RANDOM_PORT
		}
		return p
	}
	opts := &server.Options{
		ServerName: "walrus-" + strconv.FormatUint(b.cfg.NodeID, 10),
		Host:       b.cfg.Host,
		Port:       port(b.cfg.ClientPort),
		NoSigs:     true,
		MaxPayload: int32(b.cfg.MaxPayload),
		Cluster: server.ClusterOpts{
			Name: b.cfg.ClusterName,
			Host: b.cfg.Host,
			Port: port(b.cfg.ClusterPort),
		},
		Routes: routes,
	}
	if b.cfg.Advertise != b.cfg.Host {
		// Port 0 means "the listener's port" to the server.
		opts.Cluster.Advertise = hostPort(b.cfg.Advertise, 0)
		opts.ClientAdvertise = hostPort(b.cfg.Advertise, 0)
	}
	if b.cfg.ClientAdvertise != "" {
		opts.ClientAdvertise = b.cfg.ClientAdvertise
	}
	if leafs, _ := ParseLeafnodes(b.cfg.Leafnodes); len(leafs) > 0 { // validated by New
		// One remote with every URL: one upstream connection, failing
		// over between the URLs. The internal RPC subjects never cross.
		opts.LeafNode.Remotes = []*server.RemoteLeafOpts{{
			URLs:        leafs,
			Credentials: b.cfg.LeafnodeCredentials,
			TLS:         isTLS(leafs[0]),
			DenyExports: []string{internalSubjects},
			DenyImports: []string{internalSubjects},
		}}
	}
	return opts
}

// waitReady waits until srv's listeners are up, a listener failed (the
// server logs a fatal line) or ctx is done.
func waitReady(ctx context.Context, srv *server.Server, fatal <-chan string) error {
	for !srv.ReadyForConnections(25 * time.Millisecond) {
		select {
		case msg := <-fatal:
			return fmt.Errorf("bridge: start nats server: %s", msg)
		case <-ctx.Done():
			return fmt.Errorf("bridge: start nats server: not ready: %w", ctx.Err())
		default:
		}
	}
	return nil
}

func (b *Bridge) asyncError(_ *nats.Conn, sub *nats.Subscription, err error) {
	subject := ""
	if sub != nil {
		subject = sub.Subject
	}
	b.log.Warn("nats async error", "subject", subject, logKeyErr, err)
	if h := b.slowConsumer.Load(); h != nil && sub != nil && errors.Is(err, nats.ErrSlowConsumer) {
		(*h)(sub)
	}
}

// Shutdown stops the bridge. It is idempotent and safe before Start. ctx
// bounds the graceful part (step 2); the rest is done regardless:
//
//  1. Unsubscribe from the RPC subject: new requests find no responder and
//     their callers retry; requests already delivered are refused with
//     CodeUnavailable.
//  2. Wait for running handler calls until ctx is done, then cancel their
//     context and wait for them to return.
//  3. Flush the replies and close the in-process connection.
//  4. Shut down the NATS server (routes, client connections) and wait for
//     all its goroutines.
func (b *Bridge) Shutdown(ctx context.Context) error {
	b.lifeMu.Lock()
	defer b.lifeMu.Unlock()
	b.mu.Lock()
	if b.mu.state != stateRunning {
		b.mu.state = stateStopped
		b.mu.Unlock()
		return nil
	}
	b.mu.state = stateStopping
	srv, conn, sub, connDone, cancel := b.mu.srv, b.mu.conn, b.mu.sub, b.mu.connDone, b.mu.cancel
	b.mu.Unlock()

	var errs []error
	if err := sub.Unsubscribe(); err != nil {
		errs = append(errs, fmt.Errorf("bridge: unsubscribe: %w", err))
	}

	handlersDone := make(chan struct{})
	go func() { // owned here: Shutdown waits for it below
		b.handlers.Wait()
		close(handlersDone)
	}()
	select {
	case <-handlersDone:
	case <-ctx.Done():
		errs = append(errs, fmt.Errorf("bridge: wait for handlers: %w", ctx.Err()))
	}
	cancel()
	<-handlersDone

	if err := conn.FlushTimeout(time.Second); err != nil {
		b.log.Debug("flush before close", logKeyErr, err)
	}
	if err := closeConn(conn, connDone); err != nil {
		errs = append(errs, err)
	}

	srv.Shutdown()
	srv.WaitForShutdown()

	b.mu.Lock()
	b.mu.state = stateStopped
	b.mu.srv, b.mu.srvOpts, b.mu.sub = nil, nil, nil
	b.mu.Unlock()
	b.log.Info("bridge stopped")
	return errors.Join(errs...)
}

// ClientURL returns the URL NATS clients use to reach this node
// ("nats://advertise:port"), or "" when the bridge is not running.
func (b *Bridge) ClientURL() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.mu.clientURL
}

// RouteURL returns the route URL peers use to reach this node
// ("nats-route://advertise:port"), or "" before Start.
func (b *Bridge) RouteURL() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.mu.routeURL
}

// Conn returns the in-process connection to the embedded server, or nil
// before Start. It is closed by Shutdown; callers must not close it.
func (b *Bridge) Conn() *nats.Conn {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.mu.conn
}

// SetRoutes replaces the route seeds. Before Start it sets the seeds Start
// uses; while running it reloads the server's routes with
// server.ReloadOptions: new seeds are dialled, and the route dialled to a
// seed that is no longer listed is closed and not redialled by either side
// (routes that gossip made stay). So pass the full list of members, not
// just the new ones. This node's own route URL is ignored.
func (b *Bridge) SetRoutes(urls []string) error {
	parsed, err := parseRoutes(urls)
	if err != nil {
		return err
	}
	b.lifeMu.Lock()
	defer b.lifeMu.Unlock()
	b.mu.Lock()
	st, srv, cur, self := b.mu.state, b.mu.srv, b.mu.srvOpts, b.mu.routeURL
	b.mu.Unlock()
	switch st {
	case stateNew:
		b.mu.Lock()
		b.mu.routes = parsed
		b.mu.Unlock()
		return nil
	case stateStopping, stateStopped:
		return ErrClosed
	}
	parsed = withoutSelf(parsed, self)
	next := cur.Clone()
	next.Routes = parsed
	keep := next.Clone() // ReloadOptions takes ownership of next
	if err := srv.ReloadOptions(next); err != nil {
		return fmt.Errorf("bridge: reload routes: %w", err)
	}
	b.mu.Lock()
	b.mu.routes = parsed
	b.mu.srvOpts = keep
	b.mu.Unlock()
	b.log.Info("routes set", "routes", len(parsed))
	return nil
}

// withoutSelf drops the routes equal to self (this node's route URL).
func withoutSelf(routes []*url.URL, self string) []*url.URL {
	out := make([]*url.URL, 0, len(routes))
	for _, u := range routes {
		if "nats-route://"+u.Host == self {
			continue
		}
		out = append(out, u)
	}
	return out
}
