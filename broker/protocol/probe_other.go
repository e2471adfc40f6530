//go:build !(linux || darwin || freebsd)

package protocol

import "net"

// peerClosed cannot peek without blocking on this platform; a closed
// connection is detected by the call that uses it.
func peerClosed(net.Conn) bool { return false }
