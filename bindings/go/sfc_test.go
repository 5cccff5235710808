package sfc_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	sfc "github.com/sfc/sfc/bindings/go"
)

// The registry every test talks to: the real `sfc registry` binary (target/debug/sfc, built
// by `cargo build -p sfc --bins`), on a loopback port the OS picks, with real TLS.
var (
	registryAddr string
	httpAddr     string
	caPath       string
)

const adminToken = "go-test-token"

func TestMain(m *testing.M) {
	os.Exit(run(m))
}

func run(m *testing.M) int {
	bin, err := filepath.Abs("../../target/debug/sfc")
	if err != nil || fileMissing(bin) {
		fmt.Fprintf(os.Stderr, "%s is missing: run `cargo build -p sfc --bins` first\n", bin)
		return 1
	}
	dir, err := os.MkdirTemp("", "sfc-go-test-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(dir)
	cmd := exec.Command(bin, "registry", "--listen", "127.0.0.1:0", "--data-dir", dir,
		"--http", "127.0.0.1:0", "--admin-token", adminToken)
	cmd.Stderr = os.Stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	if err := cmd.Start(); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer func() {
		_ = cmd.Process.Kill() // only the registry this test started, by its PID
		_ = cmd.Wait()
	}()
	lines := bufio.NewScanner(out)
	for (registryAddr == "" || httpAddr == "") && lines.Scan() {
		if a, ok := strings.CutPrefix(lines.Text(), "sfc registry listening on "); ok {
			registryAddr = strings.Fields(a)[0]
		}
		if a, ok := strings.CutPrefix(lines.Text(), "sfc http listening on "); ok {
			httpAddr = strings.Fields(a)[0]
		}
	}
	if registryAddr == "" || httpAddr == "" {
		fmt.Fprintln(os.Stderr, "the registry did not print its addresses")
		return 1
	}
	go func() {
		for lines.Scan() {
		}
	}()
	caPath = filepath.Join(dir, "tls", "ca.pem")
	return m.Run()
}

func fileMissing(p string) bool {
	_, err := os.Stat(p)
	return err != nil
}

func service(group, instance string) sfc.Config {
	return sfc.Config{
		Registries: []string{registryAddr},
		CA:         caPath,
		Group:      group,
		InstanceID: instance,
		Interval:   time.Second,
		IgnoreEnv:  true,
	}
}

func observer() sfc.Config {
	return sfc.Config{Registries: []string{registryAddr}, CA: caPath, Observer: true, IgnoreEnv: true}
}

func start(t *testing.T, cfg sfc.Config) *sfc.Client {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := sfc.Start(ctx, cfg)
	if err != nil {
		t.Fatalf("start: %v", err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
		defer cancel()
		_ = c.Close(ctx)
	})
	if err := c.WaitConnected(ctx); err != nil {
		t.Fatalf("not connected: %v", err)
	}
	return c
}

func TestRegisterHealthGaugeLookup(t *testing.T) {
	cfg := service("go-svc", "one")
	cfg.Service = "go-service"
	cfg.Endpoints = []sfc.Endpoint{{Name: "http", Host: "127.0.0.1", Port: 8080, Protocol: "http"}}
	cfg.Tags = []string{"go"}
	cfg.Metadata = map[string]string{"lang": "go"}
	cfg.Version = "2.0.0"
	svc := start(t, cfg)
	if got := svc.ID(); got != "go-svc/one" {
		t.Fatalf("id = %q", got)
	}
	if err := svc.SetHealth(sfc.Warning, "warming up"); err != nil {
		t.Fatal(err)
	}
	if err := svc.SetGauge("queue_depth", 4); err != nil {
		t.Fatal(err)
	}
	if err := svc.SetRuntimeMetrics(map[string]float64{"goroutines": 12}); err != nil {
		t.Fatal(err)
	}
	obs := start(t, observer())
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()

	// The gauge and the runtime figure go out with the next report (SetHealth's immediate
	// report may have left before them): ask the registry until both show (bounded).
	var inst sfc.Instance
	for i := 0; i < 40; i++ {
		list, err := obs.Query(ctx, sfc.Filter{Group: "go-svc"})
		if err != nil {
			t.Fatal(err)
		}
		if len(list) == 1 && list[0].Metrics.Custom["queue_depth"] == 4 && list[0].Metrics.Runtime["goroutines"] == 12 {
			inst = list[0]
			break
		}
		time.Sleep(250 * time.Millisecond)
	}
	if inst.ID != "go-svc/one" {
		t.Fatalf("the registry never showed the gauge and the runtime figure")
	}
	if inst.Metrics.Runtime["goroutines"] != 12 || inst.Service != "go-service" || inst.Metadata["lang"] != "go" {
		t.Fatalf("unexpected record: %+v", inst)
	}

	got, err := obs.Lookup(ctx, "go-svc")
	if err != nil {
		t.Fatal(err)
	}
	if got.Stale || len(got.Instances) != 1 {
		t.Fatalf("lookup = %+v", got)
	}
	in := got.Instances[0]
	if in.Health != "warning" || in.HealthNote == nil || *in.HealthNote != "warming up" || in.Endpoints[0].Port != 8080 {
		t.Fatalf("lookup instance = %+v", in)
	}
	healthy, err := obs.Lookup(ctx, "go-svc", sfc.HealthyOnly())
	if err != nil || len(healthy.Instances) != 0 {
		t.Fatalf("healthy-only lookup = %+v, %v", healthy, err)
	}
	tagged, err := obs.Lookup(ctx, "go-svc", sfc.WithTag("go"))
	if err != nil || len(tagged.Instances) != 1 {
		t.Fatalf("tag lookup = %+v, %v", tagged, err)
	}
}

func TestWatchChannelClosesWhenContextEnds(t *testing.T) {
	obs := start(t, observer())
	ctx, cancel := context.WithCancel(context.Background())
	events, err := obs.Watch(ctx, sfc.Filter{Group: "go-watch"})
	if err != nil {
		t.Fatal(err)
	}
	svc := start(t, service("go-watch", "w1"))
	if err := svc.SetHealth(sfc.Critical, "disk full"); err != nil {
		t.Fatal(err)
	}
	seen := map[string]bool{}
	deadline := time.After(15 * time.Second)
	for !(seen["joined"] && seen["health-changed"]) {
		select {
		case ev := <-events:
			if ev.ID == "go-watch/w1" {
				seen[ev.Kind] = true
			}
		case <-deadline:
			t.Fatalf("saw only %v", seen)
		}
	}
	cancel()
	closed := time.After(5 * time.Second)
	for {
		select {
		case _, ok := <-events:
			if !ok {
				return
			}
		case <-closed:
			t.Fatal("the watch channel did not close after the context ended")
		}
	}
}

// sendCommand sends a command through the registry's HTTP API, as `sfc shutdown` does, and
// returns the registry's answer (it waits for the instance's result, up to 10 s).
func sendCommand(t *testing.T, id, name string) map[string]any {
	t.Helper()
	group, instance, _ := strings.Cut(id, "/")
	body := fmt.Sprintf(`{"command":%q,"reason":"go test","timeout":"10s"}`, name)
	req, _ := http.NewRequest(http.MethodPost, "http://"+httpAddr+"/v1/instances/"+group+"/"+instance+"/commands", bytes.NewBufferString(body))
	req.Header.Set("Authorization", "Bearer "+adminToken)
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var out map[string]any
	if err := json.NewDecoder(resp.Body).Decode(&out); err != nil {
		t.Fatalf("%s: %v", resp.Status, err)
	}
	return out
}

// record asks the registry (through an observer) for the one record with this id.
func record(t *testing.T, id string) sfc.Instance {
	t.Helper()
	group, _, _ := strings.Cut(id, "/")
	obs := start(t, observer())
	list, err := obs.Query(context.Background(), sfc.Filter{Group: group})
	if err != nil {
		t.Fatal(err)
	}
	for _, in := range list {
		if in.ID == id {
			return in
		}
	}
	t.Fatalf("the registry has no record %s: %+v", id, list)
	return sfc.Instance{}
}

// The handler is part of Config: a command that arrives as soon as the client is connected
// finds it (there is no window between Start and installing it).
func TestCommandsReachTheHandlerInConfig(t *testing.T) {
	got := make(chan sfc.Command, 4)
	cfg := service("go-cmd", "c1")
	cfg.OnCommand = func(ctx context.Context, c sfc.Command) (any, error) {
		got <- c
		switch c.Name {
		case "fail":
			return nil, errors.New("cannot do that")
		case "explode":
			panic("boom")
		}
		return map[string]any{"handled": c.Name, "ctx_alive": ctx.Err() == nil}, nil
	}
	svc := start(t, cfg)
	out := sendCommand(t, "go-cmd/c1", "first")
	res, _ := out["result"].(map[string]any)
	if out["ok"] != true || res["handled"] != "first" || res["ctx_alive"] != true {
		t.Fatalf("the first command answered %v", out)
	}
	if c := <-got; c.Name != "first" || c.Reason == nil || *c.Reason != "go test" {
		t.Fatalf("handler got %+v", c)
	}
	out = sendCommand(t, "go-cmd/c1", "fail")
	if out["ok"] != false || !strings.Contains(fmt.Sprint(out["error"]), "cannot do that") {
		t.Fatalf("fail command answered %v", out)
	}
	<-got
	out = sendCommand(t, "go-cmd/c1", "explode")
	if out["ok"] != false || !strings.Contains(fmt.Sprint(out["error"]), "panicked: boom") {
		t.Fatalf("panicking handler answered %v", out)
	}
	<-got
	if !svc.Connected() {
		t.Fatal("the client lost its session while answering")
	}
}

// Shutdown done right, the pattern the README shows: the handler cancels the service's
// context and returns its answer; main then calls Close. Close waits for that answer, so
// the registry gets it before the leave, and the record ends "left". The handler here is
// still busy when Close is called (it returns only after main has started closing), which
// is what a handler that drains work before answering looks like.
func TestShutdownAnswersThenLeaves(t *testing.T) {
	appCtx, stopApp := context.WithCancel(context.Background())
	defer stopApp()
	closing := make(chan struct{})
	cfg := service("go-shutdown", "s1")
	cfg.OnCommand = func(ctx context.Context, c sfc.Command) (any, error) {
		if c.Name != sfc.CommandShutdown {
			return nil, fmt.Errorf("unknown command %q", c.Name)
		}
		stopApp()
		<-closing
		return map[string]bool{"stopping": true}, nil
	}
	svc := start(t, cfg)
	answer := make(chan map[string]any, 1)
	go func() { answer <- sendCommand(t, "go-shutdown/s1", sfc.CommandShutdown) }()

	<-appCtx.Done() // main: SIGTERM or the shutdown command
	close(closing)
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	if err := svc.Close(ctx); err != nil {
		t.Fatalf("close: %v", err)
	}
	out := <-answer
	res, _ := out["result"].(map[string]any)
	if out["ok"] != true || res["stopping"] != true {
		t.Fatalf("shutdown answered %v", out)
	}
	if r := record(t, "go-shutdown/s1"); r.Status != "left" {
		t.Fatalf("after shutdown the record is %s (%v), not left", r.Status, r.OfflineReason)
	}
}

// Close inside the handler must not deadlock (it waited for the goroutine running the
// handler, and a second Close, as on SIGTERM, then hung in sync.Once): the command is
// answered, the leave confirmed, and every Close returns.
func TestCloseInsideTheHandler(t *testing.T) {
	var self atomic.Pointer[sfc.Client]
	closed := make(chan error, 1)
	cfg := service("go-close-in", "h1")
	cfg.OnCommand = func(ctx context.Context, c sfc.Command) (any, error) {
		closed <- self.Load().Close(ctx)
		return "ignored: Close answered already", nil
	}
	svc := start(t, cfg)
	self.Store(svc)
	answer := make(chan map[string]any, 1)
	go func() { answer <- sendCommand(t, "go-close-in/h1", sfc.CommandShutdown) }()
	select {
	case err := <-closed:
		if err != nil {
			t.Fatalf("close inside the handler: %v", err)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("Close inside the handler did not return")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	if err := svc.Close(ctx); err != nil { // the SIGTERM path, after the handler's Close
		t.Fatalf("second close: %v", err)
	}
	out := <-answer
	if out["ok"] != true {
		t.Fatalf("the command was answered %v", out)
	}
	if r := record(t, "go-close-in/h1"); r.Status != "left" {
		t.Fatalf("the record is %s (%v), not left", r.Status, r.OfflineReason)
	}
}

// A registry whose certificate the CA does not vouch for: the TLS error reaches the Events
// channel with its code, WaitConnected says it instead of only "context deadline exceeded",
// and a lookup that gets no answer says why.
func TestConnectionErrorsAreDelivered(t *testing.T) {
	other := t.TempDir()
	bin, _ := filepath.Abs("../../target/debug/sfc")
	if out, err := exec.Command(bin, "certs", "init", "--dir", other).CombinedOutput(); err != nil {
		t.Fatalf("sfc certs init: %v\n%s", err, out)
	}
	cfg := observer()
	cfg.CA = filepath.Join(other, "ca.pem")
	cfg.ConnectTimeout = 500 * time.Millisecond
	c, err := sfc.Start(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close(context.Background())
	var got *sfc.Error
	deadline := time.After(15 * time.Second)
	for got == nil {
		select {
		case ev := <-c.Events():
			if ev.Kind == sfc.EventError {
				got = ev.Err
			}
		case <-deadline:
			t.Fatal("no error event for an untrusted registry certificate")
		}
	}
	if got.Code != sfc.StatusTLS || !strings.Contains(got.Message, registryAddr) {
		t.Fatalf("error event: %s %q", got.Code, got.Message)
	}
	ended, cancel := context.WithCancel(context.Background())
	cancel()
	err = c.WaitConnected(ended)
	var e *sfc.Error
	if !errors.As(err, &e) || e.Code != sfc.StatusTLS || !errors.Is(err, context.Canceled) ||
		!errors.Is(err, sfc.ErrTLS) || !strings.Contains(e.Message, "certificate") {
		t.Fatalf("wait connected: %v", err)
	}
	_, err = c.Lookup(context.Background(), "anything")
	if !errors.As(err, &e) || e.Code != sfc.StatusUnreachable || !strings.Contains(e.Message, "certificate") {
		t.Fatalf("lookup: %v", err)
	}
}

// Go strings may hold NUL bytes; C strings end at the first. Every such string is refused,
// naming the field, instead of being cut short ("nul\x00byte" registered as "nul").
func TestNULBytesAreRefused(t *testing.T) {
	ctx := context.Background()
	var e *sfc.Error
	cfg := service("nul\x00byte", "n1")
	if _, err := sfc.Start(ctx, cfg); !errors.As(err, &e) || e.Code != sfc.StatusInvalidArgument || !strings.Contains(e.Message, "group") {
		t.Fatalf("group with a NUL: %v", err)
	}
	cfg = service("go-nul", "n1")
	cfg.Metadata = map[string]string{"k": "v\x00"}
	if _, err := sfc.Start(ctx, cfg); !errors.As(err, &e) || e.Code != sfc.StatusInvalidArgument || !strings.Contains(e.Message, "metadata value of k") {
		t.Fatalf("metadata with a NUL: %v", err)
	}
	svc := start(t, service("go-nul", "n2"))
	if err := svc.SetGauge("a\x00b", 1); !errors.As(err, &e) || e.Code != sfc.StatusInvalidArgument || !strings.Contains(e.Message, "gauge name") {
		t.Fatalf("gauge name with a NUL: %v", err)
	}
	if err := svc.SetHealth(sfc.Warning, "x\x00y"); !errors.As(err, &e) || !strings.Contains(e.Message, "health note") {
		t.Fatalf("note with a NUL: %v", err)
	}
	if _, err := svc.Lookup(ctx, "go-nul\x00x"); !errors.As(err, &e) || !strings.Contains(e.Message, "group") {
		t.Fatalf("lookup group with a NUL: %v", err)
	}
	if id := svc.ID(); id != "go-nul/n2" {
		t.Fatalf("id %q", id)
	}
}

// Events are delivered when they happen: every blocking pull the client and its watch make
// returns with an event, none returns empty because a poll timer ran out. The observer
// watches every report of the service for three intervals, idle time for both pumps.
func TestEventsArriveWithoutPolling(t *testing.T) {
	svc := start(t, service("go-nopoll", "p1"))
	obs := start(t, observer())
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	events, err := obs.Watch(ctx, sfc.Filter{Group: "go-nopoll", Reports: true})
	if err != nil {
		t.Fatal(err)
	}
	reports := 0
	deadline := time.After(20 * time.Second)
	for reports < 3 {
		select {
		case ev := <-events:
			if ev.Kind == "report" && ev.ID == "go-nopoll/p1" {
				reports++
			}
		case <-deadline:
			t.Fatalf("saw %d reports", reports)
		}
	}
	for name, c := range map[string]*sfc.Client{"service": svc, "observer": obs} {
		pulls, delivered := sfc.PumpCounts(c)
		if pulls != delivered || delivered == 0 {
			t.Errorf("%s: %d pulls returned, %d delivered an event", name, pulls, delivered)
		}
	}
}

// Go runtime figures go out with every report unless turned off.
func TestRuntimeMetricsAreAutomatic(t *testing.T) {
	start(t, service("go-rt", "on"))
	off := service("go-rt", "off")
	off.NoRuntimeMetrics = true
	offc := start(t, off)
	if err := offc.SetGauge("marker", 1); err != nil {
		t.Fatal(err)
	}
	obs := start(t, observer())
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	events, err := obs.Watch(ctx, sfc.Filter{Group: "go-rt", Reports: true})
	if err != nil {
		t.Fatal(err)
	}
	var on, offSeen *sfc.Instance
	deadline := time.After(20 * time.Second)
	for on == nil || offSeen == nil {
		select {
		case ev := <-events:
			if ev.Kind != "report" || ev.Instance == nil {
				continue
			}
			in := ev.Instance
			if in.ID == "go-rt/on" && in.Metrics.Runtime["go_goroutines"] > 0 {
				on = in
			}
			if in.ID == "go-rt/off" && in.Metrics.Custom["marker"] == 1 {
				offSeen = in
			}
		case <-deadline:
			t.Fatalf("reports seen: on %v, off %v", on != nil, offSeen != nil)
		}
	}
	for _, k := range []string{"go_heap_bytes", "go_memory_bytes"} {
		if on.Metrics.Runtime[k] <= 0 {
			t.Errorf("%s = %v in %v", k, on.Metrics.Runtime[k], on.Metrics.Runtime)
		}
	}
	if _, ok := on.Metrics.Runtime["go_gc_pauses"]; !ok {
		t.Errorf("no go_gc_pauses in %v", on.Metrics.Runtime)
	}
	if len(offSeen.Metrics.Runtime) != 0 {
		t.Errorf("NoRuntimeMetrics still sent %v", offSeen.Metrics.Runtime)
	}
}

func TestErrorsCarryStatusAndMessage(t *testing.T) {
	ctx := context.Background()
	cfg := service("go-err", "e1")
	cfg.CA = "/nonexistent/sfc/ca.pem"
	_, err := sfc.Start(ctx, cfg)
	var e *sfc.Error
	if !errors.As(err, &e) || e.Code != sfc.StatusFile || !strings.Contains(e.Message, "/nonexistent/sfc/ca.pem") {
		t.Fatalf("bad ca: %v", err)
	}
	cfg = service("", "e1")
	_, err = sfc.Start(ctx, cfg)
	if !errors.As(err, &e) || e.Code != sfc.StatusInvalidArgument || !strings.Contains(e.Message, "group") {
		t.Fatalf("no group: %v", err)
	}
	if e.Code.String() != "invalid-argument" {
		t.Fatalf("status name %q", e.Code.String())
	}
	cfg = service("go-err", "e1")
	cfg.Registries = []string{"no-port"}
	_, err = sfc.Start(ctx, cfg)
	if !errors.As(err, &e) || !strings.Contains(e.Message, "no-port") {
		t.Fatalf("bad address: %v", err)
	}
	svc := start(t, service("go-err", "e2"))
	if err := svc.SetGauge("", 1); !errors.As(err, &e) || e.Code != sfc.StatusInvalidArgument || !errors.Is(err, sfc.ErrInvalidArgument) {
		t.Fatalf("empty gauge name: %v", err)
	}
	for _, name := range []string{"a\tb", "a\nb", `a"b`, "a/b"} {
		if err := svc.SetGauge(name, 1); !errors.As(err, &e) || e.Code != sfc.StatusInvalidArgument || !strings.Contains(e.Message, "gauge name") {
			t.Fatalf("gauge name %q: %v", name, err)
		}
	}
	// A group Start refuses is refused by Lookup too, not looked up and found empty.
	if _, err := svc.Lookup(ctx, "a/b"); !errors.As(err, &e) || e.Code != sfc.StatusInvalidArgument || !strings.Contains(e.Message, "group") {
		t.Fatalf("lookup a/b: %v", err)
	}
}

func TestCloseIsIdempotent(t *testing.T) {
	svc := start(t, service("go-close", "x1"))
	if err := svc.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	if err := svc.Close(context.Background()); err != nil {
		t.Fatalf("second close: %v", err)
	}
	if err := svc.SetGauge("x", 1); !errors.Is(err, sfc.ErrStopped) {
		t.Fatalf("after close: %v", err)
	}
	if _, err := svc.Lookup(context.Background(), "go-close"); !errors.Is(err, sfc.ErrStopped) {
		t.Fatalf("lookup after close: %v", err)
	}
	obs := start(t, observer())
	list, err := obs.Query(context.Background(), sfc.Filter{Group: "go-close"})
	if err != nil || len(list) != 1 || list[0].Status != "left" {
		t.Fatalf("after close the registry shows %+v, %v", list, err)
	}
}

// The library this package links (sfc_version()) must be the version of the header cgo
// compiles against: include/sfc.h's SFC_VERSION and its MAJOR/MINOR/PATCH macros, read from
// the file itself.
func TestVersionMatchesHeader(t *testing.T) {
	const header = "../../include/sfc.h"
	text, err := os.ReadFile(header)
	if err != nil {
		t.Fatal(err)
	}
	defines := map[string]string{}
	for _, line := range strings.Split(string(text), "\n") {
		f := strings.Fields(line)
		if len(f) == 3 && f[0] == "#define" && strings.HasPrefix(f[1], "SFC_VERSION") {
			defines[f[1]] = f[2]
		}
	}
	want, ok := defines["SFC_VERSION"]
	if !ok || len(want) < 2 || want[0] != '"' || want[len(want)-1] != '"' {
		t.Fatalf("%s has no #define SFC_VERSION \"x.y.z\" (found %q)", header, want)
	}
	want = want[1 : len(want)-1]
	parts := fmt.Sprintf("%s.%s.%s", defines["SFC_VERSION_MAJOR"], defines["SFC_VERSION_MINOR"],
		defines["SFC_VERSION_PATCH"])
	if parts != want {
		t.Fatalf("%s: SFC_VERSION %q but MAJOR.MINOR.PATCH %q", header, want, parts)
	}
	if got := sfc.Version(); got != want {
		t.Fatalf("sfc.Version() = %q, %s says SFC_VERSION %q", got, header, want)
	}
}
