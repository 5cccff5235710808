package sfc_test

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"io"
	"path/filepath"
	"strings"
	"testing"
	"time"

	sfc "github.com/sfc/sfc/bindings/go"
)

// legacyConn is what the legacy-style registry saw on one connection.
type legacyConn struct {
	handshakeErr error  // the TLS handshake did not complete (the client abandoned it)
	bytes        int    // bytes read after the handshake
	doc          []byte // those bytes
}

// startLegacyRegistry is a stand-in for the original service_fleet_control registry: a TLS
// server that offers no ALPN (crypto/tls without NextProtos), reads each connection to its
// end and takes what it read as one JSON document. It uses the test registry's own server
// certificate, which the client's CA vouches for. Every connection's outcome goes to the
// returned channel.
func startLegacyRegistry(t *testing.T) (string, <-chan legacyConn) {
	t.Helper()
	dir := filepath.Dir(caPath)
	cert, err := tls.LoadX509KeyPair(filepath.Join(dir, "server.pem"), filepath.Join(dir, "server-key.pem"))
	if err != nil {
		t.Fatal(err)
	}
	ln, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{Certificates: []tls.Certificate{cert}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = ln.Close() })
	conns := make(chan legacyConn, 64)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func(c *tls.Conn) {
				defer c.Close()
				_ = c.SetDeadline(time.Now().Add(20 * time.Second))
				if err := c.Handshake(); err != nil {
					conns <- legacyConn{handshakeErr: err}
					return
				}
				if p := c.ConnectionState().NegotiatedProtocol; p != "" {
					panic("the legacy-style registry negotiated ALPN " + p)
				}
				doc, _ := io.ReadAll(c)
				conns <- legacyConn{bytes: len(doc), doc: doc}
			}(c.(*tls.Conn))
		}
	}()
	return ln.Addr().String(), conns
}

func nextConn(t *testing.T, conns <-chan legacyConn, what string) legacyConn {
	t.Helper()
	select {
	case c := <-conns:
		return c
	case <-time.After(20 * time.Second):
		t.Fatalf("the legacy-style registry saw no connection: %s", what)
	}
	return legacyConn{}
}

// With Legacy on, a registry that predates protocol v1 receives reports in the original
// format: one {"action":"HEALTH","payload":...} document per connection, and the client
// counts as connected with session 0.
func TestLegacyReportsToARegistryThatPredatesV1(t *testing.T) {
	addr, conns := startLegacyRegistry(t)
	cfg := service("go-legacy", "old-1")
	cfg.Registries = []string{addr}
	cfg.Service = "billing"
	cfg.Hostname = "legacy-host"
	cfg.Legacy = true
	cfg.StopTimeout = 2 * time.Second
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	c, err := sfc.Start(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close(context.Background())
	var doc struct {
		Action  string `json:"action"`
		Payload struct {
			ServiceName string         `json:"serviceName"`
			GroupingKey string         `json:"groupingKey"`
			Metrics     map[string]any `json:"metrics"`
			Time        string         `json:"time"`
		} `json:"payload"`
	}
	got := nextConn(t, conns, "a legacy report")
	if got.handshakeErr != nil {
		t.Fatalf("the client abandoned the handshake: %v", got.handshakeErr)
	}
	if err := json.Unmarshal(got.doc, &doc); err != nil {
		t.Fatalf("not one JSON document (%v): %q", err, got.doc)
	}
	if doc.Action != "HEALTH" || doc.Payload.ServiceName != "billing" || doc.Payload.GroupingKey != "go-legacy" ||
		doc.Payload.Metrics["hostname"] != "legacy-host" || doc.Payload.Time == "" {
		t.Fatalf("legacy document: %+v", doc)
	}
	if _, ok := doc.Payload.Metrics["updateIntervalSeconds"]; !ok {
		t.Fatalf("no updateIntervalSeconds in %v", doc.Payload.Metrics)
	}
	// Reporting in the legacy format counts as connected, with no v1 session.
	if err := c.WaitConnected(ctx); err != nil {
		t.Fatal(err)
	}
	for connected := false; !connected; {
		select {
		case ev := <-c.Events():
			if ev.Kind == sfc.EventConnected {
				if ev.Session != 0 || ev.Registry != addr {
					t.Fatalf("connected event: %+v", ev)
				}
				connected = true
			}
		case <-ctx.Done():
			t.Fatal("no connected event")
		}
	}
	// Lookups need protocol v1.
	var e *sfc.Error
	if _, err := c.Lookup(ctx, "anything"); !errors.As(err, &e) || !errors.Is(err, sfc.ErrUnreachable) ||
		!strings.Contains(e.Message, "predates protocol v1") {
		t.Fatalf("lookup while reporting in the legacy format: %v", err)
	}
	// The next report comes on a connection of its own.
	if got := nextConn(t, conns, "a second legacy report"); got.handshakeErr != nil || !json.Valid(got.doc) {
		t.Fatalf("second report: %v %q", got.handshakeErr, got.doc)
	}
	if err := c.Close(ctx); err != nil {
		t.Fatalf("close: %v", err)
	}
}

// Without Legacy, the client refuses a registry that predates protocol v1 and sends it
// nothing after the handshake (the original registry exits on bytes it cannot parse).
func TestV1OnlyClientRefusesARegistryThatPredatesV1(t *testing.T) {
	addr, conns := startLegacyRegistry(t)
	cfg := service("go-v1-only", "new-1")
	cfg.Registries = []string{addr}
	cfg.StopTimeout = 500 * time.Millisecond
	c, err := sfc.Start(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close(context.Background())
	var got *sfc.Error
	deadline := time.After(20 * time.Second)
	for got == nil {
		select {
		case ev := <-c.Events():
			switch ev.Kind {
			case sfc.EventError:
				got = ev.Err
			case sfc.EventConnected:
				t.Fatalf("connected to a registry that predates v1: %+v", ev)
			}
		case <-deadline:
			t.Fatal("no error event for a registry that predates protocol v1")
		}
	}
	if got.Code != sfc.StatusProtocol || !errors.Is(got, sfc.ErrProtocol) || got.RegistryCode != "unsupported-version" ||
		!strings.Contains(got.Message, "predates protocol v1") || !strings.Contains(got.Message, "sent it nothing") {
		t.Fatalf("error event: %s %q %q", got.Code, got.RegistryCode, got.Message)
	}
	// The registry's side of that connection (and of any retry so far): no byte after the
	// handshake, if the handshake completed at all.
	for seen, more := nextConn(t, conns, "the refused connection"), true; more; {
		if seen.bytes != 0 {
			t.Fatalf("the registry received %d bytes after the handshake: %q", seen.bytes, seen.doc)
		}
		select {
		case seen = <-conns:
		default:
			more = false
		}
	}
}

// Legacy needs TLS and a service.
func TestLegacyNeedsTLSAndAService(t *testing.T) {
	var e *sfc.Error
	cfg := observer()
	cfg.Legacy = true
	if _, err := sfc.Start(context.Background(), cfg); !errors.As(err, &e) || !errors.Is(err, sfc.ErrInvalidArgument) ||
		!strings.Contains(e.Message, "legacy") {
		t.Fatalf("observer with Legacy: %v", err)
	}
	cfg = service("go-legacy-plain", "p")
	cfg.CA = ""
	cfg.InsecurePlaintext = true
	cfg.Legacy = true
	if _, err := sfc.Start(context.Background(), cfg); !errors.As(err, &e) || !errors.Is(err, sfc.ErrInvalidArgument) ||
		!strings.Contains(e.Message, "legacy") {
		t.Fatalf("plaintext with Legacy: %v", err)
	}
}
