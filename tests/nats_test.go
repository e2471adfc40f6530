package tests

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/walrus-edge/walrus/tests/testcluster"
)

// natsConnect connects a plain nats.go client to a node; it reconnects to
// the same URL after the node restarts.
func natsConnect(t *testing.T, n *testcluster.Node) *nats.Conn {
	t.Helper()
	nc, err := nats.Connect(n.NATSURL, nats.Name(t.Name()), nats.MaxReconnects(-1),
		nats.ReconnectWait(100*time.Millisecond))
	if err != nil {
		t.Fatalf("connect %s: %v", n.NATSURL, err)
	}
	t.Cleanup(nc.Close)
	return nc
}

// natsReq sends a request with optional header pairs and fails the test on
// a transport error or an error reply.
func natsReq(t *testing.T, nc *nats.Conn, subject string, body []byte, hdr ...string) *nats.Msg {
	t.Helper()
	m, err := natsTry(nc, subject, body, hdr...)
	if err != nil {
		t.Fatal(err)
	}
	return m
}

func natsTry(nc *nats.Conn, subject string, body []byte, hdr ...string) (*nats.Msg, error) {
	m := nats.NewMsg(subject)
	m.Data = body
	for i := 0; i+1 < len(hdr); i += 2 {
		m.Header.Add(hdr[i], hdr[i+1])
	}
	reply, err := nc.RequestMsg(m, 10*time.Second)
	if err != nil {
		return nil, fmt.Errorf("request %s: %w", subject, err)
	}
	if code := reply.Header.Get("Walrus-Error"); code != "" {
		return reply, fmt.Errorf("request %s: error %s: %s", subject, code, reply.Data)
	}
	return reply, nil
}

// Entries cross protocols byte for byte: produced over NATS on one node and
// read over TCP on another, and the reverse.
func TestNATS_CrossProtocol(t *testing.T) {
	c := testcluster.New(t, testcluster.Options{})
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	if err := c.Client(1).Register(ctx, "mixed"); err != nil {
		t.Fatal(err)
	}
	nc2 := natsConnect(t, c.Node(2))
	payloads := []string{"plain", "with  two  inner   spaces", "ünïcödé ✓ 🦭", strings.Repeat("x", 8<<10)}
	// The topic was registered over TCP through node 1, and REGISTER
	// replies only once every node routes its publish subject: the first
	// publish through node 2 must find it, without retrying.
	for _, p := range payloads {
		natsReq(t, nc2, "walrus.pub.mixed", []byte(p))
	}
	r := c.Client(3)
	for i, want := range payloads {
		got, ok, err := r.Get(ctx, "mixed")
		if err != nil || !ok || string(got) != want {
			t.Fatalf("TCP GET %d on node 3 = %q (%d bytes), %v, %v; want %d bytes", i, trunc(got), len(got), ok, err, len(want))
		}
	}
	for _, p := range payloads {
		if err := c.Client(1).Put(ctx, "mixed", []byte(p)); err != nil {
			t.Fatal(err)
		}
	}
	for i, want := range payloads {
		m := natsReq(t, nc2, "walrus.get.mixed", nil)
		if string(m.Data) != want {
			t.Fatalf("NATS get %d on node 2 = %q (%d bytes), want %d bytes", i, trunc(m.Data), len(m.Data), len(want))
		}
	}
	if m := natsReq(t, nc2, "walrus.get.mixed", nil); m.Header.Get("Walrus-Status") != "empty" {
		t.Fatalf("get after draining: %q %v", trunc(m.Data), m.Header)
	}
}

func trunc(b []byte) string {
	if len(b) > 40 {
		return string(b[:40]) + "..."
	}
	return string(b)
}

type fetchReply struct {
	Entries []struct {
		Offset uint64 `json:"offset"`
		Data   []byte `json:"data"`
	} `json:"entries"`
	NextOffset uint64 `json:"next_offset"`
}

