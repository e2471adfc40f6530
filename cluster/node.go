package cluster

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/raft"
	raftwal "github.com/hashicorp/raft-wal"
)

// Node is one member of the metadata Raft cluster: the hashicorp/raft
// instance, its raft-wal store and snapshots, the TCP listener it shares with
// the join protocol, and the metadata FSM.
type Node struct {
	cfg      Config
	log      *slog.Logger
	hlog     *hclogAdapter
	fsm      *raftFSM
	leaderCh chan bool // capacity 1; holds only the latest leadership change

	// ctx is canceled when Shutdown begins; it stops the node's goroutines
	// and aborts a Start in progress.
	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup // the goroutines started by goFunc

	raft     atomic.Pointer[raft.Raft] // set once by Start
	hasState atomic.Bool
	// barrierTerm is the last term in which this node, as the leader, saw
	// its FSM apply everything from earlier terms (leaderBarrier).
	barrierTerm atomic.Uint64

	mu struct {
		sync.Mutex
		state    lifecycle
		self     NodeInfo // Config.Self with the advertised RaftAddr
		joined   []NodeInfo
		wal      *raftwal.WAL
		snaps    *raft.FileSnapshotStore
		stream   *streamLayer
		trans    *raft.NetworkTransport
		observer *raft.Observer
		done     chan struct{} // closed when Shutdown has finished
		err      error         // Shutdown's result
	}
	health peerHealthTracker
}

type lifecycle int

const (
	stateNew lifecycle = iota
	stateStarting
	stateRunning
	stateClosing
)

// pollInterval is how often Start and WaitIndex re-check Raft state that
// has no change notification.
const pollInterval = 5 * time.Millisecond

// New validates cfg and allocates a Node. It starts no goroutines and opens
// no files or ports.
func New(cfg Config) (*Node, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	cfg = cfg.withDefaults()
	n := &Node{
		cfg:      cfg,
		log:      cfg.Logger.With(logKeyComponent, "cluster", logKeyNode, uint64(cfg.ID)),
		hlog:     newHclogAdapter(cfg.Logger.With(logKeyNode, uint64(cfg.ID))),
		fsm:      newRaftFSM(),
		leaderCh: make(chan bool, 1),
	}
	n.ctx, n.cancel = context.WithCancel(context.Background())
	n.mu.self = cfg.Self
	n.mu.self.RaftAddr = cfg.AdvertiseAddr
	n.mu.done = make(chan struct{})
	n.health.peers = make(map[NodeID]PeerHealth)
	return n, nil
}

// ID returns the node's id.
func (n *Node) ID() NodeID { return n.cfg.ID }

// HasState reports whether Start found existing Raft state (a restart).
func (n *Node) HasState() bool { return n.hasState.Load() }

// Self returns this node's record, with the advertised Raft address (known
// once Start has bound the listener when BindAddr has port 0).
func (n *Node) Self() NodeInfo {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.mu.self
}

// goFunc runs f in a goroutine that Shutdown waits for. It reports false,
// without running f, once Shutdown has begun.
func (n *Node) goFunc(f func(ctx context.Context)) bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.mu.state == stateClosing {
		return false
	}
	n.wg.Add(1)
	go func() {
		defer n.wg.Done()
		f(n.ctx)
	}()
	return true
}

