// Command tcpclient talks to a Walrus node in its native TCP protocol, the
// protocol of the original Rust Walrus: every request and every reply is a
// 4-byte little-endian length followed by that many bytes of UTF-8 text.
//
//	go run ./examples/tcpclient --addr 127.0.0.1:9091 --topic logs
//
// It registers the topic, PUTs --count messages, GETs through the topic's
// shared cursor until EMPTY (entries produced over NATS come out too), and
// prints the topic's STATE. Each request and its reply are printed:
//
//	PUT logs tcp message 0 -> OK
//
// The framing takes a dozen lines; it needs no Walrus package.
package main

import (
	"encoding/binary"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"strings"
	"time"
	"unicode"
)

// maxReply bounds the size of a reply this client accepts.
const maxReply = 64 << 20

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

func run(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("tcpclient", flag.ContinueOnError)
	fs.SetOutput(stderr)
	addr := fs.String("addr", "127.0.0.1:8080", "native protocol address of any Walrus node")
	topic := fs.String("topic", "logs", "topic to use")
	count := fs.Int("count", 3, "number of messages to PUT")
	timeout := fs.Duration("timeout", 30*time.Second, "give up after this long")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	// The protocol splits a request on spaces, so a topic with one would
	// silently name another topic; whitespace at the end is trimmed away.
	if *topic == "" || strings.ContainsRune(*topic, ' ') || strings.TrimRightFunc(*topic, unicode.IsSpace) != *topic {
		fmt.Fprintf(stderr, "invalid topic %q: empty, or contains a space, or ends in whitespace\n", *topic)
		return 2
	}
	if err := session(*addr, *topic, *count, *timeout, stdout); err != nil {
		fmt.Fprintln(stderr, err)
		return 1
	}
	return 0
}

// session runs the whole exchange on one connection. A connection is
// strictly sequential: one request, one reply, then the next request.
func session(addr, topic string, count int, timeout time.Duration, stdout io.Writer) error {
	conn, err := net.DialTimeout("tcp", addr, timeout)
	if err != nil {
		return err
	}
	defer func() { _ = conn.Close() }() // nothing is pending at this point
	if err := conn.SetDeadline(time.Now().Add(timeout)); err != nil {
		return err
	}

	// call sends one request, prints it with its reply, and checks that the
	// reply starts with one of the expected prefixes.
	call := func(req string, want ...string) (string, error) {
		if err := writeFrame(conn, req); err != nil {
			return "", fmt.Errorf("%s: %w", req, err)
		}
		reply, err := readFrame(conn)
		if err != nil {
			return "", fmt.Errorf("%s: %w", req, err)
		}
		fmt.Fprintf(stdout, "%s -> %s\n", req, reply)
		for _, w := range want {
			if strings.HasPrefix(reply, w) {
				return reply, nil
			}
		}
		return "", fmt.Errorf("%s: unexpected reply %q", req, reply)
	}

	if _, err := call("REGISTER "+topic, "OK"); err != nil {
		return err
	}
	for i := range count {
		if _, err := call(fmt.Sprintf("PUT %s tcp message %d", topic, i), "OK"); err != nil {
			return err
		}
	}
	// GET is destructive: each entry goes to exactly one GET, over TCP or
	// NATS, whichever node serves it. The reply is "OK <payload>" or EMPTY.
	for {
		reply, err := call("GET "+topic, "OK", "EMPTY")
		if err != nil {
			return err
		}
		if reply == "EMPTY" {
			break
		}
	}
	// STATE answers raw JSON, without an "OK " prefix.
	_, err = call("STATE "+topic, "{")
	return err
}

// writeFrame sends body as one frame: the length, then the text.
func writeFrame(w io.Writer, body string) error {
	frame := binary.LittleEndian.AppendUint32(nil, uint32(len(body)))
	_, err := w.Write(append(frame, body...))
	return err
}

// readFrame reads one frame and returns its text.
func readFrame(r io.Reader) (string, error) {
	var hdr [4]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		return "", err
	}
	n := binary.LittleEndian.Uint32(hdr[:])
	if n > maxReply {
		return "", errors.New("reply too large")
	}
	body := make([]byte, n)
	if _, err := io.ReadFull(r, body); err != nil {
		return "", err
	}
	return string(body), nil
}
