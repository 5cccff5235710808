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
	t.Cleanup(func() { _ = c.Close() })
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

func TestCommandsReachOnCommand(t *testing.T) {
	svc := start(t, service("go-cmd", "c1"))
	got := make(chan sfc.Command, 1)
	svc.OnCommand(func(c sfc.Command) sfc.Result {
		got <- c
		if c.Name == "fail" {
			return sfc.Result{Err: errors.New("cannot do that")}
		}
		return sfc.Result{Value: map[string]any{"stopping": c.Name == "shutdown"}}
	})
	send := func(name string) map[string]any {
		body := fmt.Sprintf(`{"command":%q,"reason":"go test","timeout":"10s"}`, name)
		req, _ := http.NewRequest(http.MethodPost, "http://"+httpAddr+"/v1/instances/go-cmd/c1/commands", bytes.NewBufferString(body))
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
	out := send("fail")
	if out["ok"] != false || !strings.Contains(fmt.Sprint(out["error"]), "cannot do that") {
		t.Fatalf("fail command answered %v", out)
	}
	if c := <-got; c.Name != "fail" || c.Reason == nil || *c.Reason != "go test" {
		t.Fatalf("handler got %+v", c)
	}
	out = send("shutdown")
	res, _ := out["result"].(map[string]any)
	if out["ok"] != true || res["stopping"] != true {
		t.Fatalf("shutdown answered %v", out)
	}
	<-got
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
	if err := svc.SetGauge("", 1); !errors.As(err, &e) || e.Code != sfc.StatusInvalidArgument {
		t.Fatalf("empty gauge name: %v", err)
	}
}

func TestCloseIsIdempotent(t *testing.T) {
	svc := start(t, service("go-close", "x1"))
	if err := svc.Close(); err != nil {
		t.Fatal(err)
	}
	if err := svc.Close(); err != nil {
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
