package sfc

import (
	"math"
	"runtime/metrics"
	"sync"
	"time"
)

// runtimeMetrics sends the Go runtime's figures with every report, read from runtime/metrics
// (no stop-the-world, unlike runtime.ReadMemStats) once per report interval:
//
//	go_goroutines       goroutines now
//	go_heap_bytes       heap memory occupied by objects, live or not yet swept
//	go_memory_bytes     all memory the Go runtime has mapped
//	go_gc_cycles        GC cycles since the process started
//	go_gc_pauses        stop-the-world GC pauses during the last interval
//	go_gc_pause_max_ms  the longest of those, as the upper bound of its histogram bucket
//	                    (runtime/metrics buckets are about 12 % wide), 0 when there was none
//
// Figures are at most one interval old when a report carries them. The cost is one timer
// wake-up per interval and one cgo call.
type runtimeMetrics struct {
	h       *handle
	samples []metrics.Sample
	pauses  []uint64 // the GC pause histogram's counts at the previous sample

	mu    sync.Mutex
	extra map[string]float64
	done  chan struct{}
	once  sync.Once
}

const (
	metricGoroutines = "/sched/goroutines:goroutines"
	metricHeap       = "/memory/classes/heap/objects:bytes"
	metricTotal      = "/memory/classes/total:bytes"
	metricGCCycles   = "/gc/cycles/total:gc-cycles"
	metricGCPauses   = "/sched/pauses/total/gc:seconds"
)

func startRuntimeMetrics(h *handle, interval time.Duration) *runtimeMetrics {
	if interval <= 0 {
		interval = time.Second
	}
	r := &runtimeMetrics{h: h, done: make(chan struct{})}
	known := map[string]bool{}
	for _, d := range metrics.All() {
		known[d.Name] = true
	}
	for _, name := range []string{metricGoroutines, metricHeap, metricTotal, metricGCCycles, metricGCPauses} {
		if known[name] {
			r.samples = append(r.samples, metrics.Sample{Name: name})
		}
	}
	r.send()
	go func() {
		t := time.NewTicker(interval)
		defer t.Stop()
		for {
			select {
			case <-t.C:
				r.send()
			case <-r.done:
				return
			}
		}
	}()
	return r
}

func (r *runtimeMetrics) stop() { r.once.Do(func() { close(r.done) }) }

// setExtra replaces the application's own figures and sends them with the Go figures now.
func (r *runtimeMetrics) setExtra(m map[string]float64) error {
	r.mu.Lock()
	r.extra = m
	r.mu.Unlock()
	return r.send()
}

func (r *runtimeMetrics) send() error {
	r.mu.Lock()
	figures := make(map[string]float64, len(r.extra)+6)
	for k, v := range r.extra {
		figures[k] = v
	}
	metrics.Read(r.samples)
	for _, s := range r.samples {
		switch s.Name {
		case metricGoroutines:
			figures["go_goroutines"] = float64(s.Value.Uint64())
		case metricHeap:
			figures["go_heap_bytes"] = float64(s.Value.Uint64())
		case metricTotal:
			figures["go_memory_bytes"] = float64(s.Value.Uint64())
		case metricGCCycles:
			figures["go_gc_cycles"] = float64(s.Value.Uint64())
		case metricGCPauses:
			figures["go_gc_pauses"], figures["go_gc_pause_max_ms"] = r.pausesSince(s.Value.Float64Histogram())
		}
	}
	r.mu.Unlock()
	return r.h.setRuntimeMetrics(figures)
}

// pausesSince counts the pauses since the previous sample and bounds the longest.
func (r *runtimeMetrics) pausesSince(h *metrics.Float64Histogram) (count, maxMS float64) {
	if len(r.pauses) == len(h.Counts) {
		for i, c := range h.Counts {
			if d := c - r.pauses[i]; d > 0 {
				count += float64(d)
				upper := h.Buckets[i+1]
				if math.IsInf(upper, 1) {
					upper = h.Buckets[i]
				}
				maxMS = upper * 1e3
			}
		}
	}
	r.pauses = append(r.pauses[:0], h.Counts...)
	return count, maxMS
}
