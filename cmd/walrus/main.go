// Command walrus runs a Walrus node and its tools.
package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

const usage = `usage: walrus [run] [flags]      run a node (the default: the original's flags work as is)
       walrus <command> [flags]

commands:
  run              run a node (walrus run --help lists the flags)
  version          print the version
  config check     validate a node's configuration and print it (walrus config check --help)
  bench storage    measure the storage engine (see docs/benchmarks.md)
`

// run dispatches a subcommand and returns the process exit code:
// 0 success, 1 failure, 2 usage error.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 || len(args[0]) > 0 && args[0][0] == '-' && args[0] != "-h" && args[0] != "--help" {
		return runNode(ctx, args, stderr)
	}
	switch args[0] {
	case "run":
		return runNode(ctx, args[1:], stderr)
	case "version":
		fmt.Fprintln(stdout, "walrus", version)
		return 0
	case "bench":
		return runBench(ctx, args[1:], stdout, stderr)
	case "config":
		return runConfig(args[1:], os.Environ(), stdout, stderr)
	case "help", "-h", "--help":
		fmt.Fprint(stdout, usage)
		return 0
	}
	fmt.Fprintf(stderr, "walrus: unknown command %q\n%s", args[0], usage)
	return 2
}
