package main

import (
	"context"
	"net"
	"testing"
	"time"
)

// waitTCP waits until addr accepts connections.
func waitTCP(t *testing.T, ctx context.Context, addr string) {
	t.Helper()
	for {
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err == nil {
			_ = c.Close()
			return
		}
		select {
		case <-ctx.Done():
			t.Fatalf("%s never accepted a connection: %v", addr, err)
		case <-time.After(50 * time.Millisecond):
		}
	}
}
