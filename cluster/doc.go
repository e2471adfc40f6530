// Package cluster holds the cluster metadata and membership of Walrus: a
// hashicorp/raft node (raft-wal log and stable store, file snapshots), the
// metadata state machine (nodes, topics, segments and their epochs, cursors,
// consumer groups) and the join protocol. It knows nothing about NATS,
// storage or the client protocol: the broker composes them.
//
// # A node
//
//	New(cfg)  validate and allocate; no goroutines, files or ports
//	Start     stores → listener → raft → bootstrap, join or restart
//	Shutdown  observer, raft (closes the transport) → stream layer →
//	          goroutines → raft-wal store
//
// Start with no Raft state and no Config.Join bootstraps a one-node cluster;
// with Join it joins through those addresses; with Raft state it restarts
// from it and never bootstraps or joins. In every case it returns once the
// node is a voter with a known leader, its own record (Config.Self) is in
// the metadata, and its FSM has applied the leader's commit index of that
// moment. Metadata changes go through Propose on the leader; followers
// answer *NotLeaderError (ErrNotLeader) and the broker forwards.
//
// # Ports
//
// Raft and the join protocol share one TCP listener. The first byte of a
// connection says what it carries:
//
//	'R' (0x52)  a hashicorp/raft NetworkTransport connection (Dial writes it)
//	'J' (0x4A)  one join request and its response
//	other       closed
//
// Each accepted connection is read in its own goroutine with a 5s deadline
// for its first byte, so silent peers do not hold up the others. A joining
// node closes 'R' connections until the leader has accepted its identity.
//
// # Join protocol
//
// One request and one response, each a little-endian u32 length and that
// many bytes of JSON (at most 64 KiB), with 5s read and write deadlines
// (the joiner waits up to 35s for the response: the leader's AddVoter
// commits only once the new voter has caught up):
//
//	+--------+------------------+
//	| len u32| JSON (len bytes) |
//	+--------+------------------+
//
//	request   {"node": NodeInfo, "dry_run": bool, "rejoin": bool}
//	response  {"status": "ok"|"redirect"|"error", "leader": "<raft addr>",
//	           "message": "...", "code": "...", "members": [NodeInfo...],
//	           "index": <leader commit index>}
//
// The leader answers "ok" after recording the node (UpsertNode) and adding
// it as a voter, with the members and its commit index; a follower that
// knows the leader answers "redirect"; otherwise "error" with code
// "no_leader". The codes "node_replaced" (the id is recorded with another
// data-directory UUID: ErrNodeReplaced) and "not_member" need an operator
// and are not retried; "invalid" is a malformed request; "failed" is
// retried.
//
// A new node joins in two steps: a dry run (the leader checks the UUID and
// changes nothing), then, with its Raft port opened, the join proper. A
// node refused as replaced therefore never takes part in Raft. The joiner
// tries each Join address, follows at most 4 redirects, backs off from
// 200ms to 2s, and gives up after JoinTimeout naming the last failure.
//
// A node restarting as a follower sends its record to the leader with
// "rejoin": the leader updates the record (and the node's address in the
// configuration) if it changed, but never adds a node that is not in the
// configuration (one that was removed). This is how a restarted node makes
// sure Self is recorded without forwarding a proposal.
//
// # Lock order
//
// Node.mu, peerHealthTracker.mu, raftFSM.mu, fsm.mu and streamLayer.mu are
// leaves: none is held while another is taken, while calling Raft, while
// waiting on a channel or while doing I/O.
//
// Every goroutine is started through Node.goFunc or streamLayer.goFunc and
// waited for by Shutdown, except those hashicorp/raft starts and stops
// itself.
package cluster
