// Command tail prints every entry appended to a Walrus topic from the moment
// it subscribes: a plain NATS subscription to <prefix>.tail.<topic>.
//
//	go run ./examples/tail --url nats://127.0.0.1:4222 --topic orders
//
// Tail is live and at-most-once: entries appended before the subscription,
// or while the subscriber is slow or a node restarts, are not delivered (use
// walrus.fetch, see examples/consumer, to read from an offset). It prints
// "subscribed" once the server has the subscription, then one line per
// entry:
//
//	offset=0 segment=1 data="message 0"
//
// It uses only nats.go and the standard library: no Walrus package.
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

	"github.com/nats-io/nats.go"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("tail", flag.ContinueOnError)
	fs.SetOutput(stderr)
	url := fs.String("url", "nats://127.0.0.1:4222", "NATS URL of any Walrus node")
	topic := fs.String("topic", "orders", "topic to follow (a NATS wildcard such as '>' follows several)")
	prefix := fs.String("prefix", "walrus", "subject prefix (the nodes' --nats-prefix)")
	count := fs.Int("count", 0, "exit after this many entries (0: run until interrupted)")
	timeout := fs.Duration("timeout", 0, "give up after this long (0: no limit)")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if *timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, *timeout)
		defer cancel()
	}

	nc, err := nats.Connect(*url, nats.Name("walrus-example-tail"))
	if err != nil {
		fmt.Fprintf(stderr, "connect %s: %v\n", *url, err)
		return 1
	}
	defer nc.Close()

	sub, err := nc.SubscribeSync(*prefix + ".tail." + *topic)
	if err != nil {
		fmt.Fprintf(stderr, "subscribe: %v\n", err)
		return 1
	}
	// Flush waits for the server's reply to a PING sent after the SUB, so
	// the subscription is in place when it returns.
	if err := nc.FlushTimeout(10 * time.Second); err != nil {
		fmt.Fprintf(stderr, "flush: %v\n", err)
		return 1
	}
	fmt.Fprintln(stdout, "subscribed")

	for n := 0; *count == 0 || n < *count; n++ {
		msg, err := sub.NextMsgWithContext(ctx)
		if err != nil {
			if errors.Is(err, context.Canceled) || (*count == 0 && errors.Is(err, context.DeadlineExceeded)) {
				return 0 // interrupted, or the --timeout of an open-ended run
			}
			fmt.Fprintf(stderr, "after %d entries: %v\n", n, err)
			return 1
		}
		// The position and the topic come as headers; the stored headers
		// (Nats-Msg-Id, …) are there too.
		fmt.Fprintf(stdout, "offset=%s segment=%s data=%q\n",
			msg.Header.Get("Walrus-Offset"), msg.Header.Get("Walrus-Segment"), msg.Data)
	}
	return 0
}
