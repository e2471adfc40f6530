// Command producer appends messages to a Walrus topic over NATS and waits
// for each one's acknowledgement: a reply that comes only after the entry is
// durable and says where it was stored.
//
//	go run ./examples/producer --url nats://127.0.0.1:4222 --topic orders --count 10
//
// It registers the topic (idempotent), then sends --count requests to
// <prefix>.pub.<topic>, each with a Nats-Msg-Id header. A request that times
// out or fails with a retryable error is sent again with the same id, so the
// node stores it once however many times it was sent. Every ack is printed
// as one line:
//
//	ack topic=orders segment=1 offset=0 id=KX3V…-0 duplicate=false
//
// It uses only nats.go and the standard library: no Walrus package.
package main

import (
	"context"
	"crypto/rand"
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

// ack is the reply to a successful walrus.pub request.
type ack struct {
	Topic     string `json:"topic"`
	Segment   uint64 `json:"segment"`
	Offset    uint64 `json:"offset"`
	Duplicate bool   `json:"duplicate"`
}

// walrusError is the body of a failed request; the reply also carries the
// code in the Walrus-Error header.
type walrusError struct {
	Code    string `json:"code"`
	Message string `json:"message"`
}

func (e *walrusError) Error() string { return e.Code + ": " + e.Message }

// retryable reports whether sending the same request again may succeed.
// With the same Nats-Msg-Id, a retry never stores an entry twice (within
// the node's deduplication window).
func (e *walrusError) retryable() bool {
	switch e.Code {
	case "unavailable", "outcome_unknown", "internal":
		return true
	}
	return false // bad_request, unknown_topic, too_large: the same request fails again
}

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("producer", flag.ContinueOnError)
	fs.SetOutput(stderr)
	url := fs.String("url", "nats://127.0.0.1:4222", "NATS URL of any Walrus node")
	topic := fs.String("topic", "orders", "topic to produce to")
	count := fs.Int("count", 10, "number of messages to send")
	prefix := fs.String("prefix", "walrus", "subject prefix (the nodes' --nats-prefix)")
	message := fs.String("message", "message", "payload of message i is \"<message> <i>\"")
	timeout := fs.Duration("timeout", 5*time.Second, "timeout of one request")
	retries := fs.Int("retries", 5, "how many times a failed request is sent again")
	if err := fs.Parse(args); err != nil {
		return 2
	}

	nc, err := nats.Connect(*url, nats.Name("walrus-example-producer"))
	if err != nil {
		fmt.Fprintf(stderr, "connect %s: %v\n", *url, err)
		return 1
	}
	defer nc.Close()

	p := &producer{nc: nc, timeout: *timeout, retries: *retries, log: stderr}

	// A topic must exist before it is produced to. Registering is
	// idempotent, so every producer may do it on start.
	register := nats.NewMsg(*prefix + ".admin.register." + *topic)
	if _, err := p.request(ctx, register); err != nil {
		fmt.Fprintf(stderr, "register %s: %v\n", *topic, err)
		return 1
	}

	// The ids must be unique per message, and stable across retries of that
	// message: a random run id (so that a second run is not taken for a retry
	// of the first) plus the message number.
	runID := rand.Text()
	for i := range *count {
		msg := nats.NewMsg(*prefix + ".pub." + *topic)
		msg.Header.Set("Nats-Msg-Id", fmt.Sprintf("%s-%d", runID, i))
		msg.Data = fmt.Appendf(nil, "%s %d", *message, i)
		reply, err := p.request(ctx, msg)
		if err != nil {
			fmt.Fprintf(stderr, "publish %d: %v\n", i, err)
			return 1
		}
		var a ack
		if err := json.Unmarshal(reply.Data, &a); err != nil {
			fmt.Fprintf(stderr, "publish %d: bad ack %q: %v\n", i, reply.Data, err)
			return 1
		}
		fmt.Fprintf(stdout, "ack topic=%s segment=%d offset=%d id=%s duplicate=%t\n",
			a.Topic, a.Segment, a.Offset, msg.Header.Get("Nats-Msg-Id"), a.Duplicate)
	}
	return 0
}

// producer sends requests and retries the ones that may succeed later.
type producer struct {
	nc      *nats.Conn
	timeout time.Duration
	retries int
	log     io.Writer // where retries are reported
}

// request sends msg and returns a successful reply. Timeouts, "no
// responders" (the node is starting) and retryable Walrus errors are retried
// up to p.retries times with a growing pause; the message, and so its
// Nats-Msg-Id, is the same every time.
func (p *producer) request(ctx context.Context, msg *nats.Msg) (*nats.Msg, error) {
	backoff := 100 * time.Millisecond
	for attempt := 0; ; attempt++ {
		reply, err := p.requestOnce(ctx, msg)
		if err == nil {
			return reply, nil
		}
		var werr *walrusError
		retry := errors.Is(err, nats.ErrTimeout) || errors.Is(err, context.DeadlineExceeded) ||
			errors.Is(err, nats.ErrNoResponders) || (errors.As(err, &werr) && werr.retryable())
		if !retry || attempt >= p.retries || ctx.Err() != nil {
			return nil, err
		}
		fmt.Fprintf(p.log, "%s: %v; retrying in %v\n", msg.Subject, err, backoff)
		select {
		case <-time.After(backoff):
		case <-ctx.Done():
			return nil, ctx.Err()
		}
		backoff = min(2*backoff, 2*time.Second)
	}
}

// requestOnce sends msg once and turns an error reply into a *walrusError.
func (p *producer) requestOnce(ctx context.Context, msg *nats.Msg) (*nats.Msg, error) {
	ctx, cancel := context.WithTimeout(ctx, p.timeout)
	defer cancel()
	reply, err := p.nc.RequestMsgWithContext(ctx, msg)
	if err != nil {
		return nil, err
	}
	if code := reply.Header.Get("Walrus-Error"); code != "" {
		var body struct {
			Error walrusError `json:"error"`
		}
		if json.Unmarshal(reply.Data, &body) != nil || body.Error.Code == "" {
			body.Error = walrusError{Code: code, Message: string(reply.Data)}
		}
		return nil, &body.Error
	}
	return reply, nil
}
