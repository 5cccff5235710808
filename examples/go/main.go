// A small net/http service that registers itself with an sfc registry, reports its health and
// a request counter, looks up a peer group, and stops cleanly on the registry's shutdown
// command or on SIGINT/SIGTERM.
//
// Settings come from the SFC_* environment (SFC_REGISTRY, SFC_CA, ...) and these flags:
//
//	example-go -listen 127.0.0.1:8082 -group example-go -peer-group example
package main

import (
	"context"
	"encoding/json"
	"flag"
	"log"
	"net"
	"net/http"
	"os/signal"
	"strconv"
	"sync/atomic"
	"syscall"
	"time"

	sfc "github.com/sfc/sfc/bindings/go"
)

func main() {
	listen := flag.String("listen", "127.0.0.1:8082", "HTTP address to serve")
	group := flag.String("group", "example-go", "group to register in")
	peers := flag.String("peer-group", "example", "group whose instances /peers lists")
	flag.Parse()

	ln, err := net.Listen("tcp", *listen)
	if err != nil {
		log.Fatalf("listen %s: %v", *listen, err)
	}
	host, portText, _ := net.SplitHostPort(ln.Addr().String())
	port, _ := strconv.Atoi(portText)

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	client, err := sfc.Start(ctx, sfc.Config{
		Group:     *group,
		Endpoints: []sfc.Endpoint{{Name: "http", Host: host, Port: uint16(port), Protocol: "http"}},
		Tags:      []string{"example"},
		Version:   sfc.Version(),
		// The registry's shutdown command ends the service like a signal does: the handler
		// answers, and Close below leaves once the answer is out.
		OnCommand: func(_ context.Context, c sfc.Command) (any, error) {
			if c.Name == sfc.CommandShutdown {
				stop()
				return map[string]bool{"stopping": true}, nil
			}
			return nil, errUnknown(c.Name)
		},
	})
	if err != nil {
		log.Fatalf("sfc: %v", err)
	}
	go func() {
		for ev := range client.Events() {
			if ev.Kind == sfc.EventError {
				log.Printf("sfc: %s (%s)", ev.Err, ev.Err.Code)
			}
		}
	}()

	var requests atomic.Int64
	mux := http.NewServeMux()
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		n := requests.Add(1)
		_ = client.SetGauge("requests_total", float64(n))
		_, _ = w.Write([]byte("hello from " + client.ID() + "\n"))
	})
	mux.HandleFunc("/peers", func(w http.ResponseWriter, r *http.Request) {
		lctx, cancel := context.WithTimeout(r.Context(), 5*time.Second)
		defer cancel()
		found, err := client.Lookup(lctx, *peers, sfc.HealthyOnly())
		if err != nil {
			http.Error(w, err.Error(), http.StatusServiceUnavailable)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(found)
	})
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	go func() {
		<-ctx.Done()
		shutdownCtx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = srv.Shutdown(shutdownCtx)
	}()
	_ = client.SetHealth(sfc.Passing, "ready")
	log.Printf("serving on http://%s as %s", ln.Addr(), client.ID())
	if err := srv.Serve(ln); err != nil && err != http.ErrServerClosed {
		log.Printf("http: %v", err)
	}
	closeCtx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := client.Close(closeCtx); err != nil {
		log.Printf("sfc close: %v", err)
	}
	log.Print("stopped")
}

type errUnknown string

func (e errUnknown) Error() string { return "unknown command " + strconv.Quote(string(e)) }
