// Package freeport hands out loopback TCP ports for tests that must tell a
// server its port before the server binds it (a walrus process given
// --client-port, --raft-port and the NATS ports on its command line).
//
// The usual trick, binding port 0 and closing the listener, returns a port
// from the kernel's ephemeral range, the same range the kernel draws from
// for the local end of every outgoing connection. Between the test closing
// its listener and the server binding the number, any connection on the
// machine (a Raft dial, a NATS route, another package's test) may take it,
// and the server fails with "address already in use". Ports handed out here
// come from outside net.ipv4.ip_local_port_range, which the kernel never
// assigns on its own, so only another explicit bind can race for them; each
// is checked free by binding it, and no port is handed out twice by one
// process.
package freeport

import (
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"
)

// lowest is the smallest port considered: well clear of the registered
// services below it.
const lowest = 10000

var (
	mu     sync.Mutex
	issued = map[int]bool{}
)

// Get returns n distinct loopback ports that are free now and outside the
// ephemeral range. It fails the test if it cannot find them.
func Get(t testing.TB, n int) []int {
	t.Helper()
	ports, err := get(n)
	if err != nil {
		t.Fatalf("freeport: %v", err)
	}
	return ports
}

func get(n int) ([]int, error) {
	lo, hi := ephemeralRange()
	var candidates []int // the ports outside [lo, hi]
	for p := lowest; p < lo; p++ {
		candidates = append(candidates, p)
	}
	for p := hi + 1; p <= 65535; p++ {
		candidates = append(candidates, p)
	}
	if len(candidates) == 0 {
		return nil, fmt.Errorf("no ports outside the ephemeral range %d-%d", lo, hi)
	}
	mu.Lock()
	defer mu.Unlock()
	out := make([]int, 0, n)
	start := rand.IntN(len(candidates)) // processes running at once start apart
	for i := 0; i < len(candidates) && len(out) < n; i++ {
		p := candidates[(start+i)%len(candidates)]
		if issued[p] || !free(p) {
			continue
		}
		issued[p] = true
		out = append(out, p)
	}
	if len(out) < n {
		return nil, fmt.Errorf("found %d of %d free ports", len(out), n)
	}
	return out, nil
}

// free reports whether port p can be bound on loopback now.
func free(p int) bool {
	ln, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(p)))
	if err != nil {
		return false
	}
	_ = ln.Close()
	return true
}

// ephemeralRange reads the kernel's ephemeral port range, falling back to
// the widest common default (the IANA range starts at 49152, Linux's at
// 32768) when it cannot be read.
func ephemeralRange() (lo, hi int) {
	b, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range")
	if err == nil {
		f := strings.Fields(string(b))
		if len(f) == 2 {
			l, err1 := strconv.Atoi(f[0])
			h, err2 := strconv.Atoi(f[1])
			if err1 == nil && err2 == nil && l <= h {
				return l, h
			}
		}
	}
	return 32768, 65535
}
