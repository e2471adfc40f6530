package broker_test

import (
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/walrus-edge/walrus/broker"
)

// natsClient connects a plain nats.go client to node s, closed at the end.
func natsClient(t *testing.T, s *broker.Server) *nats.Conn {
	t.Helper()
	nc, err := nats.Connect(s.NATSURL(), nats.Name(t.Name()))
	if err != nil {
		t.Fatalf("connect to %s: %v", s.NATSURL(), err)
	}
	t.Cleanup(nc.Close)
	return nc
}

// request sends a request and returns the reply, failing on a transport
// error.
func request(t *testing.T, nc *nats.Conn, subject, body string, hdr ...string) *nats.Msg {
	t.Helper()
	m := nats.NewMsg(subject)
	m.Data = []byte(body)
	for i := 0; i+1 < len(hdr); i += 2 {
		m.Header.Add(hdr[i], hdr[i+1])
	}
	reply, err := nc.RequestMsg(m, 10*time.Second)
	if err != nil {
		t.Fatalf("request %s %q: %v", subject, body, err)
	}
	return reply
}

type natsAck struct {
	Topic     string `json:"topic"`
	Segment   uint64 `json:"segment"`
	Offset    uint64 `json:"offset"`
	Duplicate bool   `json:"duplicate"`
}

func decodeReply[T any](t *testing.T, m *nats.Msg) T {
	t.Helper()
	var v T
	if code := m.Header.Get("Walrus-Error"); code != "" {
		t.Fatalf("%s: error reply %s: %s", m.Subject, code, m.Data)
	}
	if err := json.Unmarshal(m.Data, &v); err != nil {
		t.Fatalf("reply %q: %v", m.Data, err)
	}
	return v
}

// wantError checks that m is an error reply with code.
func wantError(t *testing.T, m *nats.Msg, code string) {
	t.Helper()
	var body struct {
		Error struct{ Code, Message string } `json:"error"`
	}
	if err := json.Unmarshal(m.Data, &body); err != nil || m.Header.Get("Walrus-Error") != code ||
		body.Error.Code != code || body.Error.Message == "" {
		t.Fatalf("want error %s, got header %q body %q", code, m.Header.Get("Walrus-Error"), m.Data)
	}
}

type natsFetch struct {
	Topic   string `json:"topic"`
	Group   string `json:"group"`
	Entries []struct {
		Offset    uint64              `json:"offset"`
		Segment   uint64              `json:"segment"`
		Timestamp string              `json:"timestamp"`
		Headers   map[string][]string `json:"headers"`
		Data      []byte              `json:"data"`
	} `json:"entries"`
	NextOffset uint64 `json:"next_offset"`
}

func (f natsFetch) values() []string {
	out := make([]string, len(f.Entries))
	for i, e := range f.Entries {
		out[i] = string(e.Data)
	}
	return out
}

