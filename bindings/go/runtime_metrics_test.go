package sfc

import (
	"context"
	"testing"
	"time"
)

// BenchmarkRuntimeMetricsSample is what the Go runtime figures cost per report interval: one
// runtime/metrics read, the JSON and one cgo call (BENCHMARKS.md, "Go client footprint").
// The client has no registry to reach; the sample does not need one.
func BenchmarkRuntimeMetricsSample(b *testing.B) {
	c, err := Start(context.Background(), Config{Group: "bench-runtime", Registries: []string{"127.0.0.1:9"},
		IgnoreEnv: true, Interval: time.Hour, StopTimeout: 100 * time.Millisecond})
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close(context.Background())
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if err := c.h.runtime.send(); err != nil {
			b.Fatal(err)
		}
	}
}