// A consumer group's fetch loop on node 2 goes on across a restart of node
// 2, with a producer on node 1: every acknowledged entry is consumed, in
// order, and the group's position survives.
func TestNATS_FetchLoopAcrossRestart(t *testing.T) {
	c := testcluster.New(t, testcluster.Options{MaxSegmentEntries: 25})
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	nc1, nc2 := natsConnect(t, c.Node(1)), natsConnect(t, c.Node(2))
	natsReq(t, nc1, "walrus.admin.register.jobs", nil)
	want := seq("job-", 80)

	produced := make(chan error, 1)
	go func() { // the producer: acked requests with ids, retried on errors
		for _, v := range want {
			var err error
			for range 50 {
				if _, err = natsTry(nc1, "walrus.pub.jobs", []byte(v), "Nats-Msg-Id", v); err == nil {
					break
				}
				time.Sleep(100 * time.Millisecond)
			}
			if err != nil {
				produced <- fmt.Errorf("produce %s: %w", v, err)
				return
			}
		}
		produced <- nil
	}()

	var got []string
	restarted := false
	for len(got) < len(want) && ctx.Err() == nil {
		if len(got) >= 30 && !restarted {
			c.Stop(2)
			c.Start(2)
			restarted = true
		}
		m, err := natsTry(nc2, "walrus.fetch.jobs", []byte(`{"group":"workers","max":10,"wait_ms":1000}`))
		if err != nil {
			t.Logf("fetch (retrying): %v", err) // node 2 restarting
			time.Sleep(100 * time.Millisecond)
			continue
		}
		var f fetchReply
		if err := json.Unmarshal(m.Data, &f); err != nil {
			t.Fatalf("fetch reply %q: %v", m.Data, err)
		}
		for _, e := range f.Entries {
			got = append(got, string(e.Data))
		}
		if len(f.Entries) == 0 {
			continue
		}
		// Commits only move forward, so retrying one whose reply was lost
		// in the restart is safe.
		for {
			_, err := natsTry(nc2, "walrus.commit.jobs", []byte(fmt.Sprintf(`{"group":"workers","offset":%d}`, f.NextOffset)))
			if err == nil || ctx.Err() != nil {
				break
			}
			t.Logf("commit (retrying): %v", err)
			time.Sleep(100 * time.Millisecond)
		}
	}
	if err := <-produced; err != nil {
		t.Fatal(err)
	}
	if !restarted {
		t.Fatal("node 2 was never restarted")
	}
	equal(t, "consumed through node 2's group across its restart", got, want)
}

