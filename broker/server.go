package broker

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/walrus-edge/walrus/bridge"
	"github.com/walrus-edge/walrus/cluster"
	"github.com/walrus-edge/walrus/storage"
)

// Server is one Walrus node: storage, the embedded NATS bridge, the Raft
// metadata node, the native TCP protocol and the HTTP endpoints, and the
// controller logic that ties them (routing, leases, rollover, failover,
// cursors). cmd/walrus and the tests both run nodes through it.
type Server struct {
	cfg Config
	log *slog.Logger
	dir string // DataDir/node_<id>
	id  identity

	store   *storage.Log
	bridge  *bridge.Bridge
	raft    *cluster.Node
	tcp     *tcpServer
	http    *http.Server
	httpLn  net.Listener
	metrics *metrics
	api     *bridge.API // the public NATS subjects; set by Start

	tails    tailer      // publishes appends to the NATS tail subjects
	appended notifier    // wakes long polls at each local append
	lease    writeLease  // heartbeat answers renewing the write lease (leaseValid)
	leaving  atomic.Bool // HandOff began: heartbeats say so, nothing new is placed here

	// slots keeps concurrent appends within a segment's entry limit.
	slots entrySlots
	// segMu orders creating a segment in storage (ensureSegment) with
	// deleting the files of trimmed ones (deleteTrimmed): a segment is
	// created only while the metadata still has it open here, so a
	// trimmed segment is never created again.
	segMu sync.Mutex
	// trims is the monitor goroutine's record of the trims it has seen,
	// per topic (deleteTrimmed); no other goroutine touches it.
	trims map[string]trimSeen

	// serving is set once Raft has started: the bridge runs earlier (it
	// carries the route seeds) and answers forwarded requests Unavailable
	// until then. Setting it publishes s.raft to the handler goroutines.
	serving atomic.Bool

	// bg is the context of the background loops; cancel stops them.
	bg     context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup

	mu struct {
		sync.Mutex
		started  bool
		shutdown bool
		rolling  map[string]bool   // topics with a rollover under way
		cursors  map[string]uint64 // latest shared cursor the Raft leader reported, per topic
		peers    map[cluster.NodeID]peerReport
		routes   string // the route seeds last saved, joined
	}
}

// New validates cfg and allocates a node. It starts nothing.
func New(cfg Config) (*Server, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	cfg = cfg.withDefaults()
	s := &Server{
		cfg: cfg,
		log: cfg.Logger.With("node", cfg.NodeID),
		dir: filepath.Join(cfg.DataDir, "node_"+strconv.FormatUint(cfg.NodeID, 10)),
	}
	s.mu.rolling = make(map[string]bool)
	s.trims = make(map[string]trimSeen)
	s.mu.cursors = make(map[string]uint64)
	s.mu.peers = make(map[cluster.NodeID]peerReport)
	return s, nil
}

// Start opens the node's data, joins or bootstraps the cluster and starts
// serving. It returns once the node is a voter with a known Raft leader and
// its listeners are up. On error it undoes what it started.
//
// Order: identity → storage → HTTP listener (/readyz: starting) → NATS
// bridge → Raft (bootstrap, join or restart) → NATS route seeds → pending
// seals → TCP listener → background loops.
func (s *Server) Start(ctx context.Context) (err error) {
	s.mu.Lock()
	if s.mu.started {
		s.mu.Unlock()
		return errors.New("broker: already started")
	}
	s.mu.started = true
	s.mu.Unlock()
	s.bg, s.cancel = context.WithCancel(context.Background())
	defer func() {
		if err != nil {
			_ = s.Shutdown(context.Background()) // the start error is the one to report
		}
	}()

	if err := os.MkdirAll(s.dir, 0o755); err != nil {
		return fmt.Errorf("broker: create %s: %w", s.dir, err)
	}
	if s.id, err = loadIdentity(s.dir, s.cfg.NodeID); err != nil {
		return err
	}
	storeOpts := s.cfg.Storage
	storeOpts.Logger = s.log
	if s.store, err = storage.Open(filepath.Join(s.dir, "storage"), storeOpts); err != nil {
		return fmt.Errorf("broker: open storage: %w", err)
	}
	s.metrics = newMetrics(s)
	// HTTP first: /healthz answers while the node joins or bootstraps
	// (which may wait for the other nodes: BootstrapExpect), /readyz says
	// it is starting, and a startup probe does not kill a node that waits.
	if err := s.startHTTP(); err != nil {
		return err
	}
	if err := s.startBridge(ctx); err != nil {
		return err
	}
	if err := s.startRaft(ctx); err != nil {
		return err
	}
	s.serving.Store(true)
	s.syncRoutes()
	s.finalizePending(ctx)
	if s.tcp, err = listenTCP(s); err != nil {
		return err
	}
	if err := s.startAPI(); err != nil {
		return err
	}
	s.tails.api.Store(s.api)
	s.goFunc(s.tcp.serve)
	s.goFunc(s.heartbeatLoop)
	s.goFunc(s.monitorLoop)
	s.goFunc(s.failoverLoop)
	s.log.Info("node started", "client", s.tcp.addr(), "raft", s.cfg.raftAdvertise(),
		"nats", s.bridge.ClientURL(), "storage_backend", s.store.Backend(), "data", s.dir)
	return nil
}

