package main

import (
	"context"
	"fmt"
	"strconv"
	"strings"

	"github.com/walrus-edge/walrus/broker/protocol"
)

// buildCommand turns a subcommand and its arguments into a protocol
// command, or returns a usage message.
func buildCommand(name string, args []string) (protocol.Command, string) {
	need := func(n int, form string) string {
		if len(args) != n {
			return "usage: walrus-cli " + form
		}
		return ""
	}
	switch name {
	case "register", "get", "state":
		verb := map[string]protocol.Verb{"register": protocol.VerbRegister, "get": protocol.VerbGet, "state": protocol.VerbState}[name]
		if msg := need(1, name+" <topic>"); msg != "" {
			return protocol.Command{}, msg
		}
		return protocol.Command{Verb: verb, Topic: args[0]}, ""
	case "put":
		if len(args) < 2 {
			return protocol.Command{}, "usage: walrus-cli put <topic> <data...>"
		}
		return protocol.Command{Verb: protocol.VerbPut, Topic: args[0], Payload: []byte(strings.Join(args[1:], " "))}, ""
	case "fetch":
		if msg := need(3, "fetch <topic> <segment> <offset>"); msg != "" {
			return protocol.Command{}, msg
		}
		seg, err1 := strconv.ParseUint(args[1], 10, 64)
		off, err2 := strconv.ParseUint(args[2], 10, 64)
		if err1 != nil || err2 != nil {
			return protocol.Command{}, "fetch: segment and offset must be unsigned integers"
		}
		return protocol.Command{Verb: protocol.VerbFetch, Topic: args[0], Segment: seg, Offset: off}, ""
	case "metrics", "ping":
		if msg := need(0, name); msg != "" {
			return protocol.Command{}, msg
		}
		verb := protocol.VerbMetrics
		if name == "ping" {
			verb = protocol.VerbPing
		}
		return protocol.Command{Verb: verb}, ""
	}
	return protocol.Command{}, fmt.Sprintf("unknown command %q", name)
}

// runOneShot sends one command on a fresh connection and prints the result
// the way the original walrus-cli did.
func runOneShot(ctx context.Context, cfg config, name string, args []string) int {
	cmd, msg := buildCommand(name, args)
	if msg != "" {
		return usageError(cfg.stderr, msg)
	}
	if err := cmd.Validate(); err != nil {
		return usageError(cfg.stderr, err.Error())
	}
	ctx, cancel := cfg.withTimeout(ctx)
	defer cancel()
	client, err := protocol.Dial(ctx, cfg.addr, protocol.WithReconnect(false))
	if err != nil {
		fmt.Fprintf(cfg.stderr, "walrus-cli: %v\n", err)
		return exitFail
	}
	defer func() { _ = client.Close() }()
	reply, err := client.Call(ctx, cmd)
	if err != nil {
		fmt.Fprintf(cfg.stderr, "walrus-cli: %v\n", err)
		return exitFail
	}
	return printReply(cfg, cmd.Verb, reply)
}

// printReply prints a one-shot reply and returns the exit code:
//
//	register, put    OK                     → "OK"
//	get              OK <payload> | EMPTY   → "<payload>" | "EMPTY"
//	fetch            OK <next> <p> | EMPTY  → "<next> <p>" | "EMPTY"
//	ping             OK PONG                → "PONG"
//	state, metrics   JSON (or OK <JSON>)    → the JSON
//	any              ERR <msg>              → "ERR <msg>" on stderr, exit 1
func printReply(cfg config, verb protocol.Verb, r protocol.Reply) int {
	if r.Kind == protocol.ReplyErr {
		fmt.Fprintln(cfg.stderr, r.String())
		return exitFail
	}
	ok := false
	switch verb {
	case protocol.VerbRegister, protocol.VerbPut:
		ok = r.Kind == protocol.ReplyOK
	case protocol.VerbGet, protocol.VerbFetch:
		ok = r.Kind == protocol.ReplyOKPayload || r.Kind == protocol.ReplyEmpty
		if ok && verb == protocol.VerbFetch && r.Kind == protocol.ReplyOKPayload {
			_, _, err := protocol.ParseFetchPayload(r.Payload)
			ok = err == nil
		}
	case protocol.VerbPing:
		ok = r.Kind == protocol.ReplyOKPayload
	case protocol.VerbState, protocol.VerbMetrics:
		ok = r.Kind == protocol.ReplyRaw || r.Kind == protocol.ReplyOKPayload
	}
	if !ok {
		err := fmt.Errorf("%w to %s: %q", protocol.ErrUnexpectedReply, verb, r.String())
		fmt.Fprintf(cfg.stderr, "walrus-cli: %v\n", err)
		return exitFail
	}
	switch r.Kind {
	case protocol.ReplyOKPayload, protocol.ReplyRaw:
		fmt.Fprintf(cfg.stdout, "%s\n", r.Payload)
	default:
		fmt.Fprintln(cfg.stdout, r.String())
	}
	return exitOK
}
