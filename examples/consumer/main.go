// Command consumer reads a Walrus topic over NATS as a member of a consumer
// group: it fetches a batch from the group's committed offset, prints each
// entry, then commits the offset after the batch (at-least-once: a crash
// between the print and the commit prints the batch again on restart).
//
//	go run ./examples/consumer --url nats://127.0.0.1:4222 --topic orders --group billing
//
// A group is a durable position kept by the cluster: stop the consumer and
// start it again, on any node, and it continues where the group left off.
// Each entry is printed as one line, the payload quoted:
//
//	offset=0 segment=1 data="message 0"
//
// It uses only nats.go and the standard library: no Walrus package.
package main

import (
	"context"
	"encoding/json"
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

// fetchRequest is the JSON body of a walrus.fetch request.
type fetchRequest struct {
	Group  string `json:"group"`
	Max    int    `json:"max"`
	WaitMS int    `json:"wait_ms"`
}

// fetchReply is the reply to a walrus.fetch request.
type fetchReply struct {
	Topic   string `json:"topic"`
	Group   string `json:"group"`
	Entries []struct {
		Offset    uint64              `json:"offset"`
		Segment   uint64              `json:"segment"`
		Timestamp time.Time           `json:"timestamp"`
		Headers   map[string][]string `json:"headers"`
		Data      []byte              `json:"data"` // base64 in the JSON; encoding/json decodes it
	} `json:"entries"`
	NextOffset uint64 `json:"next_offset"`
}

// commitRequest is the JSON body of a walrus.commit request; the reply has
// the same fields plus the topic, with the group's offset as it now is.
type commitRequest struct {
	Group  string `json:"group"`
	Offset uint64 `json:"offset"`
}

// walrusError is the body of a failed request (header Walrus-Error).
type walrusError struct {
	Code    string `json:"code"`
	Message string `json:"message"`
}

func (e *walrusError) Error() string { return e.Code + ": " + e.Message }

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("consumer", flag.ContinueOnError)
	fs.SetOutput(stderr)
	url := fs.String("url", "nats://127.0.0.1:4222", "NATS URL of any Walrus node")
	topic := fs.String("topic", "orders", "topic to consume")
	group := fs.String("group", "example", "consumer group")
	prefix := fs.String("prefix", "walrus", "subject prefix (the nodes' --nats-prefix)")
	maxEntries := fs.Int("max", 100, "most entries per fetch (1-1000)")
	waitMS := fs.Int("wait-ms", 5000, "how long a fetch waits for new entries, in milliseconds (0-60000)")
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

	nc, err := nats.Connect(*url, nats.Name("walrus-example-consumer"))
	if err != nil {
		fmt.Fprintf(stderr, "connect %s: %v\n", *url, err)
		return 1
	}
	defer nc.Close()

	c := &consumer{
		nc:            nc,
		fetchSubject:  *prefix + ".fetch." + *topic,
		commitSubject: *prefix + ".commit." + *topic,
		group:         *group,
		// A long poll must end before the request times out.
		requestTimeout: time.Duration(*waitMS)*time.Millisecond + 5*time.Second,
	}
	seen := 0
	for *count == 0 || seen < *count {
		n := *maxEntries
		if *count > 0 {
			n = min(n, *count-seen) // never fetch, print and commit more than asked for
		}
		batch, err := c.fetch(ctx, fetchRequest{Group: *group, Max: n, WaitMS: *waitMS})
		if err != nil {
			if ctx.Err() != nil && (*count == 0 || errors.Is(ctx.Err(), context.Canceled)) {
				return 0 // interrupted, or the --timeout of an open-ended run
			}
			if retryable(err) {
				fmt.Fprintf(stderr, "fetch: %v; retrying\n", err)
				if sleep(ctx, time.Second) == nil {
					continue
				}
			}
			fmt.Fprintf(stderr, "fetch after %d entries: %v\n", seen, err)
			return 1
		}
		for _, e := range batch.Entries {
			fmt.Fprintf(stdout, "offset=%d segment=%d data=%q\n", e.Offset, e.Segment, e.Data)
		}
		seen += len(batch.Entries)
		if len(batch.Entries) == 0 {
			continue // the long poll ended with nothing new
		}
		// The batch is processed: move the group past it. Commit next_offset,
		// not the last offset + 1: offsets may skip a range after a failover.
		committed, err := c.commit(ctx, batch.NextOffset)
		for attempt := 1; err != nil && retryable(err) && attempt < 5; attempt++ {
			fmt.Fprintf(stderr, "commit offset %d: %v; retrying\n", batch.NextOffset, err)
			if sleep(ctx, time.Second) != nil {
				break
			}
			committed, err = c.commit(ctx, batch.NextOffset)
		}
		if err != nil {
			fmt.Fprintf(stderr, "commit offset %d: %v\n", batch.NextOffset, err)
			return 1
		}
		fmt.Fprintf(stdout, "committed group=%s offset=%d\n", *group, committed)
	}
	return 0
}

// consumer fetches and commits for one group of one topic.
type consumer struct {
	nc             *nats.Conn
	fetchSubject   string
	commitSubject  string
	group          string
	requestTimeout time.Duration
}

func (c *consumer) fetch(ctx context.Context, req fetchRequest) (fetchReply, error) {
	var reply fetchReply
	err := c.request(ctx, c.fetchSubject, req, &reply)
	return reply, err
}

// commit moves the group to offset and returns the group's offset as it now
// is: a commit never moves a group backwards.
func (c *consumer) commit(ctx context.Context, offset uint64) (uint64, error) {
	var reply commitRequest
	err := c.request(ctx, c.commitSubject, commitRequest{Group: c.group, Offset: offset}, &reply)
	return reply.Offset, err
}

// request sends body as JSON to subject and decodes the reply into out, or
// returns the *walrusError the reply carries.
func (c *consumer) request(ctx context.Context, subject string, body, out any) error {
	data, err := json.Marshal(body)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, c.requestTimeout)
	defer cancel()
	reply, err := c.nc.RequestWithContext(ctx, subject, data)
	if err != nil {
		return err
	}
	if code := reply.Header.Get("Walrus-Error"); code != "" {
		var e struct {
			Error walrusError `json:"error"`
		}
		if json.Unmarshal(reply.Data, &e) != nil || e.Error.Code == "" {
			e.Error = walrusError{Code: code, Message: string(reply.Data)}
		}
		return &e.Error
	}
	if err := json.Unmarshal(reply.Data, out); err != nil {
		return fmt.Errorf("bad reply %q: %w", reply.Data, err)
	}
	return nil
}

// retryable reports whether a failed fetch may succeed later: the node is
// starting or the data's node is down, the request timed out, or the topic
// is not registered yet (a consumer may start before its producer).
func retryable(err error) bool {
	var werr *walrusError
	if errors.As(err, &werr) {
		return werr.Code == "unavailable" || werr.Code == "unknown_topic"
	}
	return errors.Is(err, nats.ErrTimeout) || errors.Is(err, context.DeadlineExceeded) ||
		errors.Is(err, nats.ErrNoResponders)
}

// sleep waits for d or until ctx is done, whichever comes first.
func sleep(ctx context.Context, d time.Duration) error {
	select {
	case <-time.After(d):
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}