func (s *Server) startBridge(ctx context.Context) error {
	b, err := bridge.New(bridge.Config{
		NodeID:              s.cfg.NodeID,
		Host:                s.cfg.ClientHost,
		ClientPort:          s.cfg.NATSPort,
		ClusterPort:         s.cfg.NATSClusterPort,
		Advertise:           s.cfg.RaftAdvertiseHost,
		Routes:              loadPeers(s.dir),
		RequestTimeout:      s.cfg.RequestTimeout,
		Leafnodes:           s.cfg.NATSLeafnodeURLs,
		LeafnodeCredentials: s.cfg.NATSLeafnodeCredentials,
		ClientAdvertise:     s.cfg.NATSClientAdvertise,
		Logger:              s.cfg.Logger, // the bridge adds the node id itself
	})
	if err != nil {
		return fmt.Errorf("broker: %w", err)
	}
	b.SetHandler(remote{s})
	if err := b.Start(ctx); err != nil {
		return fmt.Errorf("broker: start nats: %w", err)
	}
	s.bridge = b
	return nil
}

func (s *Server) startRaft(ctx context.Context) error {
	t := s.cfg.RaftTiming
	n, err := cluster.New(cluster.Config{
		ID:            cluster.NodeID(s.cfg.NodeID),
		Dir:           filepath.Join(s.dir, "raft"),
		BindAddr:      s.cfg.raftAddr(),
		AdvertiseAddr: s.cfg.raftAdvertise(),
		Self: cluster.NodeInfo{
			ID:         cluster.NodeID(s.cfg.NodeID),
			UUID:       s.id.UUID,
			RouteURL:   s.bridge.RouteURL(),
			NATSURL:    s.bridge.ClientURL(),
			ClientAddr: s.cfg.clientAddr(),
			HTTPAddr:   s.cfg.HTTPAddr,
		},
		Join:               s.cfg.Join,
		BootstrapExpect:    s.cfg.BootstrapExpect,
		HeartbeatTimeout:   t.HeartbeatTimeout,
		ElectionTimeout:    t.ElectionTimeout,
		LeaderLeaseTimeout: t.LeaderLeaseTimeout,
		CommitTimeout:      t.CommitTimeout,
		Logger:             s.cfg.Logger, // cluster adds the node id itself
	})
	if err != nil {
		return fmt.Errorf("broker: %w", err)
	}
	// Seed NATS routes from the join answer before Raft start returns, so
	// forwarding works as soon as the node serves.
	if err := n.Start(ctx); err != nil {
		return fmt.Errorf("broker: start raft: %w", err)
	}
	s.raft = n
	if members := n.JoinedMembers(); len(members) > 0 {
		s.setRoutes(members)
	}
	return nil
}

// startHTTP serves /metrics, /healthz and /readyz when configured.
func (s *Server) startHTTP() error {
	if s.cfg.HTTPAddr == "" {
		return nil
	}
	ln, err := net.Listen("tcp", s.cfg.HTTPAddr)
	if err != nil {
		return fmt.Errorf("broker: listen http: %w", err)
	}
	s.httpLn = ln
	s.http = &http.Server{Handler: s.httpHandler(), ReadHeaderTimeout: s.cfg.RequestTimeout}
	s.goFunc(func() {
		if err := s.http.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			s.log.Error("http server stopped", "err", err)
		}
	})
	return nil
}

// goFunc runs fn on a goroutine that Shutdown waits for.
func (s *Server) goFunc(fn func()) {
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		fn()
	}()
}

// Shutdown stops the node. It is idempotent; ctx bounds the graceful part.
//
// Order: 1. stop accepting client connections and HTTP, then the public
// NATS subjects (queued publishes are stored or refused), 2. stop the
// background loops and wait for every goroutine (in-flight requests finish
// or fail), 3. Raft, 4. the NATS bridge, 5. storage (which syncs).
func (s *Server) Shutdown(ctx context.Context) error {
	s.mu.Lock()
	if s.mu.shutdown {
		s.mu.Unlock()
		return nil
	}
	s.mu.shutdown = true
	s.mu.Unlock()

	var errs []error
	if s.tcp != nil {
		s.tcp.close()
	}
	if s.http != nil {
		errs = append(errs, s.http.Shutdown(ctx))
	}
	if s.api != nil {
		// Before the loops and Raft: queued publishes are stored or refused.
		errs = append(errs, s.api.Stop(ctx))
	}
	if s.cancel != nil {
		s.cancel()
	}
	s.wg.Wait()
	if s.raft != nil {
		errs = append(errs, s.raft.Shutdown(ctx))
	}
	if s.bridge != nil {
		errs = append(errs, s.bridge.Shutdown(ctx))
	}
	if s.store != nil {
		errs = append(errs, s.store.Close())
	}
	err := errors.Join(errs...)
	if err != nil {
		s.log.Error("shutdown", "err", err)
	} else {
		s.log.Info("node stopped")
	}
	return err
}

