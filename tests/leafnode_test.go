package tests

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"

	"github.com/walrus-edge/walrus/tests/freeport"
	"github.com/walrus-edge/walrus/tests/testcluster"
)

// The edge set-up of docs/nats.md: every node of a 3-node cluster connects
// to an upstream "hub" NATS server as a leafnode, and a client that talks
// only to the hub registers a topic, produces with acks, tails, fetches and
// binds a capture, while the data lands in the same log the TCP protocol
// reads, and Walrus's internal subjects never reach the hub.
func TestNATS_Leafnode(t *testing.T) {
	hub, leafPort := startLeafHub(t)
	c := testcluster.New(t, testcluster.Options{
		Args: []string{"--nats-leafnode-url", fmt.Sprintf("nats-leaf://127.0.0.1:%d", leafPort)},
	})
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()

	// Each node connects on its own: the hub sees one leafnode per node.
	waitUntil(t, "3 leafnode connections at the hub", 30*time.Second, func() error {
		if n := hub.NumLeafNodes(); n != 3 {
			return fmt.Errorf("%d leafnodes", n)
		}
		return nil
	})

	hc := hubConnect(t, hub.ClientURL())
	// Anything the hub ever receives on Walrus's internal subjects is a leak;
	// checked at the end, after every kind of internal traffic (registration
	// interest checks, forwarded reads) has happened.
	leak, err := hc.SubscribeSync("_WALRUS.>")
	if err != nil {
		t.Fatal(err)
	}

	const topic = "hub.readings" // dotted, as topics may be
	reg := natsReq(t, hc, "walrus.admin.register."+topic, nil)
	var regReply struct {
		Topic      string `json:"topic"`
		Registered bool   `json:"registered"`
	}
	if err := json.Unmarshal(reg.Data, &regReply); err != nil || regReply.Topic != topic || !regReply.Registered {
		t.Fatalf("register reply %q: %v", reg.Data, err)
	}

	// The live tail, subscribed on the hub before producing. The hub's
	// interest reaches the nodes over their leafnode connections (and their
	// routes) asynchronously, and the node that stores an entry publishes
	// its tail message only if it knows of a subscriber. So a marker
	// service is subscribed on the same hub connection right after the
	// tail: the hub forwards the two interests in order on every path, so
	// once a node's client reaches the marker service, that node also knows
	// of the tail subscription. That also checks the other direction of a
	// leafnode: edge clients reach a service on the hub.
	tail := make(chan *nats.Msg, 64)
	if _, err := hc.ChanSubscribe("walrus.tail."+topic, tail); err != nil {
		t.Fatal(err)
	}
	if _, err := hc.Subscribe("leaftest.marker", func(m *nats.Msg) { _ = m.Respond([]byte("pong")) }); err != nil {
		t.Fatal(err)
	}
	flushHub(t, hc)
	for _, n := range c.Nodes {
		nc := natsConnect(t, n)
		waitUntil(t, fmt.Sprintf("node %d reaching the hub's marker service", n.ID), 10*time.Second, func() error {
			m, err := nc.Request("leaftest.marker", nil, 2*time.Second)
			if err != nil {
				return err // no responders until the interest arrives
			}
			if string(m.Data) != "pong" {
				return fmt.Errorf("marker reply %q", m.Data)
			}
			return nil
		})
	}

	// Registration replies once every walrus node routes the publish
	// subject, but the hub learns that interest over the leafnode
	// connections separately, a little later: a request from the hub right
	// away may get "no responders". Wait (bounded) until the hub routes the
	// subject; from then on every request must succeed at the first try.
	waitHubInterest(t, hub, "walrus.pub."+topic)

	payloads := []string{"reading 0", "ünïcödé ✓ 🦭 reading", strings.Repeat("x", 8<<10)}
	var segment uint64
	for i, p := range payloads {
		var hdr []string
		if i == 0 {
			hdr = []string{"Site", "hub"}
		}
		m := natsReq(t, hc, "walrus.pub."+topic, []byte(p), hdr...)
		var ack struct {
			Topic     string `json:"topic"`
			Segment   uint64 `json:"segment"`
			Offset    uint64 `json:"offset"`
			Duplicate bool   `json:"duplicate"`
		}
		if err := json.Unmarshal(m.Data, &ack); err != nil {
			t.Fatalf("ack %d %q: %v", i, m.Data, err)
		}
		if i == 0 {
			segment = ack.Segment
		}
		if ack.Topic != topic || ack.Offset != uint64(i) || ack.Segment == 0 || ack.Segment != segment || ack.Duplicate {
			t.Fatalf("ack %d = %s, want topic %s, offset %d, segment %d", i, m.Data, topic, i, segment)
		}
	}

	// Every entry arrives on the hub's tail, in order, with its offset.
	for i, p := range payloads {
		m := nextTail(t, tail, i)
		if string(m.Data) != p || m.Header.Get("Walrus-Topic") != topic || m.Header.Get("Walrus-Segment") != strconv.FormatUint(segment, 10) {
			t.Fatalf("tail %d: %q %v, want %q", i, trunc(m.Data), m.Header, trunc([]byte(p)))
		}
	}

	// Fetch from the hub reads them back without moving the cursor.
	f := leafFetch(t, hc, topic, `{"offset":0}`)
	if len(f.Entries) != len(payloads) || f.NextOffset != uint64(len(payloads)) {
		t.Fatalf("fetch from 0: %d entries, next_offset %d; want %d, %d", len(f.Entries), f.NextOffset, len(payloads), len(payloads))
	}
	for i, e := range f.Entries {
		if e.Offset != uint64(i) || e.Segment != segment || string(e.Data) != payloads[i] {
			t.Fatalf("fetched entry %d: offset %d segment %d %q", i, e.Offset, e.Segment, trunc(e.Data))
		}
	}
	if got := f.Entries[0].Headers["Site"]; len(got) != 1 || got[0] != "hub" {
		t.Fatalf("fetched entry 0 headers %v, want Site: hub", f.Entries[0].Headers)
	}

	// The same entries, byte for byte, over the native TCP protocol.
	tcp := c.Client(3)
	for i, want := range payloads {
		got, ok, err := tcp.Get(ctx, topic)
		if err != nil || !ok || string(got) != want {
			t.Fatalf("TCP GET %d on node 3 = %q (%d bytes), %v, %v; want %d bytes", i, trunc(got), len(got), ok, err, len(want))
		}
	}
	if got, ok, err := tcp.Get(ctx, topic); err != nil || ok {
		t.Fatalf("TCP GET after the produced entries = %q, %v, %v; want empty", trunc(got), ok, err)
	}

	// Capture: a plain publish on the hub, by a publisher that knows nothing
	// of Walrus, is stored in the topic.
	capReply := natsReq(t, hc, "walrus.admin.capture."+topic, []byte(`{"subjects":["edge.sensors.>"]}`))
	var capBody struct {
		Topic    string   `json:"topic"`
		Subjects []string `json:"subjects"`
	}
	if err := json.Unmarshal(capReply.Data, &capBody); err != nil || capBody.Topic != topic ||
		len(capBody.Subjects) != 1 || capBody.Subjects[0] != "edge.sensors.>" {
		t.Fatalf("capture reply %q: %v", capReply.Data, err)
	}
	// As with the registration: the capture reply waits for the walrus
	// nodes' interest, not the hub's, and a plain publish the hub has no
	// interest for is dropped silently. Wait (bounded) for the hub.
	waitHubInterest(t, hub, "edge.sensors.x")
	if err := hc.Publish("edge.sensors.x", []byte("21.5")); err != nil {
		t.Fatal(err)
	}
	flushHub(t, hc)
	capOffset := uint64(len(payloads))
	f = leafFetch(t, hc, topic, fmt.Sprintf(`{"offset":%d,"wait_ms":5000}`, capOffset))
	if len(f.Entries) != 1 || f.NextOffset != capOffset+1 {
		t.Fatalf("fetch from %d after the capture: %d entries, next_offset %d; want 1, %d", capOffset, len(f.Entries), f.NextOffset, capOffset+1)
	}
	if e := f.Entries[0]; e.Offset != capOffset || string(e.Data) != "21.5" ||
		len(e.Headers["Walrus-Subject"]) != 1 || e.Headers["Walrus-Subject"][0] != "edge.sensors.x" {
		t.Fatalf("captured entry: offset %d %q headers %v", e.Offset, e.Data, e.Headers)
	}
	if m := nextTail(t, tail, int(capOffset)); string(m.Data) != "21.5" || m.Header.Get("Walrus-Subject") != "edge.sensors.x" {
		t.Fatalf("tail of the captured entry: %q %v", m.Data, m.Header)
	}
	if got, ok, err := tcp.Get(ctx, topic); err != nil || !ok || string(got) != "21.5" {
		t.Fatalf("TCP GET of the captured entry = %q, %v, %v", got, ok, err)
	}

	// Nothing leaked or was delivered twice. A flush round trip to the hub
	// first, then non-blocking checks.
	flushHub(t, hc)
	if n, _, err := leak.Pending(); err != nil || n != 0 {
		var first string
		if m, err := leak.NextMsg(0); err == nil {
			first = fmt.Sprintf("%s (%d bytes)", m.Subject, len(m.Data))
		}
		t.Fatalf("the hub received %d messages on _WALRUS.> (%v), first on %s", n, err, first)
	}
	// Nor did any node announce interest in an internal subject (its RPC
	// queue subscriptions, the interest checks) to the hub. (The hub's own
	// _WALRUS.> subscription above is a client's, not a leafnode's.)
	lz, err := hub.Leafz(&server.LeafzOptions{Subscriptions: true})
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range lz.Leafs {
		for _, s := range l.Subs {
			if strings.HasPrefix(s, "_WALRUS") {
				t.Fatalf("leafnode %s announced interest in %q to the hub", l.Name, s)
			}
		}
	}
	if k := len(tail); k != 0 {
		m := <-tail
		t.Fatalf("%d more tail messages, first: offset %s %q", k, m.Header.Get("Walrus-Offset"), trunc(m.Data))
	}
	if n := hub.NumLeafNodes(); n != 3 {
		t.Fatalf("%d leafnodes at the end, want 3", n)
	}
}

