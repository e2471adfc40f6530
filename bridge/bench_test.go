package bridge

import (
	"context"
	"testing"
	"time"
)

// BenchmarkAppend measures a forwarded append of one 100-byte record
// between two nodes (encode, route, handler goroutine, dedup, reply).
func BenchmarkAppend(b *testing.B) {
	newB := func(id uint64, routes []string) *Bridge {
		br, err := New(Config{NodeID: id, Routes: routes})
		if err != nil {
			b.Fatal(err)
		}
		br.SetHandler(&echoHandler{node: id})
		if err := br.Start(context.Background()); err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { _ = br.Shutdown(context.Background()) })
		return br
	}
	b1 := newB(1, nil)
	b2 := newB(2, []string{b1.RouteURL()})
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	req := AppendRequest{Topic: "bench", Segment: 1, Epoch: 1, Records: []Record{{Value: make([]byte, 100)}}}
	if _, err := b2.Append(ctx, 1, req); err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		if _, err := b2.Append(ctx, 1, req); err != nil {
			b.Fatal(err)
		}
	}
}