// A single walrus process answers every malformed NATS request with a clear
// error — the Walrus-Error header and a JSON body with the same code and a
// message — and goes on serving: a producer and a consumer keep working
// between the bad requests, and the node never exits (the harness fails
// the test on a crash).
func TestNATS_BadRequests(t *testing.T) {
	c := testcluster.New(t, testcluster.Options{Nodes: 1, Args: []string{"--nats-max-message-bytes", "4096"}})
	nc := natsConnect(t, c.Node(1))
	natsReq(t, nc, "walrus.admin.register.good", nil)

	huge := bytes.Repeat([]byte("x"), 5000)
	cases := []struct {
		name, subject string
		body          []byte
		hdr           []string
		code          string
	}{
		{"fetch bad JSON", "walrus.fetch.good", []byte(`{"offset":`), nil, "bad_request"},
		{"fetch binary garbage", "walrus.fetch.good", []byte{0xff, 0x00, 0x7b, 0x22}, nil, "bad_request"},
		{"fetch unknown field", "walrus.fetch.good", []byte(`{"ofset":1}`), nil, "bad_request"},
		{"fetch trailing data", "walrus.fetch.good", []byte(`{"offset":1} {}`), nil, "bad_request"},
		{"fetch offset and group", "walrus.fetch.good", []byte(`{"offset":1,"group":"g"}`), nil, "bad_request"},
		{"fetch negative max", "walrus.fetch.good", []byte(`{"max":-1}`), nil, "bad_request"},
		{"fetch max too big", "walrus.fetch.good", []byte(`{"max":100000}`), nil, "bad_request"},
		{"fetch negative offset", "walrus.fetch.good", []byte(`{"offset":-1}`), nil, "bad_request"},
		{"fetch wait too long", "walrus.fetch.good", []byte(`{"wait_ms":3600000}`), nil, "bad_request"},
		{"fetch commit without group", "walrus.fetch.good", []byte(`{"commit":true}`), nil, "bad_request"},
		{"fetch unknown topic", "walrus.fetch.nope", []byte(`{}`), nil, "unknown_topic"},
		{"get unknown topic", "walrus.get.nope", nil, nil, "unknown_topic"},
		{"commit unknown topic", "walrus.commit.nope", []byte(`{"group":"g","offset":1}`), nil, "unknown_topic"},
		{"commit without group", "walrus.commit.good", []byte(`{"offset":1}`), nil, "bad_request"},
		{"commit bad JSON", "walrus.commit.good", []byte(`[]`), nil, "bad_request"},
		{"state unknown topic", "walrus.admin.state.nope", nil, nil, "unknown_topic"},
		{"capture unknown topic", "walrus.admin.capture.nope", []byte(`{"subjects":["a.b"]}`), nil, "unknown_topic"},
		{"capture own prefix", "walrus.admin.capture.good", []byte(`{"subjects":["walrus.>"]}`), nil, "bad_request"},
		{"capture system subject", "walrus.admin.capture.good", []byte(`{"subjects":["_INBOX.>"]}`), nil, "bad_request"},
		{"capture leading wildcard", "walrus.admin.capture.good", []byte(`{"subjects":["*.temp"]}`), nil, "bad_request"},
		{"capture invalid subject", "walrus.admin.capture.good", []byte(`{"subjects":["a..b"]}`), nil, "bad_request"},
		{"unknown admin verb", "walrus.admin.drop.good", nil, nil, "bad_request"},
		{"publish too large", "walrus.pub.good", huge, nil, "too_large"},
		{"publish reserved header", "walrus.pub.good", []byte("x"), []string{"Walrus-Offset", "7"}, "bad_request"},
	}
	for i, tc := range cases {
		m := nats.NewMsg(tc.subject)
		m.Data = tc.body
		for j := 0; j+1 < len(tc.hdr); j += 2 {
			m.Header.Add(tc.hdr[j], tc.hdr[j+1])
		}
		reply, err := nc.RequestMsg(m, 10*time.Second)
		if err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		var body struct {
			Error struct{ Code, Message string }
		}
		if err := json.Unmarshal(reply.Data, &body); err != nil {
			t.Fatalf("%s: error body %q: %v", tc.name, reply.Data, err)
		}
		if got := reply.Header.Get("Walrus-Error"); got != tc.code || body.Error.Code != tc.code || body.Error.Message == "" {
			t.Fatalf("%s: header %q, body %s; want code %s with a message", tc.name, got, reply.Data, tc.code)
		}
		t.Logf("%s: %s", tc.name, body.Error.Message)

		// The node still serves, and nothing bad was stored.
		v := fmt.Sprintf("ok-%d", i)
		ack := natsReq(t, nc, "walrus.pub.good", []byte(v))
		var pos struct{ Offset uint64 }
		if err := json.Unmarshal(ack.Data, &pos); err != nil || pos.Offset != uint64(i) {
			t.Fatalf("after %s: ack %q (%v), want offset %d", tc.name, ack.Data, err, i)
		}
		var f fetchReply
		if err := json.Unmarshal(natsReq(t, nc, "walrus.fetch.good", fmt.Appendf(nil, `{"offset":%d}`, i)).Data, &f); err != nil ||
			len(f.Entries) != 1 || string(f.Entries[0].Data) != v {
			t.Fatalf("after %s: fetch %d = %+v, %v; want %q", tc.name, i, f, err, v)
		}
	}
	// A plain publish that is refused has nobody to tell: it is dropped
	// and counted, and the topic is unchanged.
	if err := nc.Publish("walrus.pub.good", huge); err != nil {
		t.Fatal(err)
	}
	ack := natsReq(t, nc, "walrus.pub.good", []byte("last"))
	var pos struct{ Offset uint64 }
	if err := json.Unmarshal(ack.Data, &pos); err != nil || pos.Offset != uint64(len(cases)) {
		t.Fatalf("after a refused plain publish: ack %q, want offset %d", ack.Data, len(cases))
	}
	// And a request to a topic that does not exist gets NATS's no responders.
	if _, err := nc.Request("walrus.pub.nope", []byte("x"), 5*time.Second); !errors.Is(err, nats.ErrNoResponders) {
		t.Fatalf("publish request to an unknown topic: %v, want no responders", err)
	}
}