// startLeafHub starts an upstream NATS server in the test process, with a
// client port and a leafnode listener on loopback, and returns it with the
// leafnode port.
func startLeafHub(t *testing.T) (*server.Server, int) {
	t.Helper()
	ports := freeport.Get(t, 2)
	hub, err := server.NewServer(&server.Options{
		ServerName: "hub",
		Host:       "127.0.0.1",
		Port:       ports[0],
		NoSigs:     true,
		NoLog:      true,
		LeafNode:   server.LeafNodeOpts{Host: "127.0.0.1", Port: ports[1]},
	})
	if err != nil {
		t.Fatalf("hub: %v", err)
	}
	hub.Start()
	t.Cleanup(func() {
		hub.Shutdown()
		hub.WaitForShutdown()
	})
	if !hub.ReadyForConnections(10 * time.Second) {
		t.Fatal("hub not ready")
	}
	return hub, ports[1]
}

// hubConnect connects a nats.go client to the hub only.
func hubConnect(t *testing.T, url string) *nats.Conn {
	t.Helper()
	nc, err := nats.Connect(url, nats.Name(t.Name()+"-hub"), nats.Timeout(5*time.Second))
	if err != nil {
		t.Fatalf("connect %s: %v", url, err)
	}
	t.Cleanup(nc.Close)
	return nc
}