func TestNATSAPI_SingleNode(t *testing.T) {
	c := newCluster(t, 1, nil)
	s := c.srv(1)
	ctx := testCtx(t, 60*time.Second)
	nc := natsClient(t, s)

	if r := decodeReply[map[string]any](t, request(t, nc, "walrus.admin.register.orders", "")); r["registered"] != true {
		t.Fatalf("register reply %v", r)
	}

	t.Run("produce with ack and dedup", func(t *testing.T) {
		a := decodeReply[natsAck](t, request(t, nc, "walrus.pub.orders", "order 0", "Nats-Msg-Id", "id-0", "Trace", "a", "Trace", "b"))
		if a != (natsAck{Topic: "orders", Segment: 1, Offset: 0}) {
			t.Fatalf("ack %+v", a)
		}
		dup := decodeReply[natsAck](t, request(t, nc, "walrus.pub.orders", "order 0 again", "Nats-Msg-Id", "id-0"))
		if dup != (natsAck{Topic: "orders", Segment: 1, Offset: 0, Duplicate: true}) {
			t.Fatalf("duplicate ack %+v", dup)
		}
		if err := nc.Publish("walrus.pub.orders", []byte("order 1")); err != nil { // fire-and-forget
			t.Fatal(err)
		}
		a = decodeReply[natsAck](t, request(t, nc, "walrus.pub.orders", "order 2"))
		if a.Offset != 2 { // the plain publish before it is stored first: one connection, one order
			t.Fatalf("ack after a plain publish %+v", a)
		}
	})

	t.Run("get through the shared cursor, across protocols", func(t *testing.T) {
		m := request(t, nc, "walrus.get.orders", "")
		if string(m.Data) != "order 0" || m.Header.Get("Walrus-Offset") != "0" || m.Header.Get("Walrus-Segment") != "1" ||
			m.Header.Get("Walrus-Topic") != "orders" || strings.Join(m.Header.Values("Trace"), ",") != "a,b" ||
			m.Header.Get("Nats-Msg-Id") != "id-0" {
			t.Fatalf("get: %q headers %v", m.Data, m.Header)
		}
		if _, err := time.Parse(time.RFC3339Nano, m.Header.Get("Walrus-Timestamp")); err != nil {
			t.Fatalf("timestamp: %v", err)
		}
		e, ok, err := s.Get(ctx, "orders") // the native GET shares the cursor
		if err != nil || !ok || string(e.Value) != "order 1" {
			t.Fatalf("native Get = %q %v %v", e.Value, ok, err)
		}
		if m := request(t, nc, "walrus.get.orders", ""); string(m.Data) != "order 2" {
			t.Fatalf("get after native get: %q", m.Data)
		}
		if m := request(t, nc, "walrus.get.orders", ""); m.Header.Get("Walrus-Status") != "empty" || len(m.Data) != 0 {
			t.Fatalf("get on a drained topic: %q %v", m.Data, m.Header)
		}
		if _, err := s.Put(ctx, "orders", rec("native 3")); err != nil {
			t.Fatal(err)
		}
		if m := request(t, nc, "walrus.get.orders", ""); string(m.Data) != "native 3" {
			t.Fatalf("get of a native put: %q", m.Data)
		}
	})

	t.Run("fetch by offset and group", func(t *testing.T) {
		f := decodeReply[natsFetch](t, request(t, nc, "walrus.fetch.orders", `{"offset":1,"max":2}`))
		equalSeq(t, "fetch offset 1 max 2", f.values(), []string{"order 1", "order 2"})
		if f.NextOffset != 3 || f.Entries[0].Offset != 1 {
			t.Fatalf("fetch: %+v", f)
		}
		f = decodeReply[natsFetch](t, request(t, nc, "walrus.fetch.orders", `{"group":"g","max":3,"commit":true}`))
		equalSeq(t, "group fetch", f.values(), []string{"order 0", "order 1", "order 2"})
		f = decodeReply[natsFetch](t, request(t, nc, "walrus.fetch.orders", `{"group":"g"}`))
		equalSeq(t, "group fetch after commit", f.values(), []string{"native 3"})
		c := decodeReply[map[string]any](t, request(t, nc, "walrus.commit.orders", `{"group":"g","offset":1}`))
		if c["offset"] != float64(3) { // never backwards
			t.Fatalf("commit backwards answered %v", c)
		}
		c = decodeReply[map[string]any](t, request(t, nc, "walrus.commit.orders", `{"group":"g","offset":4}`))
		if c["offset"] != float64(4) {
			t.Fatalf("commit answered %v", c)
		}
		if f := decodeReply[natsFetch](t, request(t, nc, "walrus.fetch.orders", `{"group":"g"}`)); len(f.Entries) != 0 || f.NextOffset != 4 {
			t.Fatalf("fetch at the end: %+v", f)
		}
	})

	t.Run("long poll and tail", func(t *testing.T) {
		sub, err := nc.SubscribeSync("walrus.tail.orders")
		if err != nil {
			t.Fatal(err)
		}
		if err := nc.Flush(); err != nil {
			t.Fatal(err)
		}
		done := make(chan *nats.Msg, 1)
		go func() {
			m, err := nc.Request("walrus.fetch.orders", []byte(`{"offset":4,"wait_ms":5000}`), 10*time.Second)
			if err != nil {
				m = &nats.Msg{Data: []byte(err.Error())}
			}
			done <- m
		}()
		time.Sleep(200 * time.Millisecond) // let the fetch start waiting (a race here only weakens the test)
		start := time.Now()
		for i := range 3 {
			decodeReply[natsAck](t, request(t, nc, "walrus.pub.orders", fmt.Sprintf("live %d", i)))
		}
		f := decodeReply[natsFetch](t, <-done)
		if len(f.Entries) == 0 || string(f.Entries[0].Data) != "live 0" {
			t.Fatalf("long poll: %+v", f)
		}
		if waited := time.Since(start); waited > 4*time.Second {
			t.Fatalf("long poll answered %v after the append", waited)
		}
		for i := range 3 {
			m, err := sub.NextMsg(5 * time.Second)
			if err != nil {
				t.Fatalf("tail message %d: %v", i, err)
			}
			if string(m.Data) != fmt.Sprintf("live %d", i) || m.Header.Get("Walrus-Offset") != strconv.Itoa(4+i) {
				t.Fatalf("tail message %d: %q offset %s", i, m.Data, m.Header.Get("Walrus-Offset"))
			}
		}
	})

	t.Run("bad requests get clear errors", func(t *testing.T) {
		wantError(t, request(t, nc, "walrus.fetch.orders", `{"offset":`), "bad_request")
		wantError(t, request(t, nc, "walrus.fetch.orders", `{"bogus":1}`), "bad_request")
		wantError(t, request(t, nc, "walrus.fetch.orders", `{"offset":1,"group":"g"}`), "bad_request")
		wantError(t, request(t, nc, "walrus.fetch.orders", `{"max":100000}`), "bad_request")
		wantError(t, request(t, nc, "walrus.commit.orders", `{"group":"g"}`), "bad_request")
		// Only a topic's leader subscribes to its publish subject: like a
		// JetStream stream that does not exist, NATS answers no responders.
		if _, err := nc.Request("walrus.pub.nope", []byte("x"), 5*time.Second); !errors.Is(err, nats.ErrNoResponders) {
			t.Fatalf("publish request to an unknown topic: %v, want no responders", err)
		}
		wantError(t, request(t, nc, "walrus.get.nope", ""), "unknown_topic")
		wantError(t, request(t, nc, "walrus.fetch.nope", ""), "unknown_topic")
		wantError(t, request(t, nc, "walrus.pub.orders", strings.Repeat("x", 2<<20)), "too_large")
		wantError(t, request(t, nc, "walrus.pub.orders", "x", "Walrus-Offset", "7"), "bad_request")
		wantError(t, request(t, nc, "walrus.admin.capture.orders", `{"subjects":["walrus.>"]}`), "bad_request")
		wantError(t, request(t, nc, "walrus.admin.capture.orders", `{"subjects":[">"]}`), "bad_request")
		wantError(t, request(t, nc, "walrus.admin.frobnicate.orders", ""), "bad_request")
		// Still serving, and nothing bad was stored.
		st := decodeReply[map[string]any](t, request(t, nc, "walrus.admin.state.orders", ""))
		if st["current_segment"] != float64(1) {
			t.Fatalf("state %v", st)
		}
		if f := decodeReply[natsFetch](t, request(t, nc, "walrus.fetch.orders", `{"offset":7}`)); len(f.Entries) != 0 {
			t.Fatalf("bad requests stored entries: %+v", f)
		}
		m := decodeReply[map[string]any](t, request(t, nc, "walrus.admin.metrics", ""))
		if _, ok := m["current_leader"]; !ok {
			t.Fatalf("metrics %v", m)
		}
	})

	t.Run("capture", func(t *testing.T) {
		decodeReply[map[string]any](t, request(t, nc, "walrus.admin.register.sensors", ""))
		r := decodeReply[map[string]any](t, request(t, nc, "walrus.admin.capture.sensors", `{"subjects":["sensors.>"]}`))
		if fmt.Sprint(r["subjects"]) != "[sensors.>]" {
			t.Fatalf("capture reply %v", r)
		}
		pub := natsClient(t, s)
		waitFor(t, 10*time.Second, func() error {
			if err := pub.Publish("sensors.kitchen.temp", []byte("21.5")); err != nil {
				return err
			}
			f := decodeReply[natsFetch](t, request(t, nc, "walrus.fetch.sensors", `{"offset":0}`))
			if len(f.Entries) == 0 {
				return fmt.Errorf("nothing captured yet")
			}
			if got := f.Entries[0].Headers["Walrus-Subject"]; len(got) != 1 || got[0] != "sensors.kitchen.temp" || string(f.Entries[0].Data) != "21.5" {
				return fmt.Errorf("captured entry %+v", f.Entries[0])
			}
			return nil
		})
		decodeReply[map[string]any](t, request(t, nc, "walrus.admin.capture.sensors", `{"subjects":[]}`))
	})
}

