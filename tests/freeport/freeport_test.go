package freeport

import (
	"net"
	"strconv"
	"testing"
)

func TestGetDistinctOutsideEphemeralAndBindable(t *testing.T) {
	lo, hi := ephemeralRange()
	seen := map[int]bool{}
	for range 5 {
		for _, p := range Get(t, 4) {
			if p >= lo && p <= hi {
				t.Fatalf("port %d inside the ephemeral range %d-%d", p, lo, hi)
			}
			if seen[p] {
				t.Fatalf("port %d handed out twice", p)
			}
			seen[p] = true
			ln, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(p)))
			if err != nil {
				t.Fatalf("port %d not bindable: %v", p, err)
			}
			_ = ln.Close()
		}
	}
}

func TestGetSkipsBoundPort(t *testing.T) {
	p := Get(t, 1)[0]
	mu.Lock()
	delete(issued, p) // pretend it was never handed out, but keep it bound
	mu.Unlock()
	ln, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(p)))
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	if free(p) {
		t.Fatalf("free(%d) = true while it is bound", p)
	}
}
