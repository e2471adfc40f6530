// Package bridge is everything NATS in a Walrus node: the embedded
// nats-server, which joins the other nodes' servers in one NATS cluster
// through routes, and the internal request/reply RPC that forwards appends,
// reads, metadata proposals and heartbeats from node to node; and the public
// subject API (API, started with StartAPI) through which any NATS client
// produces to and consumes from topics — documented for users in
// docs/nats.md. The broker implements Backend for it and tells it, with
// SetLeading, which topics' publish and capture subjects this node serves.
//
// The package imports nothing else from this repository. The broker
// implements Handler and calls the client methods (Append, Read, Propose,
// Heartbeat) with the target node's id.
//
// # Lifecycle
//
//	b, err := bridge.New(cfg)   // validate, allocate: no goroutines, ports or files
//	b.SetHandler(h)             // any time; until then requests are answered Unavailable
//	err = b.Start(ctx)          // server up, in-process conn, RPC subscription
//	b.SetRoutes(urls)           // after a join: replace the route seeds
//	err = b.Shutdown(ctx)       // idempotent; see its doc for the steps
//
// The server runs with NoSigs and logs into the injected slog logger with
// component=nats; a fatal server error (a port that cannot be bound) fails
// Start instead of exiting the process. It listens for clients on
// Host:ClientPort (a clustered server never becomes ready without a client
// listener) and for routes on Host:ClusterPort. All nodes use one cluster
// name; one reachable seed is enough, route gossip completes the full mesh
// (NATS routes forward one hop only, so the mesh must be full).
//
// With Config.Leafnodes the server also connects to an upstream NATS system
// as a leafnode: one remote holding every URL (the server fails over
// between them), with Config.LeafnodeCredentials if set. Each node of a
// cluster connects on its own. The remote denies _WALRUS.> both ways
// (DenyExports and DenyImports), so the internal RPC never crosses to the
// upstream and the upstream cannot reach it; everything else, the public
// subjects included, is shared.
//
// # Subjects
//
//	_WALRUS.rpc.<node id>   requests to node <node id>, queue group "walrus-rpc"
//	_WALRUS.interest        "do you route these subjects yet?" (every node's API answers
//	                        "ok" once its server does; see api_interest.go)
//	_WALRUS.pub.<id>.<topic> publishes forwarded to node <id>, the topic's new leader, by
//	                        its previous leader during the handoff (api_produce.go)
//	_INBOX.>                replies (nats.go's request multiplexer)
//
// # Wire encoding
//
// Every message starts with a version byte (1) and an op byte (1 append,
// 2 read, 3 propose, 4 heartbeat). Integers are little-endian; u64/i64 are
// 8 bytes, u32 4. A string or byte string is a u32 length and the bytes; a
// count is a u32. A decoder rejects trailing bytes, counts that the
// remaining bytes cannot hold and booleans other than 0 and 1, so every
// message has exactly one encoding (the fuzz tests check this).
//
//	request  = version u8 | op u8 | id_len u8 | id [id_len] | body
//	response = version u8 | op u8 | code u8 | (code == 0 ? body : message string)
//
//	op         request body                               response body
//	append     topic string | segment u64 | epoch u64 |   first_index u64 | first_offset u64
//	           n u32 | record * n
//	read       topic string | segment u64 | index u64 |   count u64 | sealed u8 | n u32 | entry * n
//	           max_entries i64 | max_bytes i64
//	propose    command bytes                              index u64 | result bytes
//	heartbeat  node_id u64 | applied_index u64 |          leader_id u64 | term u64 |
//	           sent_unix_nano i64 | leaving u8            last_index u64 | peer_failing u8
//
//	record     timestamp i64 | n u32 | (key string | value string) * n | value bytes
//	entry      segment u64 | index u64 | offset u64 | record
//
// Codes: 0 OK, 1 Unavailable, 2 NotLeader, 3 EpochMismatch, 4 Sealed,
// 5 UnknownTopic, 6 OutOfRange, 7 Corrupt, 8 Internal, 9 BadRequest,
// 10 TooLarge. A caller sees a non-OK code as a *RemoteError that matches
// the code's sentinel with errors.Is (ErrNotLeader, ...). A handler picks
// the code by returning a *RemoteError (see Errorf) or an error wrapping a
// sentinel; any other error becomes Internal with its message.
//
// Requests and responses must fit Config.MaxPayload (the server's max
// payload, 8 MiB by default): a larger request fails with ErrTooLarge before
// it is sent, a larger response is replaced by a TooLarge error. A read's
// MaxBytes is capped to MaxPayload minus 64 KiB before the handler sees it.
//
// # Retries and deduplication
//
// A call makes attempts of at most Config.RequestTimeout each until one
// succeeds, fails with a non-retryable error, or ctx is done. Retried,
// with a backoff of 20ms doubling to 500ms (minus up to 25% jitter):
//
//   - ErrUnreachable: NATS answered "no responders". Nothing ran. The node
//     is down or restarting, or its subscription has not reached this node
//     yet (route interest propagates asynchronously: about 20ms after a
//     node's Start on loopback here).
//   - ErrTimeout: no reply within the attempt's timeout. The request may
//     have run. Right after a peer stops, a request can still be routed to
//     it and time out this way.
//   - CodeUnavailable: the node refused before running (no handler yet,
//     MaxConcurrent handler calls already running, shutting down) or the
//     handler said nothing was applied.
//
// When ctx ends the error wraps both ctx.Err() and the last attempt's
// error, e.g. errors.Is(err, context.DeadlineExceeded) and
// errors.Is(err, ErrUnreachable). Callers must bound ctx.
//
// Append and Propose are not idempotent, so each call carries a request id
// (16 random bytes, the same on every attempt). The receiver remembers ids
// with their encoded responses in arrival order, for at most
// Config.DedupWindow (2 minutes) and at most Config.DedupEntries ids (65536),
// whichever is reached first. A copy whose id is remembered is answered
// from memory; a copy that arrives while the first still runs waits for the
// first's response (its reply subject is queued on the entry), so the
// handler runs once per id. Unavailable outcomes are not remembered, so a
// retry runs again. A caller stops retrying an id after half the window,
// so that no retry arrives after its id was forgotten. The memory is per
// process: a node that restarts forgets it, so a retry that spans the
// restart can run twice (the broker's epochs and compare-and-set proposals
// are the guard there).
//
// # Goroutines
//
// The in-process connection's subscription callback decodes a request,
// answers duplicates and hands the rest to a handler goroutine (goFunc)
// without blocking; at most Config.MaxConcurrent run at once (a semaphore
// acquired without waiting, else Unavailable). goFunc refuses once
// Shutdown has begun and adds to a WaitGroup that Shutdown waits on; the
// handler's ctx is cancelled by Shutdown. The NATS server's and the
// connection's goroutines are stopped by Shutdown too.
//
// # Lock order
//
//	Bridge.lifeMu  (Start, Shutdown, SetRoutes; held throughout each)
//	  → Bridge.mu  (state, server, connection, URLs; held briefly)
//	  → dedup.mu   (request ids)
//
// No lock is held while calling a Handler or publishing a message; lifeMu
// is held while calling nats-server's Start, ReloadOptions and Shutdown.
package bridge
