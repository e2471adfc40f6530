package bridge

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/url"
	"slices"
	"strconv"
	"time"
)

// Defaults for the zero Config fields.
const (
	DefaultHost           = "127.0.0.1"
	DefaultClusterName    = "walrus"
	DefaultRequestTimeout = 5 * time.Second
	DefaultMaxPayload     = 8 << 20
	DefaultMaxConcurrent  = 1024
	DefaultDedupWindow    = 2 * time.Minute
	DefaultDedupEntries   = 1 << 16
)

// maxPayloadLimit is the largest MaxPayload accepted: nats-server's default
// per-client pending buffer, which a single message must fit in.
const maxPayloadLimit = 64 << 20

// Config configures a Bridge. The zero value of every field but NodeID
// means its default.
type Config struct {
	// NodeID is this node's id (not 0); its RPC subject is _WALRUS.rpc.<NodeID>.
	NodeID uint64
	// Host is the bind address of the NATS client and cluster listeners.
	// Default "127.0.0.1".
	Host string
	// ClientPort is the NATS client port. 0 picks a free port (tests); the
	// caller sets the production default (4222).
	ClientPort int
	// ClusterPort is the NATS route port. 0 picks a free port.
	ClusterPort int
	// Advertise is the host name or IP, without port, that peers use to
	// reach this node's route port and that ClientURL names. Default Host;
	// required when Host is a wildcard address (0.0.0.0 or ::).
	Advertise string
	// ClientAdvertise is the "host:port" the server tells NATS clients to
	// reach it at, in the list of the cluster's servers it gossips to
	// them. Default: Advertise and the client port. Set it when clients
	// reach the node through another address (a published container
	// port, a load balancer).
	ClientAdvertise string
	// ClusterName is the NATS cluster name, the same on every node.
	// Default "walrus".
	ClusterName string
	// Routes are route seed URLs ("nats-route://host:port"). One reachable
	// member is enough: routes gossip. This node's own URL is ignored.
	Routes []string
	// RequestTimeout bounds one attempt of an RPC. Default 5s.
	RequestTimeout time.Duration
	// MaxPayload is the largest NATS message, in bytes, for RPCs and
	// clients alike. Default 8 MiB, at most 64 MiB.
	MaxPayload int64
	// MaxConcurrent bounds the handler calls running at once; requests
	// beyond it are answered CodeUnavailable. Default 1024.
	MaxConcurrent int
	// DedupWindow is how long a served append or proposal is remembered by
	// its request id. Default 2 minutes. Callers stop retrying one id after
	// half of it.
	DedupWindow time.Duration
	// DedupEntries bounds the remembered request ids; the oldest are
	// forgotten first. Default 65536.
	DedupEntries int
	// Leafnodes are upstream leafnode URLs ("nats-leaf://host:7422"; also
	// nats, tls, ws, wss). The server keeps one leafnode connection to one
	// of them and fails over between them. User and password may be in the
	// URL. tls:// and wss:// make the connection use TLS (system roots);
	// a plain URL is upgraded to TLS when the upstream requires it.
	// Websocket and non-websocket URLs, and TLS and plain ones, cannot be
	// mixed. Empty: no leafnode.
	Leafnodes []string
	// LeafnodeCredentials is the path of a .creds file (user JWT and nkey
	// seed) presented to the upstream; only with Leafnodes. The server reads
	// it on every connection attempt and logs an error if it cannot; the
	// broker checks that it is readable when it validates its config.
	LeafnodeCredentials string
	// Logger receives the bridge's and the NATS server's logs (the latter
	// with component=nats). Default: discard.
	Logger *slog.Logger
}

