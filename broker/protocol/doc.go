// Package protocol is the codec and client of Walrus's native TCP protocol,
// the text protocol of the original Rust Walrus ("distributed-walrus"),
// kept wire-compatible so that its users' scripts keep working. It imports
// nothing from this repository, so servers, clients, tests and examples
// can all use it.
//
// # Framing
//
// Both directions carry frames: a u32 little-endian length N followed by N
// bytes of UTF-8 text. One request gets exactly one reply; the next request
// is read only after the reply is written (no pipelining).
//
//	 0      1      2      3      4                         4+N
//	+------+------+------+------+---------------------------+
//	|   N (u32, little-endian)  |  body: N bytes of UTF-8   |
//	+------+------+------+------+---------------------------+
//
//	"PUT logs hi" = 0b 00 00 00 50 55 54 20 6c 6f 67 73 20 68 69
//
// A request body has 1..=MaxSize bytes (default 64 KiB = 65536, the
// original's MAX_FRAME_LEN). Replies have no protocol limit; a Client caps
// them at 64 MiB by default to protect itself. See FrameReader for what
// happens at each boundary: N == 0 is answered "ERR invalid frame length"
// and the connection goes on; N > max is answered the same way and the
// connection is closed; EOF before or inside the length is a clean close;
// EOF inside a body is io.ErrUnexpectedEOF.
//
// # Requests
//
//	REGISTER <topic>                   → OK
//	PUT <topic> <payload>              → OK
//	GET <topic>                        → OK <payload> | EMPTY
//	STATE <topic>                      → raw JSON (no "OK " prefix)
//	METRICS                            → raw JSON (no "OK " prefix)
//	FETCH <topic> <segment> <offset>   → OK <next_offset> <payload> | EMPTY   (Walrus)
//	PING                               → OK PONG                               (Walrus)
//
// Any request may instead get "ERR <message>". Parse documents the exact
// parsing rules (trailing whitespace trimmed, split on the first two single
// spaces, case-sensitive verbs, extra tokens ignored, payload verbatim),
// and the Msg constants are the exact error texts. ErrorMessage is the one
// table that maps errors to those texts.
//
// # Differences from the original
//
//   - An empty topic (from a double space, "REGISTER  x") is rejected with
//     "<VERB> requires a topic"; the original created a topic named "".
//     A topic ending in whitespace ("REGISTER t\t x") is rejected too: the
//     original created it, but no GET could name it.
//   - An oversize frame (N > max) is answered "ERR invalid frame length" and
//     the connection is closed. The original answered and kept reading
//     without draining the body, so the body's first four bytes were taken
//     as the next length: the stream was desynchronised.
//   - FETCH (non-destructive read by position; the original's own test
//     scripts sent it but no server ever implemented it) and PING are new
//     verbs. Old verbs keep their meaning.
//   - The Client keeps one persistent connection and reconnects when the
//     server closed it; the original CLI opened a connection per command.
//
// Payloads of PUT are text: valid UTF-8, trailing whitespace trimmed by the
// server, at most 65536 - len("PUT ") - len(topic) - 1 bytes with the
// default limit.
package protocol
