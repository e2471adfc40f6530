//go:build linux || darwin || freebsd

package protocol

import (
	"errors"
	"net"
	"syscall"
)

// peerClosed reports, without blocking, whether an idle connection can no
// longer carry a request: the peer closed or reset it, or sent bytes nobody
// asked for (the stream is out of step). It peeks at the socket
// (MSG_PEEK|MSG_DONTWAIT), so it consumes nothing. Connections without a
// socket (net.Pipe) are assumed alive.
func peerClosed(conn net.Conn) bool {
	sc, ok := conn.(syscall.Conn)
	if !ok {
		return false
	}
	raw, err := sc.SyscallConn()
	if err != nil {
		return true
	}
	closed := false
	var buf [1]byte
	err = raw.Read(func(fd uintptr) bool {
		_, _, rerr := syscall.Recvfrom(int(fd), buf[:], syscall.MSG_PEEK|syscall.MSG_DONTWAIT)
		switch {
		case errors.Is(rerr, syscall.EAGAIN), errors.Is(rerr, syscall.EWOULDBLOCK), errors.Is(rerr, syscall.EINTR):
			closed = false // idle and open
		case rerr != nil:
			closed = true // reset or other socket error
		default:
			closed = true // 0 bytes: orderly close; more: unsolicited bytes
		}
		return true
	})
	return err != nil || closed
}
