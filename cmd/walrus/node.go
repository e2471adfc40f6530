package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/walrus-edge/walrus/broker"
)

// shutdownTimeout bounds the graceful part of a shutdown after SIGINT or
// SIGTERM.
const shutdownTimeout = 30 * time.Second

// runNode runs a node until ctx ends (a signal), then shuts it down.
func runNode(ctx context.Context, args []string, stderr io.Writer) int {
	return runNodeWith(ctx, args, os.Environ(), stderr)
}

// runNodeWith is runNode with the environment given.
func runNodeWith(ctx context.Context, args, environ []string, stderr io.Writer) int {
	c, err := loadNodeConfig(args, environ, stderr)
	if errors.Is(err, flag.ErrHelp) {
		return 0
	}
	if err != nil {
		fmt.Fprintln(stderr, "walrus:", err)
		return 2
	}
	log, closeLog, err := newLogger(c, stderr)
	if err != nil {
		fmt.Fprintln(stderr, "walrus:", err)
		return 2
	}
	defer func() { _ = closeLog.Close() }()
	bc, err := c.brokerConfig(log)
	if err != nil {
		fmt.Fprintln(stderr, "walrus:", err)
		return 2
	}
	srv, err := broker.New(bc)
	if err != nil {
		fmt.Fprintln(stderr, "walrus:", err)
		return 2
	}
	for _, w := range c.ignored {
		log.Warn("ignored setting", "what", w)
	}
	log.Info("starting walrus", "version", version, "node", bc.NodeID, "node_id_from_hostname", c.NodeIDFromHostname,
		"data_dir", bc.DataDir)
	if err := srv.Start(ctx); err != nil {
		log.Error("start failed", "err", err)
		return 1
	}
	<-ctx.Done()
	log.Info("signal received, shutting down")
	sctx, cancel := context.WithTimeout(context.Background(), shutdownTimeout)
	defer cancel()
	srv.HandOff(sctx) // segments and Raft leadership to other nodes first
	if err := srv.Shutdown(sctx); err != nil {
		return 1
	}
	return 0
}
