package storage

import (
	"context"
	"fmt"
	"sync"
	"testing"
)

// BenchmarkAppend measures single-entry appends of 1 KiB from 64 concurrent
// writers to one segment under FsyncAlways (the group-commit path), for
// every write path.
func BenchmarkAppend(b *testing.B) {
	for _, direct := range []bool{false, true} {
		b.Run(fmt.Sprintf("direct=%v", direct), func(b *testing.B) {
			l := openTest(b, b.TempDir(), Options{DirectIO: direct})
			mustCreate(b, l, "t", 1, 1, 0)
			recs := []Record{{Value: make([]byte, 1024)}}
			b.SetBytes(1024)
			b.SetParallelism(32) // 64 writers on 2 CPUs
			b.ResetTimer()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					if _, err := l.Append(context.Background(), "t", 1, 1, recs); err != nil {
						b.Error(err)
						return
					}
				}
			})
		})
	}
}

// BenchmarkTailRead measures a consumer that reads each new batch right
// after it is written (16 writers appending 1 KiB entries under
// FsyncAlways), the read pattern of a live tail. It reports the reader's
// entries per second; with direct I/O the freshly written blocks are not in
// the page cache.
func BenchmarkTailRead(b *testing.B) {
	for _, direct := range []bool{false, true} {
		b.Run(fmt.Sprintf("direct=%v", direct), func(b *testing.B) {
			l := openTest(b, b.TempDir(), Options{DirectIO: direct})
			mustCreate(b, l, "t", 1, 1, 0)
			ctx, cancel := context.WithCancel(context.Background())
			var wg sync.WaitGroup
			for range 16 {
				wg.Go(func() {
					recs := []Record{{Value: make([]byte, 1024)}}
					for ctx.Err() == nil {
						l.Append(ctx, "t", 1, 1, recs)
					}
				})
			}
			b.SetBytes(1024)
			b.ResetTimer()
			var next uint64
			reads := 0
			for next < uint64(b.N) {
				ch, _ := l.Changed("t", 1)
				es, err := l.Read("t", 1, next, ReadLimits{MaxEntries: b.N - int(next)})
				if err != nil {
					b.Fatal(err)
				}
				next += uint64(len(es))
				reads++
				if len(es) == 0 {
					<-ch
				}
			}
			b.StopTimer()
			b.ReportMetric(float64(next)/float64(reads), "entries/read")
			cancel()
			wg.Wait()
		})
	}
}
