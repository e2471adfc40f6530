package bridge

import (
	"errors"
	"fmt"
	"net/url"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
)

func TestConfig_ValidateLeafnodes(t *testing.T) {
	tests := []struct {
		name  string
		leafs []string
		creds string
		want  string // substring of the error; "" means valid
	}{
		{"none", nil, "", ""},
		{"nats-leaf", []string{"nats-leaf://core.example.com:7422"}, "", ""},
		{"several", []string{"nats-leaf://a:7422", "nats://b:7422"}, "/etc/walrus/edge.creds", ""},
		{"user password", []string{"nats-leaf://u:p@10.0.0.1:7422"}, "", ""},
		{"tls", []string{"tls://core:7422", "tls://core2:7422"}, "", ""},
		{"websocket", []string{"ws://core:443", "wss://core:443"}, "", "TLS (tls, wss) and plain"},
		{"wss", []string{"wss://core:443"}, "", ""},
		{"ipv6", []string{"nats-leaf://[::1]:7422"}, "", ""},
		{"scheme", []string{"http://core:7422"}, "", "scheme must be one of"},
		{"no scheme", []string{"core:7422"}, "", "scheme must be one of"},
		{"no port", []string{"nats-leaf://core"}, "", "want nats-leaf://host:port"},
		{"no host", []string{"nats-leaf://:7422"}, "", "want nats-leaf://host:port"},
		{"port zero", []string{"nats-leaf://core:0"}, "", "bad port"},
		{"port big", []string{"nats-leaf://core:70000"}, "", "bad port"},
		{"garbage", []string{"nats-leaf://core:x"}, "", "leafnode URL"},
		{"mixed websocket", []string{"nats-leaf://a:7422", "ws://b:80"}, "", "websocket and non-websocket"},
		{"mixed tls", []string{"tls://a:7422", "nats-leaf://b:7422"}, "", "TLS (tls, wss) and plain"},
		{"creds without urls", nil, "/etc/walrus/edge.creds", "credentials without leafnode URLs"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := Config{NodeID: 1, Leafnodes: tt.leafs, LeafnodeCredentials: tt.creds}.Validate()
			if tt.want == "" {
				if err != nil {
					t.Fatalf("Validate: %v", err)
				}
				return
			}
			if !errors.Is(err, ErrInvalidConfig) || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("Validate: %v, want ErrInvalidConfig mentioning %q", err, tt.want)
			}
		})
	}
	// A password in a bad URL is not repeated in the error.
	err := Config{NodeID: 1, Leafnodes: []string{"http://u:secret@core:7422"}}.Validate()
	if err == nil || strings.Contains(err.Error(), "secret") {
		t.Fatalf("Validate: %v, want an error without the password", err)
	}
}

// The remote the server gets: every URL in one remote, the credentials,
// TLS for tls://, and the internal subjects denied both ways.
func TestBridge_LeafnodeOptions(t *testing.T) {
	b, err := New(Config{NodeID: 1, Leafnodes: []string{"tls://a:7422", "tls://u:p@b:7422"},
		LeafnodeCredentials: "/x/edge.creds"})
	if err != nil {
		t.Fatal(err)
	}
	remotes := b.serverOptions(nil).LeafNode.Remotes
	if len(remotes) != 1 {
		t.Fatalf("%d remotes, want 1", len(remotes))
	}
	r := remotes[0]
	var urls []string
	for _, u := range r.URLs {
		urls = append(urls, u.String())
	}
	if !slices.Equal(urls, []string{"tls://a:7422", "tls://u:p@b:7422"}) || r.Credentials != "/x/edge.creds" || !r.TLS ||
		!slices.Equal(r.DenyExports, []string{"_WALRUS.>"}) || !slices.Equal(r.DenyImports, []string{"_WALRUS.>"}) {
		t.Fatalf("remote = %+v", r)
	}
	if b, _ := New(Config{NodeID: 1}); b.serverOptions(nil).LeafNode.Remotes != nil {
		t.Fatal("remotes without Leafnodes")
	}
}

