// Package broker is a Walrus node: the composition root that cmd/walrus and
// the tests run, and the controller that ties storage, the Raft metadata
// (cluster) and the NATS bridge together. docs/cluster.md is its design.
//
// # Serving
//
//	native TCP clients ──► tcpServer ──► dispatch ──► Register / Put / Get / Fetch / State / Metrics
//	other nodes ──────────► bridge RPC ──► remote ──► appendLocal / readLocal / proposeAsLeader
//
// Any node accepts any command. Put routes to the leader of the topic's open
// segment (locally or over the bridge) and retries stale routes (rollover,
// failover, leader change) within RequestTimeout. Get is the original's
// destructive read through one cursor per topic, kept in the Raft metadata:
// read the entry at the cursor, then compare-and-set the cursor past it.
//
// # Correctness
//
//   - A segment leader appends with the segment's epoch (storage refuses any
//     other) and acknowledges only while its lease holds: it is the Raft
//     leader or heard from it within LeaseTimeout, checked before and after
//     the durable write.
//   - Rollover seals the segment in storage first (fencing later appends),
//     then proposes Rollover with the storage count and the expected
//     segment and epoch; a stale or duplicate proposal is a no-op.
//   - The Raft leader fails over an open segment whose leader it has not
//     reached for FailoverTimeout (> LeaseTimeout); the old leader reports
//     its count when it returns (FinalizeSeal).
//   - Forwarded appends carry request ids; the receiving bridge answers a
//     retry from memory instead of writing twice.
//
// # Background loops
//
// heartbeatLoop (report to the Raft leader), monitorLoop (rollover at the
// entry or byte limit, finish interrupted rollovers, report failed-over
// segments, keep NATS route seeds current) and failoverLoop (Raft leader
// only). Every goroutine is started through goFunc and stopped by Shutdown.
//
// # Locks
//
// Server.mu guards the small shared maps (rollovers under way, peer reports,
// saved routes) and is never held across I/O or calls into other packages.
package broker
