// Command footprint measures what the client costs a Go service: the same binary runs with
// the client (a service registered with the registry, reporting once a second with the
// default options, Go runtime figures included, plus one watch of its own group) or without
// it (-client=false), and does the same tiny piece of work once a second either way. After a
// warm-up it measures its CPU time (getrusage) over the run and its resident memory (VmRSS)
// at the end, and prints one line:
//
//	footprint mode=client seconds=60 cpu_ms=12.3 cpu_ms_per_s=0.205 rss_kib=5120
//
// bench/footprint.sh runs both side by side against a real registry (make
// bench-footprint-go). Settings: SFC_REGISTRY and SFC_CA from the environment.
package main

import (
	"bufio"
	"context"
	"flag"
	"fmt"
	"os"
	"strconv"
	"strings"
	"syscall"
	"time"

	sfc "github.com/sfc/sfc/bindings/go"
)

func cpuMS() float64 {
	var u syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &u)
	return float64(u.Utime.Nano()+u.Stime.Nano()) / 1e6
}

func rssKiB() int64 {
	f, err := os.Open("/proc/self/status")
	if err != nil {
		return -1
	}
	defer f.Close()
	s := bufio.NewScanner(f)
	for s.Scan() {
		if rest, ok := strings.CutPrefix(s.Text(), "VmRSS:"); ok {
			n, _ := strconv.ParseInt(strings.Fields(rest)[0], 10, 64)
			return n
		}
	}
	return -1
}

var sink float64

// work is the service's own work: a little arithmetic once a second.
func work() {
	for i := 0; i < 1000; i++ {
		sink += float64(i) * 0.5
	}
}

func main() {
	seconds := flag.Int("seconds", 60, "measured seconds (after a 5 s warm-up)")
	withClient := flag.Bool("client", true, "run the client (false: the same program without it)")
	noRuntime := flag.Bool("no-runtime-metrics", false, "attribution: Config.NoRuntimeMetrics")
	noWatch := flag.Bool("no-watch", false, "attribution: no watch")
	noMetrics := flag.Bool("no-metrics", false, "attribution: Config.NoMetrics (no host/process sampling)")
	flag.Parse()
	mode := "baseline"
	ctx := context.Background()
	if *withClient {
		mode = "client"
		c, err := sfc.Start(ctx, sfc.Config{Group: "footprint-go", Interval: time.Second,
			NoRuntimeMetrics: *noRuntime, NoMetrics: *noMetrics})
		if err != nil {
			fmt.Fprintln(os.Stderr, "start:", err)
			os.Exit(1)
		}
		wctx, cancel := context.WithTimeout(ctx, 20*time.Second)
		if err := c.WaitConnected(wctx); err != nil {
			fmt.Fprintln(os.Stderr, "connect:", err)
			os.Exit(1)
		}
		cancel()
		if !*noWatch {
			events, err := c.Watch(ctx, sfc.Filter{Group: "footprint-go"})
			if err != nil {
				fmt.Fprintln(os.Stderr, "watch:", err)
				os.Exit(1)
			}
			go func() {
				for range events {
				}
			}()
		}
		defer c.Close(ctx)
	}
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	for i := 0; i < 5; i++ {
		<-tick.C
		work()
	}
	start, cpu0 := time.Now(), cpuMS()
	for i := 0; i < *seconds; i++ {
		<-tick.C
		work()
	}
	elapsed, used := time.Since(start).Seconds(), cpuMS()-cpu0
	fmt.Printf("footprint mode=%s seconds=%d cpu_ms=%.1f cpu_ms_per_s=%.3f rss_kib=%d\n",
		mode, *seconds, used, used/elapsed, rssKiB())
}