// Start opens the Raft stores, binds the listener, starts Raft and then:
// with no Raft state and no Join, bootstraps a one-node cluster and records
// Self; with no Raft state and a Join list, joins through it (JoinTimeout);
// with Raft state, restarts from it and makes sure Self is recorded. It
// returns once this node is a voter with a known leader and its FSM has
// applied the leader's commit index of that moment. On error it undoes what
// it started and the node is shut down.
func (n *Node) Start(ctx context.Context) (err error) {
	n.mu.Lock()
	state := n.mu.state
	if state == stateNew {
		n.mu.state = stateStarting
	}
	n.mu.Unlock()
	switch state {
	case stateNew:
	case stateClosing:
		return fmt.Errorf("cluster: start node %d: %w", n.cfg.ID, ErrShutdown)
	default:
		return fmt.Errorf("cluster: start node %d: already started", n.cfg.ID)
	}
	// Waiting for the other new nodes of a cluster (BootstrapExpect) is
	// bounded only by the caller and Shutdown: a node that gave up would
	// leave the others waiting for it, and restarting it changes nothing.
	waitCtx, waitCancel := context.WithCancel(ctx)
	defer waitCancel()
	defer context.AfterFunc(n.ctx, waitCancel)() // Shutdown aborts Start
	ctx, cancel := context.WithTimeout(waitCtx, n.cfg.JoinTimeout)
	defer cancel()
	defer func() {
		if err == nil {
			return
		}
		err = fmt.Errorf("cluster: start node %d: %w", n.cfg.ID, err)
		sctx, scancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer scancel()
		if serr := n.Shutdown(sctx); serr != nil {
			n.log.Warn("undo start", logKeyErr, serr)
		}
	}()

	if err := n.open(); err != nil {
		return err
	}
	switch {
	case n.HasState():
		n.log.Info("restarting from existing raft state", logKeyAddr, n.Self().RaftAddr)
		err = n.restart(ctx)
	case len(n.cfg.Join) == 0:
		n.log.Info("bootstrapping a new cluster", logKeyAddr, n.Self().RaftAddr)
		err = n.bootstrap(ctx)
	case n.cfg.BootstrapExpect > 1:
		n.log.Info("waiting for the other nodes to bootstrap or join a cluster", "join", n.cfg.Join,
			"bootstrap_expect", n.cfg.BootstrapExpect, logKeyAddr, n.Self().RaftAddr)
		err = n.bootstrapOrJoin(waitCtx)
	default:
		n.log.Info("joining a cluster", "join", n.cfg.Join, logKeyAddr, n.Self().RaftAddr)
		err = n.join(ctx)
	}
	if err != nil {
		return err
	}
	n.mu.Lock()
	if n.mu.state == stateStarting {
		n.mu.state = stateRunning
	}
	n.mu.Unlock()
	lid, laddr := n.Leader()
	n.log.Info("cluster node ready", "leader", uint64(lid), "leader_addr", laddr, "voters", n.Voters())
	return nil
}

// open opens the stores, binds the listener and starts Raft (lifecycle
// order: stores → listener → raft). Each resource is recorded for Shutdown
// as soon as it exists, or closed at once if Shutdown has begun.
func (n *Node) open() error {
	walDir := filepath.Join(n.cfg.Dir, "wal")
	if err := os.MkdirAll(walDir, 0o750); err != nil {
		return fmt.Errorf("create raft directory: %w", err)
	}
	wal, err := openWAL(walDir, n.hlog.Named("wal"), n.cfg.WALSegmentSize)
	if err != nil {
		return fmt.Errorf("open raft wal %s: %w", walDir, err)
	}
	if !n.keep(func() { n.mu.wal = wal }) {
		_ = wal.Close()
		return ErrShutdown
	}
	snaps, err := raft.NewFileSnapshotStoreWithLogger(n.cfg.Dir, snapshotsRetained, n.hlog.Named("snapshots"))
	if err != nil {
		return fmt.Errorf("open raft snapshots: %w", err)
	}
	n.fsm.snaps = snaps
	has, err := raft.HasExistingState(wal, wal, snaps)
	if err != nil {
		return fmt.Errorf("inspect raft state: %w", err)
	}
	n.hasState.Store(has)

	ln, err := net.Listen("tcp", n.cfg.BindAddr)
	if err != nil {
		return fmt.Errorf("listen on %s: %w", n.cfg.BindAddr, err)
	}
	advertise := n.cfg.AdvertiseAddr
	if host, port, _ := splitHostPort(advertise); port == 0 {
		advertise = net.JoinHostPort(host, strconv.Itoa(ln.Addr().(*net.TCPAddr).Port))
	}
	// A joining node takes no Raft traffic until the cluster has accepted
	// its identity (see join).
	raftOpen := has || len(n.cfg.Join) == 0
	stream := newStreamLayer(ln, advertise, n.log, n.serveJoin, raftOpen)
	trans := raft.NewNetworkTransportWithConfig(&raft.NetworkTransportConfig{
		Stream:  stream,
		MaxPool: transportMaxPool,
		Timeout: transportTimeout,
		Logger:  n.hlog.Named("net"),
	})
	if !n.keep(func() { n.mu.snaps, n.mu.stream, n.mu.trans, n.mu.self.RaftAddr = snaps, stream, trans, advertise }) {
		_ = trans.Close()
		_ = stream.Close()
		stream.wait()
		return ErrShutdown
	}

	r, err := raft.NewRaft(n.cfg.raftConfig(n.hlog), n.fsm, wal, wal, snaps, trans)
	if err != nil {
		return fmt.Errorf("start raft: %w", err)
	}
	if !n.keep(func() { n.raft.Store(r) }) {
		_ = r.Shutdown().Error()
		return ErrShutdown
	}
	n.startObservers(r)
	return nil
}