func flushHub(t *testing.T, nc *nats.Conn) {
	t.Helper()
	if err := nc.FlushTimeout(5 * time.Second); err != nil {
		t.Fatalf("flush: %v", err)
	}
}

// waitUntil polls cond every 10ms until it returns nil, failing the test
// with cond's last error after within.
func waitUntil(t *testing.T, what string, within time.Duration, cond func() error) {
	t.Helper()
	deadline := time.Now().Add(within)
	for {
		err := cond()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s: %v", within, what, err)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// waitHubInterest waits until the hub routes subject to a subscriber, which
// it learns from the leafnode connections.
func waitHubInterest(t *testing.T, hub *server.Server, subject string) {
	t.Helper()
	waitUntil(t, "hub interest in "+subject, 10*time.Second, func() error {
		if !hub.GlobalAccount().SubscriptionInterest(subject) {
			return errors.New("no interest")
		}
		return nil
	})
}

// nextTail waits for the next tail message and checks its offset.
func nextTail(t *testing.T, tail <-chan *nats.Msg, offset int) *nats.Msg {
	t.Helper()
	select {
	case m := <-tail:
		if got := m.Header.Get("Walrus-Offset"); got != strconv.Itoa(offset) {
			t.Fatalf("tail message %q has Walrus-Offset %q, want %d", trunc(m.Data), got, offset)
		}
		return m
	case <-time.After(10 * time.Second):
		t.Fatalf("no tail message for offset %d within 10s", offset)
		return nil
	}
}

type leafFetchReply struct {
	Topic   string `json:"topic"`
	Entries []struct {
		Offset  uint64              `json:"offset"`
		Segment uint64              `json:"segment"`
		Headers map[string][]string `json:"headers"`
		Data    []byte              `json:"data"`
	} `json:"entries"`
	NextOffset uint64 `json:"next_offset"`
}

func leafFetch(t *testing.T, nc *nats.Conn, topic, body string) leafFetchReply {
	t.Helper()
	m := natsReq(t, nc, "walrus.fetch."+topic, []byte(body))
	var f leafFetchReply
	if err := json.Unmarshal(m.Data, &f); err != nil || f.Topic != topic {
		t.Fatalf("fetch %s reply %q: %v", body, trunc(m.Data), err)
	}
	return f
}
