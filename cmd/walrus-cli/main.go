// Command walrus-cli talks to a Walrus node over the native TCP protocol:
// one-shot subcommands for scripts and an interactive shell (REPL). Its
// flags, subcommands and output follow the original walrus-cli so that
// existing scripts keep working; see usage below and docs/protocol.md.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
	"time"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Stdin, os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

const (
	// defaultAddr is the original walrus-cli's default (its docs said 8080,
	// its code 9091).
	defaultAddr    = "127.0.0.1:9091"
	defaultTimeout = 10 * time.Second
	// envAddr names the environment variable used when --addr is not given.
	envAddr = "WALRUS_ADDR"
)

// Exit codes.
const (
	exitOK    = 0
	exitFail  = 1 // ERR reply, connection or I/O failure
	exitUsage = 2
)

const usage = `usage: walrus-cli [--addr host:port] [--timeout d] [command]

commands:
  repl                              interactive shell (the default)
  register <topic>                  create a topic (idempotent)
  put <topic> <data...>             append the arguments, joined by single spaces
  get <topic>                       consume the next entry; prints it, or EMPTY
  fetch <topic> <segment> <offset>  read by position; prints "<next_offset> <payload>", or EMPTY
  state <topic>                     print the topic's metadata JSON
  metrics                           print the node's metrics JSON
  ping                              check that the node answers

An ERR reply is printed to stderr and exits 1; usage errors exit 2.
The address defaults to $WALRUS_ADDR, then 127.0.0.1:9091.

flags:
`

// config is what the flags select.
type config struct {
	addr    string
	timeout time.Duration // per command; 0 = none
	stdout  io.Writer
	stderr  io.Writer
}

// run parses args and runs one command, returning the exit code.
func run(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	addr := defaultAddr
	if v := os.Getenv(envAddr); v != "" {
		addr = v
	}
	fs := flag.NewFlagSet("walrus-cli", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.StringVar(&addr, "addr", addr, "`address` (host:port) of the node's client listener")
	timeout := fs.Duration("timeout", defaultTimeout, "time limit for each command, 0 for none")
	fs.Usage = func() {
		fmt.Fprint(fs.Output(), usage)
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return exitOK
		}
		return exitUsage
	}
	if addr == "" || *timeout < 0 {
		fmt.Fprintln(stderr, "walrus-cli: --addr must not be empty and --timeout must not be negative")
		return exitUsage
	}
	cfg := config{addr: addr, timeout: *timeout, stdout: stdout, stderr: stderr}

	rest := fs.Args()
	if len(rest) == 0 || rest[0] == "repl" {
		if len(rest) > 1 {
			return usageError(stderr, "repl takes no arguments")
		}
		return runREPL(ctx, cfg, stdin)
	}
	if rest[0] == "help" {
		fs.SetOutput(stdout)
		fs.Usage()
		return exitOK
	}
	return runOneShot(ctx, cfg, rest[0], rest[1:])
}

// usageError prints msg and a pointer to the usage text, returning exitUsage.
func usageError(stderr io.Writer, msg string) int {
	fmt.Fprintf(stderr, "walrus-cli: %s (see walrus-cli help)\n", msg)
	return exitUsage
}

// withTimeout bounds ctx by the configured per-command timeout.
func (c config) withTimeout(ctx context.Context) (context.Context, context.CancelFunc) {
	if c.timeout <= 0 {
		return context.WithCancel(ctx)
	}
	return context.WithTimeout(ctx, c.timeout)
}