// A bridge connected to a hub as a leafnode: clients on either side reach
// each other, the internal RPC subjects do not cross, and a route reload
// keeps the leafnode.
func TestBridge_Leafnode(t *testing.T) {
	checkGoroutines(t)
	hub, leafURL := startHub(t, "edge", "s3cret")
	h := &echoHandler{node: 1}
	b := newBridge(t, 1, h, func(c *Config) { c.Leafnodes = []string{leafURL} })
	waitLeafCond(t, "leafnode connection", func() bool { return hub.NumLeafNodes() == 1 })

	hubConn := dialNATS(t, hub.ClientURL())
	edgeConn := dialNATS(t, b.ClientURL())
	edgeSrv := bridgeServer(t, b)

	// Hub subscriber, edge publisher.
	sub, err := hubConn.SubscribeSync("core.events")
	if err != nil {
		t.Fatal(err)
	}
	flushNATS(t, hubConn)
	waitLeafCond(t, "hub interest at the edge", func() bool { return edgeSrv.GlobalAccount().SubscriptionInterest("core.events") })
	if err := edgeConn.Publish("core.events", []byte("from edge")); err != nil {
		t.Fatal(err)
	}
	if m, err := sub.NextMsg(5 * time.Second); err != nil || string(m.Data) != "from edge" {
		t.Fatalf("hub subscriber: %v, %v", m, err)
	}

	// Edge service, hub requester: the reply crosses back.
	if _, err := edgeConn.Subscribe("edge.echo", func(m *nats.Msg) { _ = m.Respond(append([]byte("echo "), m.Data...)) }); err != nil {
		t.Fatal(err)
	}
	flushNATS(t, edgeConn)
	waitLeafCond(t, "edge interest at the hub", func() bool { return hub.GlobalAccount().SubscriptionInterest("edge.echo") })
	if m, err := hubConn.Request("edge.echo", []byte("hi"), 5*time.Second); err != nil || string(m.Data) != "echo hi" {
		t.Fatalf("hub request: %v, %v", m, err)
	}

	// The RPC subscription (older than edge.echo, so its interest would
	// have arrived first) is not visible at the hub, and the hub's request
	// reaches nobody.
	if hub.GlobalAccount().SubscriptionInterest(rpcSubject(1)) {
		t.Fatalf("hub has interest in %s", rpcSubject(1))
	}
	if _, err := hubConn.Request(rpcSubject(1), []byte("x"), time.Second); !errors.Is(err, nats.ErrNoResponders) && !errors.Is(err, nats.ErrTimeout) {
		t.Fatalf("hub request to %s: %v, want no responders or a timeout", rpcSubject(1), err)
	}
	// The other way: the hub has a subscriber on _WALRUS.>, but an edge
	// publish there is not forwarded. Both subjects arrive in one channel,
	// in the order the edge published them, so the marker comes first only
	// if the _WALRUS message was dropped.
	got := make(chan *nats.Msg, 2)
	for _, subj := range []string{"_WALRUS.>", "core.marker"} {
		if _, err := hubConn.ChanSubscribe(subj, got); err != nil {
			t.Fatal(err)
		}
	}
	flushNATS(t, hubConn)
	waitLeafCond(t, "marker interest at the edge", func() bool { return edgeSrv.GlobalAccount().SubscriptionInterest("core.marker") })
	for _, subj := range []string{rpcSubject(2), "core.marker"} {
		if err := edgeConn.Publish(subj, []byte(subj)); err != nil {
			t.Fatal(err)
		}
	}
	select {
	case m := <-got:
		if m.Subject != "core.marker" {
			t.Fatalf("hub received %s from the edge", m.Subject)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("hub did not receive the marker")
	}
	if n := h.appends.Load() + h.reads.Load() + h.proposes.Load() + h.heartbeats.Load(); n != 0 {
		t.Fatalf("the RPC handler ran %d times", n)
	}

	// Reloading the routes keeps the leafnode.
	if err := b.SetRoutes([]string{"nats-route://127.0.0.1:1"}); err != nil {
		t.Fatalf("SetRoutes with a leafnode: %v", err)
	}
	if m, err := hubConn.Request("edge.echo", []byte("again"), 5*time.Second); err != nil || string(m.Data) != "echo again" {
		t.Fatalf("hub request after SetRoutes: %v, %v", m, err)
	}
	if n := hub.NumLeafNodes(); n != 1 {
		t.Fatalf("hub has %d leafnodes after SetRoutes, want 1", n)
	}
}

// startHub starts an upstream NATS server with a leafnode listener that
// requires user and password, both on loopback free ports. It returns the
// leafnode URL with the credentials.
func startHub(t *testing.T, user, password string) (*server.Server, string) {
	t.Helper()
	opts := &server.Options{
		ServerName: "hub",
		Host:       "127.0.0.1",
		Port:       server.RANDOM_PORT,
		NoSigs:     true,
		NoLog:      true,
		LeafNode: server.LeafNodeOpts{
			Host:     "127.0.0.1",
			Port:     server.RANDOM_PORT,
			Username: user,
			Password: password,
		},
	}
	hub, err := server.NewServer(opts)
	if err != nil {
		t.Fatalf("hub: %v", err)
	}
	hub.Start()
	t.Cleanup(func() {
		hub.Shutdown()
		hub.WaitForShutdown()
	})
	if !hub.ReadyForConnections(5 * time.Second) {
		t.Fatal("hub not ready")
	}
	// The server writes the bound leafnode port back into opts before it
	// reports ready.
	u := url.URL{Scheme: "nats-leaf", User: url.UserPassword(user, password),
		Host: fmt.Sprintf("127.0.0.1:%d", opts.LeafNode.Port)}
	return hub, u.String()
}

func bridgeServer(t *testing.T, b *Bridge) *server.Server {
	t.Helper()
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.mu.srv == nil {
		t.Fatal("bridge not running")
	}
	return b.mu.srv
}

func dialNATS(t *testing.T, url string) *nats.Conn {
	t.Helper()
	nc, err := nats.Connect(url, nats.Timeout(2*time.Second))
	if err != nil {
		t.Fatalf("connect %s: %v", url, err)
	}
	t.Cleanup(nc.Close)
	return nc
}

func flushNATS(t *testing.T, nc *nats.Conn) {
	t.Helper()
	if err := nc.FlushTimeout(5 * time.Second); err != nil {
		t.Fatalf("flush: %v", err)
	}
}

// waitLeafCond polls cond every 5ms for at most 10s.
func waitLeafCond(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}