// handoffTimeout bounds HandOff.
const handoffTimeout = 10 * time.Second

// HandOff prepares a clean stop: it tells the Raft leader that this node
// is leaving (no rollover or new topic is placed on it from then on), rolls
// every open segment it leads over to another node and, if it leads Raft,
// transfers the
// leadership, so that writes go on without waiting for a failover (and
// without the failover's gap in topic offsets). The segments it sealed stay
// on this node: reads of them wait for its return, as before. It is bounded
// by ctx and handoffTimeout; what does not complete is left to failover.
// Call it before Shutdown; a single node has nobody to hand off to.
func (s *Server) HandOff(ctx context.Context) {
	if !s.serving.Load() || len(s.raft.Voters()) < 2 {
		return
	}
	ctx, cancel := context.WithTimeout(ctx, handoffTimeout)
	defer cancel()
	start := time.Now()
	// First tell the Raft leader (or, leading, note) that this node is
	// leaving, so that no rollover or new topic lands here meanwhile: a
	// segment placed on a stopped node waits for the failover.
	s.leaving.Store(true) // liveVoters reads it while this node leads Raft, now or later
	if !s.raft.IsLeader() {
		hctx, hcancel := context.WithTimeout(ctx, s.cfg.HeartbeatInterval)
		marked := s.sendHeartbeat(hctx, true)
		hcancel()
		// A segment placed here just before the leader heard it is in
		// the leader's log up to marked: see it before looking.
		for s.raft.AppliedIndex() < marked && ctx.Err() == nil && time.Since(start) < s.cfg.HeartbeatInterval {
			time.Sleep(5 * time.Millisecond)
		}
	}
	if !s.leaseValid() {
		return // cut off: what it leads is the failover's
	}
	moved := s.rollOverLed(ctx)
	wasLeader := s.raft.IsLeader()
	if wasLeader {
		if err := s.raft.TransferLeadership(); err != nil {
			s.log.Warn("raft leadership not handed off", "err", err)
		}
	}
	if moved == 0 && !wasLeader {
		return // nothing here that others may still route to
	}
	// Drain: the other nodes apply the rollovers a little later (when the
	// leader next tells them the commit index), and until then route
	// writes here. Answering them "not the leader" sends them on at once;
	// a node that had already stopped would leave them to time out.
	select {
	case <-time.After(handoffDrain):
	case <-ctx.Done():
	}
	s.log.Info("handed off before stopping", "segments", moved, "took", time.Since(start).Round(time.Millisecond))
}

// rollOverLed rolls over every open segment this node leads, until it leads
// none (a segment placed here while it looked is rolled over in the next
// pass), a rollover fails, or ctx ends. It returns how many it moved.
func (s *Server) rollOverLed(ctx context.Context) int {
	moved := 0
	for pass := 0; pass < 3 && ctx.Err() == nil; pass++ {
		m := s.raft.Metadata()
		found := false
		for _, name := range m.TopicNames() {
			t, _ := m.Topic(name)
			if t.Open().Leader != s.self() {
				continue
			}
			found = true
			if !s.claimRollover(name) {
				continue // one under way
			}
			s.runRollover(ctx, name)
			if t, _ := s.raft.Metadata().Topic(name); t.Open().Leader == s.self() {
				s.log.Warn("hand-off stopped: a rollover did not complete", "topic", name)
				return moved
			}
			moved++
		}
		if !found {
			break
		}
	}
	return moved
}

// handoffDrain is how long HandOff keeps serving after the hand-off.
const handoffDrain = time.Second

// ClientAddr returns the native protocol listener's address.
func (s *Server) ClientAddr() net.Addr { return s.tcp.addr() }

// HTTPAddr returns the HTTP listener's address, or nil.
func (s *Server) HTTPAddr() net.Addr {
	if s.httpLn == nil {
		return nil
	}
	return s.httpLn.Addr()
}

// NATSURL returns the embedded NATS server's client URL.
func (s *Server) NATSURL() string { return s.bridge.ClientURL() }

// NodeID returns the node's id.
func (s *Server) NodeID() uint64 { return s.cfg.NodeID }

func (s *Server) self() cluster.NodeID { return cluster.NodeID(s.cfg.NodeID) }
