package tests

import (
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
	for _, p := range payloads {
		// The topic was registered through node 1: retry until node 2 routes
		// its publish subject (a few milliseconds).
		var err error
		for range 100 {
			if _, err = natsTry(nc2, "walrus.pub.mixed", []byte(p)); !errors.Is(err, nats.ErrNoResponders) {
				break
			}
			time.Sleep(20 * time.Millisecond)
		}
		if err != nil {
			t.Fatal(err)
		}
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