// keep runs set under n.mu unless Shutdown has begun, and reports whether
// it ran.
func (n *Node) keep(set func()) bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.mu.state == stateClosing {
		return false
	}
	set()
	return true
}

// openWAL opens the raft-wal store (raft-wal's option type is unexported,
// so the options cannot be collected in a slice).
func openWAL(dir string, logger hclog.Logger, segmentSize int64) (*raftwal.WAL, error) {
	if segmentSize > 0 {
		return raftwal.Open(dir, raftwal.WithLogger(logger), raftwal.WithSegmentSize(int(segmentSize)))
	}
	return raftwal.Open(dir, raftwal.WithLogger(logger))
}

// Shutdown stops the node; it is idempotent and safe to call concurrently
// with Start (which it aborts). Steps, the reverse of Start:
//
//  1. cancel the node's context: joins, waits and proposals in progress end;
//  2. deregister the Raft observer and shut Raft down (which closes the
//     transport and, through it, the stream layer);
//  3. close the stream layer (listener and every connection) and wait for
//     its goroutines;
//  4. wait for the node's goroutines (bounded by ctx);
//  5. close the raft-wal store.
func (n *Node) Shutdown(ctx context.Context) error {
	n.mu.Lock()
	if n.mu.state == stateClosing {
		done := n.mu.done
		n.mu.Unlock()
		select {
		case <-done:
			n.mu.Lock()
			defer n.mu.Unlock()
			return n.mu.err
		case <-ctx.Done():
			return fmt.Errorf("cluster: shutdown node %d: %w", n.cfg.ID, ctx.Err())
		}
	}
	n.mu.state = stateClosing
	observer, stream, trans, wal := n.mu.observer, n.mu.stream, n.mu.trans, n.mu.wal
	r := n.raft.Load()
	n.mu.Unlock()
	n.cancel()

	var errs []error
	if r != nil {
		if observer != nil {
			r.DeregisterObserver(observer)
		}
		if err := r.Shutdown().Error(); err != nil {
			errs = append(errs, fmt.Errorf("raft: %w", err))
		}
	}
	if trans != nil {
		trans.CloseStreams()
		_ = trans.Close()
	}
	if stream != nil {
		_ = stream.Close()
		stream.wait()
	}
	waited := make(chan struct{})
	go func() { // not goFunc: it waits for goFunc's goroutines
		n.wg.Wait()
		close(waited)
	}()
	select {
	case <-waited:
	case <-ctx.Done():
		errs = append(errs, fmt.Errorf("wait for goroutines: %w", ctx.Err()))
	}
	if wal != nil {
		if err := wal.Close(); err != nil {
			errs = append(errs, fmt.Errorf("close raft wal: %w", err))
		}
	}
	err := errors.Join(errs...)
	if err != nil {
		err = fmt.Errorf("cluster: shutdown node %d: %w", n.cfg.ID, err)
	}
	n.mu.Lock()
	n.mu.err = err
	close(n.mu.done)
	n.mu.Unlock()
	return err
}

// raftOrErr returns the Raft instance, or ErrShutdown when the node is not
// running.
func (n *Node) raftOrErr() (*raft.Raft, error) {
	r := n.raft.Load()
	if r == nil || n.ctx.Err() != nil {
		return nil, fmt.Errorf("cluster: node %d is not running: %w", n.cfg.ID, ErrShutdown)
	}
	return r, nil
}

// Members returns the members recorded in the metadata, in id order.
func (n *Node) Members() []NodeInfo { return n.Metadata().Nodes() }

// JoinedMembers returns the members the leader reported when this node
// joined or, on a restart as a follower, re-registered; nil when the node
// bootstrapped or restarted as the leader. The broker uses their RouteURLs
// as NATS route seeds.
func (n *Node) JoinedMembers() []NodeInfo {
	n.mu.Lock()
	defer n.mu.Unlock()
	return append([]NodeInfo(nil), n.mu.joined...)
}

// Metadata returns the current immutable metadata snapshot.
func (n *Node) Metadata() *Metadata { return n.fsm.metadata() }

// Changed returns a channel closed at the next metadata apply or restore.
func (n *Node) Changed() <-chan struct{} { return n.fsm.changed() }