// withDefaults returns a copy of c with defaults filled in; it never writes
// into the caller's struct.
func (c Config) withDefaults() Config {
	if c.Host == "" {
		c.Host = DefaultHost
	}
	if c.Advertise == "" {
		c.Advertise = c.Host
	}
	if c.ClusterName == "" {
		c.ClusterName = DefaultClusterName
	}
	if c.RequestTimeout == 0 {
		c.RequestTimeout = DefaultRequestTimeout
	}
	if c.MaxPayload == 0 {
		c.MaxPayload = DefaultMaxPayload
	}
	if c.MaxConcurrent == 0 {
		c.MaxConcurrent = DefaultMaxConcurrent
	}
	if c.DedupWindow == 0 {
		c.DedupWindow = DefaultDedupWindow
	}
	if c.DedupEntries == 0 {
		c.DedupEntries = DefaultDedupEntries
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	c.Routes = slices.Clone(c.Routes)
	c.Leafnodes = slices.Clone(c.Leafnodes)
	return c
}

// Validate reports the first invalid field of c (after defaults).
func (c Config) Validate() error {
	c = c.withDefaults()
	switch {
	case c.NodeID == 0:
		return fmt.Errorf("%w: node id must not be 0", ErrInvalidConfig)
	case c.ClientPort < 0 || c.ClientPort > 65535:
		return fmt.Errorf("%w: client port %d", ErrInvalidConfig, c.ClientPort)
	case c.ClusterPort < 0 || c.ClusterPort > 65535:
		return fmt.Errorf("%w: cluster port %d", ErrInvalidConfig, c.ClusterPort)
	case c.RequestTimeout < 0:
		return fmt.Errorf("%w: request timeout %v", ErrInvalidConfig, c.RequestTimeout)
	case c.MaxPayload < 1024 || c.MaxPayload > maxPayloadLimit:
		return fmt.Errorf("%w: max payload %d (want 1 KiB to 64 MiB)", ErrInvalidConfig, c.MaxPayload)
	case c.MaxConcurrent < 0:
		return fmt.Errorf("%w: max concurrent %d", ErrInvalidConfig, c.MaxConcurrent)
	case c.DedupWindow < 0 || c.DedupEntries < 0:
		return fmt.Errorf("%w: dedup window %v, entries %d", ErrInvalidConfig, c.DedupWindow, c.DedupEntries)
	}
	if ip := net.ParseIP(c.Advertise); ip != nil && ip.IsUnspecified() {
		return fmt.Errorf("%w: advertise address required when host is %s", ErrInvalidConfig, c.Host)
	}
	if _, _, err := net.SplitHostPort(c.Advertise); err == nil {
		return fmt.Errorf("%w: advertise %q must be a host without port", ErrInvalidConfig, c.Advertise)
	}
	if c.ClientAdvertise != "" {
		if _, port, err := net.SplitHostPort(c.ClientAdvertise); err != nil || port == "" {
			return fmt.Errorf("%w: client advertise %q must be host:port", ErrInvalidConfig, c.ClientAdvertise)
		}
	}
	if _, err := parseRoutes(c.Routes); err != nil {
		return err
	}
	if _, err := ParseLeafnodes(c.Leafnodes); err != nil {
		return fmt.Errorf("%w: %w", ErrInvalidConfig, err)
	}
	if c.LeafnodeCredentials != "" && len(c.Leafnodes) == 0 {
		return fmt.Errorf("%w: leafnode credentials without leafnode URLs", ErrInvalidConfig)
	}
	return nil
}

// internalSubjects matches the internal RPC's subjects; they are kept off
// the leafnode connection in both directions.
const internalSubjects = "_WALRUS.>"

// leafnodeSchemes are the accepted schemes of an upstream leafnode URL.
// nats-server dials ws and wss as websocket and the rest as plain TCP,
// upgraded to TLS when the upstream asks; serverOptions turns TLS on from
// the start for tls and wss.
var leafnodeSchemes = []string{"nats-leaf", "nats", "tls", "ws", "wss"}

// ParseLeafnodes parses upstream leafnode URLs (see Config.Leafnodes): each
// needs a known scheme, a host and a port. All URLs share one remote, which
// is dialled one way, so websocket and TCP URLs, and TLS and plain ones,
// cannot be mixed. Errors show URLs with the password redacted.
func ParseLeafnodes(urls []string) ([]*url.URL, error) {
	out := make([]*url.URL, 0, len(urls))
	for _, s := range urls {
		u, err := url.Parse(s)
		if err != nil {
			// url.Error repeats the URL, which may hold a password.
			return nil, fmt.Errorf("leafnode URL: %w", errors.Unwrap(err))
		}
		name := u.Redacted()
		if !slices.Contains(leafnodeSchemes, u.Scheme) {
			return nil, fmt.Errorf("leafnode URL %q: scheme must be one of nats-leaf, nats, tls, ws, wss", name)
		}
		if u.Hostname() == "" || u.Port() == "" {
			return nil, fmt.Errorf("leafnode URL %q: want %s://host:port", name, u.Scheme)
		}
		if p, err := strconv.Atoi(u.Port()); err != nil || p <= 0 || p > 65535 {
			return nil, fmt.Errorf("leafnode URL %q: bad port", name)
		}
		if len(out) > 0 && isWebsocket(out[0]) != isWebsocket(u) {
			return nil, fmt.Errorf("leafnode URL %q: websocket and non-websocket URLs cannot be mixed", name)
		}
		if len(out) > 0 && isTLS(out[0]) != isTLS(u) {
			return nil, fmt.Errorf("leafnode URL %q: TLS (tls, wss) and plain URLs cannot be mixed", name)
		}
		out = append(out, u)
	}
	return out, nil
}

func isWebsocket(u *url.URL) bool { return u.Scheme == "ws" || u.Scheme == "wss" }

func isTLS(u *url.URL) bool { return u.Scheme == "tls" || u.Scheme == "wss" }

// parseRoutes parses route seed URLs; each needs a host and a port.
func parseRoutes(routes []string) ([]*url.URL, error) {
	out := make([]*url.URL, 0, len(routes))
	for _, r := range routes {
		u, err := url.Parse(r)
		if err != nil {
			return nil, fmt.Errorf("%w: route %q: %v", ErrInvalidConfig, r, err)
		}
		if u.Scheme != "nats-route" && u.Scheme != "nats" {
			return nil, fmt.Errorf("%w: route %q: scheme must be nats-route", ErrInvalidConfig, r)
		}
		if u.Hostname() == "" || u.Port() == "" {
			return nil, fmt.Errorf("%w: route %q: want nats-route://host:port", ErrInvalidConfig, r)
		}
		if p, err := strconv.Atoi(u.Port()); err != nil || p <= 0 || p > 65535 {
			return nil, fmt.Errorf("%w: route %q: bad port", ErrInvalidConfig, r)
		}
		out = append(out, u)
	}
	return out, nil
}

// hostPort joins a host and a port, bracketing IPv6 literals.
func hostPort(host string, port int) string {
	return net.JoinHostPort(host, strconv.Itoa(port))
}