// A producer on one node, a fetching consumer on another and a tail on the
// third see the same log.
func TestNATSAPI_ThreeNodes(t *testing.T) {
	c := newCluster(t, 3, nil)
	n1, n2, n3 := natsClient(t, c.srv(1)), natsClient(t, c.srv(2)), natsClient(t, c.srv(3))
	decodeReply[map[string]any](t, request(t, n1, "walrus.admin.register.events", ""))
	tail, err := n2.SubscribeSync("walrus.tail.events")
	if err != nil {
		t.Fatal(err)
	}
	if err := n2.Flush(); err != nil {
		t.Fatal(err)
	}
	want := seq("ev", 30)
	// Route interest takes a moment to reach the other nodes: the first
	// tail message may predate it, so compare from the offset tail starts at.
	for i, v := range want {
		a := decodeReply[natsAck](t, request(t, n1, "walrus.pub.events", v, "Nats-Msg-Id", v))
		if a.Offset != uint64(i) {
			t.Fatalf("ack %d: %+v", i, a)
		}
	}
	var got []string
	next := uint64(0)
	for len(got) < len(want) {
		f := decodeReply[natsFetch](t, request(t, n3, "walrus.fetch.events", `{"group":"c","max":7,"wait_ms":2000}`))
		if len(f.Entries) == 0 {
			t.Fatalf("fetch returned nothing after %d entries", len(got))
		}
		got = append(got, f.values()...)
		next = f.NextOffset
		decodeReply[map[string]any](t, request(t, n3, "walrus.commit.events", fmt.Sprintf(`{"group":"c","offset":%d}`, next)))
	}
	equalSeq(t, "fetched through node 3", got, want)
	var tailed []string
	for {
		m, err := tail.NextMsg(5 * time.Second)
		if err != nil {
			t.Fatalf("tail after %d: %v", len(tailed), err)
		}
		tailed = append(tailed, string(m.Data))
		if m.Header.Get("Walrus-Offset") == strconv.Itoa(len(want)-1) {
			break
		}
	}
	equalSeq(t, "tailed through node 2", tailed, want[len(want)-len(tailed):])
}
