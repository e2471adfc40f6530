package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"runtime/pprof"
	"strconv"
	"strings"

	"github.com/walrus-edge/walrus/storage"
	"github.com/walrus-edge/walrus/storage/storagebench"
)

// runBench implements `walrus bench storage`.
func runBench(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 || args[0] != "storage" {
		fmt.Fprintln(stderr, "usage: walrus bench storage [flags]")
		return 2
	}
	fs := flag.NewFlagSet("bench storage", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var cfg storagebench.Config
	fs.StringVar(&cfg.Dir, "dir", "", "directory for benchmark files, on the disk to measure (default: the system temp dir)")
	fs.DurationVar(&cfg.Duration, "duration", 0, "length of each run (default 3s)")
	backends := fs.String("backends", "", "comma-separated backends to measure: pwrite,io_uring (default: both; pwrite only if WALRUS_DISABLE_IO_URING is set)")
	fs.StringVar(&cfg.Only, "only", "", "run only the workloads whose name (plus fsync policy) contains this text, e.g. \"(b)\" or \"never\"")
	fs.BoolVar(&cfg.NoDirect, "no-direct", false, "skip the O_DIRECT variants of the fsync-always workloads")
	cpuprofile := fs.String("cpuprofile", "", "write a CPU profile of the whole run to this file")
	writers := fs.String("group-writers", "", "comma-separated writer counts for the group-commit curve (default 1,16,64,256)")
	if err := fs.Parse(args[1:]); err != nil {
		return 2
	}
	var err error
	if cfg.Backends, err = parseBackends(*backends); err != nil {
		fmt.Fprintln(stderr, "walrus bench:", err)
		return 2
	}
	if cfg.GroupWriters, err = parseInts(*writers); err != nil {
		fmt.Fprintln(stderr, "walrus bench: -group-writers:", err)
		return 2
	}
	if *cpuprofile != "" {
		f, err := os.Create(*cpuprofile)
		if err != nil {
			fmt.Fprintln(stderr, "walrus bench:", err)
			return 1
		}
		defer func() {
			if err := f.Close(); err != nil {
				fmt.Fprintln(stderr, "walrus bench: cpu profile:", err)
			}
		}()
		if err := pprof.StartCPUProfile(f); err != nil {
			fmt.Fprintln(stderr, "walrus bench:", err)
			return 1
		}
		defer pprof.StopCPUProfile()
	}
	if _, err := storagebench.Run(ctx, cfg, stdout); err != nil {
		fmt.Fprintln(stderr, "walrus bench:", err)
		return 1
	}
	return 0
}

func parseBackends(s string) ([]storage.Backend, error) {
	if s == "" {
		if _, set := os.LookupEnv("WALRUS_DISABLE_IO_URING"); set {
			return []storage.Backend{storage.BackendPwrite}, nil
		}
		return nil, nil
	}
	var out []storage.Backend
	for _, name := range strings.Split(s, ",") {
		switch b := storage.Backend(strings.TrimSpace(name)); b {
		case storage.BackendPwrite, storage.BackendURing:
			out = append(out, b)
		default:
			return nil, fmt.Errorf("unknown backend %q (want pwrite or io_uring)", name)
		}
	}
	return out, nil
}

func parseInts(s string) ([]int, error) {
	if s == "" {
		return nil, nil
	}
	var out []int
	for _, f := range strings.Split(s, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || n <= 0 {
			return nil, errors.New("want positive integers, e.g. 1,16,64,256")
		}
		out = append(out, n)
	}
	return out, nil
}
