package sfc

/*
#include <stdlib.h>
#include "sfc.h"
*/
import "C"

import (
	"context"
	"encoding/json"
	"fmt"
	"runtime"
	"sync"
	"sync/atomic"
)

// Client is a running client. Its methods are safe for concurrent use.
type Client struct {
	h *handle
}

// handle owns the C client. Goroutines hold the handle, not the Client, so that an abandoned
// Client can still be finalized.
type handle struct {
	// mu guards ptr: calls hold it shared, freeing holds it exclusively (the C ABI forbids a
	// free racing another call).
	mu  sync.RWMutex
	ptr *C.sfc_client

	registries []string
	events     chan ClientEvent
	pumpDone   chan struct{}

	// The connection state, kept from the events: WaitConnected waits on changed.
	stateMu   sync.Mutex
	connected bool
	lastErr   *Error
	changed   chan struct{} // closed and replaced on every change

	commands commands
	runtime  *runtimeMetrics

	// Close: the first caller starts closing; every caller waits for closed.
	closeMu  sync.Mutex
	closing  bool
	giveUp   chan struct{} // closed when the first Close's ctx ends before the answer came
	closed   chan struct{}
	closeErr error

	// What the event pump did, for the tests: every completed pull must deliver an event.
	pulls, delivered atomic.Uint64
}

// Start starts a client. It does not wait for the registry: connecting and reconnecting
// happen in the background (see WaitConnected and Events). It fails at once on bad
// settings, e.g. an unreadable CA file (StatusFile) or a missing group
// (StatusInvalidArgument). ctx only bounds the start itself.
func Start(ctx context.Context, cfg Config) (*Client, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	var cc *C.sfc_config
	if cfg.Observer {
		cc = C.sfc_config_new_observer()
	} else {
		cc = C.sfc_config_new()
	}
	defer C.sfc_config_free(cc)
	if err := apply(cc, cfg); err != nil {
		return nil, err
	}
	var ptr *C.sfc_client
	if err := call(func() C.enum_sfc_status { return C.sfc_client_start(cc, &ptr) }); err != nil {
		return nil, err
	}
	h := &handle{
		ptr:        ptr,
		registries: cfg.Registries,
		events:     make(chan ClientEvent, 64),
		pumpDone:   make(chan struct{}),
		changed:    make(chan struct{}),
		giveUp:     make(chan struct{}),
		closed:     make(chan struct{}),
	}
	h.commands.start(h, cfg.OnCommand)
	if !cfg.NoRuntimeMetrics && !cfg.Observer {
		h.runtime = startRuntimeMetrics(h, cfg.Interval)
	}
	go h.pump()
	c := &Client{h: h}
	// A backstop only: a Client dropped without Close leaves and is freed.
	runtime.SetFinalizer(c, func(c *Client) { go func() { _ = c.h.close(context.Background(), false) }() })
	return c, nil
}

// with runs f with the live C client, or returns ErrStopped once the client is freed.
func (h *handle) with(f func(*C.sfc_client) error) error {
	h.mu.RLock()
	defer h.mu.RUnlock()
	if h.ptr == nil {
		return ErrStopped
	}
	return f(h.ptr)
}

// free releases the C client. It waits for calls in flight (the pump's ends with the stop).
func (h *handle) free() {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.ptr != nil {
		C.sfc_client_free(h.ptr)
		h.ptr = nil
	}
}

// pump delivers the client's events as they happen: it sits in sfc_client_next_event without
// a time limit, which returns with each event and with StatusStopped once the client is
// stopped. Commands go to the handler's queue, the rest to the Events channel.
func (h *handle) pump() {
	defer close(h.pumpDone)
	defer close(h.events)
	for {
		var ev *C.sfc_event
		err := h.with(func(p *C.sfc_client) error {
			return call(func() C.enum_sfc_status { return C.sfc_client_next_event(p, C.SFC_WAIT_FOREVER, &ev) })
		})
		h.pulls.Add(1)
		if err != nil {
			if isStatus(err, StatusNoEvent) {
				continue
			}
			return // stopped or freed
		}
		h.delivered.Add(1)
		kind := ev.kind
		text := C.GoString(ev.json)
		C.sfc_event_free(ev)
		h.dispatch(kind, text)
	}
}

func (h *handle) dispatch(kind C.enum_sfc_event_kind, text string) {
	var d struct {
		Registry string  `json:"registry"`
		Session  uint64  `json:"session"`
		Reason   string  `json:"reason"`
		Status   string  `json:"status"`
		Code     *string `json:"code"`
		Message  string  `json:"message"`
		Missed   uint64  `json:"missed"`
	}
	if kind == C.SFC_EVENT_KIND_COMMAND {
		var cmd Command
		if json.Unmarshal([]byte(text), &cmd) == nil {
			h.commands.enqueue(cmd)
		}
		return
	}
	if json.Unmarshal([]byte(text), &d) != nil {
		return
	}
	var ev ClientEvent
	switch kind {
	case C.SFC_EVENT_KIND_CONNECTED:
		ev = ClientEvent{Kind: EventConnected, Registry: d.Registry, Session: d.Session}
		h.setState(true, nil)
	case C.SFC_EVENT_KIND_DISCONNECTED:
		ev = ClientEvent{Kind: EventDisconnected, Registry: d.Registry, Reason: d.Reason}
		h.setState(false, &Error{Code: StatusUnreachable,
			Message: fmt.Sprintf("disconnected from %s: %s", d.Registry, d.Reason)})
	case C.SFC_EVENT_KIND_ERROR:
		e := &Error{Code: StatusUnreachable, Message: d.Message}
		if s, ok := statusByName[d.Status]; ok {
			e.Code = s
		}
		if d.Code != nil {
			e.RegistryCode = *d.Code
		}
		ev = ClientEvent{Kind: EventError, Err: e}
		h.setState(false, e)
	case C.SFC_EVENT_KIND_LAGGED:
		ev = ClientEvent{Kind: EventLagged, Missed: d.Missed}
	default:
		return
	}
	// Never block the pump on a reader that does not keep up: commands must still flow.
	select {
	case h.events <- ev:
	default:
	}
}

// setState records a connection change (err: why not connected, kept until connected).
func (h *handle) setState(connected bool, err *Error) {
	h.stateMu.Lock()
	defer h.stateMu.Unlock()
	if connected {
		h.connected, h.lastErr = true, nil
	} else {
		h.connected = false
		if err != nil {
			h.lastErr = err
		}
	}
	close(h.changed)
	h.changed = make(chan struct{})
}

func (h *handle) state() (bool, *Error, <-chan struct{}) {
	h.stateMu.Lock()
	defer h.stateMu.Unlock()
	return h.connected, h.lastErr, h.changed
}

// explain adds why the client is not connected to an error that comes from not being
// connected (a lookup or query that got no answer, a wait that ended).
func (h *handle) explain(err error) error {
	connected, last, _ := h.state()
	if connected || last == nil {
		return err
	}
	if e, ok := err.(*Error); ok {
		if e.Code != StatusUnreachable && e.Code != StatusTimeout {
			return err
		}
		return &Error{Code: e.Code, Message: e.Message + " (not connected: " + last.Message + ")",
			RegistryCode: last.RegistryCode, cause: e.cause}
	}
	// A context error: the wait ended; say what kept the client from connecting.
	return &Error{Code: last.Code, Message: "not connected: " + last.Message + " (" + err.Error() + ")",
		RegistryCode: last.RegistryCode, cause: err}
}

// Events is the stream of the client's connection events: EventConnected,
// EventDisconnected, EventError (a certificate the client does not trust, a refused hello,
// ...; the client keeps retrying), EventLagged. Events are delivered as they happen; the
// channel holds 64, and events that find it full are dropped (the client never waits for
// its reader). It is closed once the client is closed. Commands go to Config.OnCommand.
func (c *Client) Events() <-chan ClientEvent {
	return c.h.events
}

// ID is the instance's id, "<group>/<instance_id>" (empty for an observer).
func (c *Client) ID() string {
	var out *C.char
	err := c.h.with(func(p *C.sfc_client) error {
		return call(func() C.enum_sfc_status { return C.sfc_client_id(p, &out) })
	})
	runtime.KeepAlive(c)
	if err != nil {
		return ""
	}
	return takeString(out)
}

// Connected reports whether a session with a registry is established now.
func (c *Client) Connected() bool {
	var yes bool
	_ = c.h.with(func(p *C.sfc_client) error {
		yes = bool(C.sfc_client_is_connected(p))
		return nil
	})
	runtime.KeepAlive(c)
	return yes
}

// WaitConnected blocks until a session is established, the client is closed (ErrStopped) or
// ctx ends. When ctx ends first, the error says what kept the client from connecting: it
// carries the last connection problem's code (e.g. StatusTLS for a registry certificate
// the CA does not vouch for) and message, and errors.Is(err, ctx.Err()) holds.
func (c *Client) WaitConnected(ctx context.Context) error {
	defer runtime.KeepAlive(c)
	h := c.h
	for {
		if c.Connected() {
			return nil
		}
		connected, _, changed := h.state()
		if connected {
			return nil
		}
		select {
		case <-changed:
		case <-h.closed:
			return ErrStopped
		case <-h.pumpDone:
			return ErrStopped
		case <-ctx.Done():
			if c.Connected() {
				return nil
			}
			err := h.explain(ctx.Err())
			if err == ctx.Err() {
				return &Error{Code: StatusTimeout, Message: fmt.Sprintf("not connected to %v: %v", h.registries, err), cause: err}
			}
			return err
		}
	}
}

// SetHealth sets the health reported from now on; a change is sent at once.
func (c *Client) SetHealth(h Health, note string) error {
	n, err := optCstr("health note", note)
	if err != nil {
		return err
	}
	defer free(n)
	err = c.h.with(func(p *C.sfc_client) error {
		return call(func() C.enum_sfc_status { return C.sfc_client_set_health(p, C.int(h), n) })
	})
	runtime.KeepAlive(c)
	return err
}

// SetGauge sets a named gauge sent with every report. A name is 1 to 128 bytes with no "/",
// quote, backslash or control character (StatusInvalidArgument otherwise).
func (c *Client) SetGauge(name string, value float64) error {
	s, err := cstr("gauge name", name)
	if err != nil {
		return err
	}
	defer free(s)
	err = c.h.with(func(p *C.sfc_client) error {
		return call(func() C.enum_sfc_status { return C.sfc_client_set_gauge(p, s, C.double(value)) })
	})
	runtime.KeepAlive(c)
	return err
}

// SetRuntimeMetrics sets figures of the application's own sent with every report's runtime
// metrics. The Go runtime figures (unless Config.NoRuntimeMetrics) are added to them;
// another call replaces the previous figures; nil clears them. Names follow SetGauge's rule.
func (c *Client) SetRuntimeMetrics(m map[string]float64) error {
	if c.h.runtime != nil {
		err := c.h.runtime.setExtra(m)
		runtime.KeepAlive(c)
		return err
	}
	err := c.h.setRuntimeMetrics(m)
	runtime.KeepAlive(c)
	return err
}

func (h *handle) setRuntimeMetrics(m map[string]float64) error {
	if m == nil {
		m = map[string]float64{}
	}
	b, err := json.Marshal(m)
	if err != nil {
		return invalid("runtime metrics", err)
	}
	s, err := cstr("runtime metrics", string(b))
	if err != nil {
		return err
	}
	defer free(s)
	return h.with(func(p *C.sfc_client) error {
		return call(func() C.enum_sfc_status { return C.sfc_client_set_runtime_metrics(p, s) })
	})
}

// blocking runs a blocking C call on its own goroutine so that ctx can end the wait; the call
// itself finishes in the background within the client's connect timeout.
func blocking[T any](ctx context.Context, f func() (T, error)) (T, error) {
	type result struct {
		v   T
		err error
	}
	ch := make(chan result, 1)
	go func() {
		v, err := f()
		ch <- result{v, err}
	}()
	select {
	case r := <-ch:
		return r.v, r.err
	case <-ctx.Done():
		var zero T
		return zero, ctx.Err()
	}
}

// Lookup returns the instances of group from a local cache that a watch keeps current. The
// first lookup of a group waits for the registry; later ones do not. With the registry
// unreachable the cached answer comes back with Stale set; with nothing cached the error is
// StatusUnreachable and says what keeps the client from connecting.
func (c *Client) Lookup(ctx context.Context, group string, opts ...LookupOption) (LookupResult, error) {
	var o lookupOptions
	for _, f := range opts {
		f(&o)
	}
	g, err := cstr("group", group)
	if err != nil {
		return LookupResult{}, err
	}
	svc, err := optCstr("service", o.service)
	if err != nil {
		free(g)
		return LookupResult{}, err
	}
	tag, err := optCstr("tag", o.tag)
	if err != nil {
		free(g)
		free(svc)
		return LookupResult{}, err
	}
	r, err := blocking(ctx, func() (LookupResult, error) {
		defer free(g)
		defer free(svc)
		defer free(tag)
		var out *C.char
		var stale C.bool
		err := c.h.with(func(p *C.sfc_client) error {
			return call(func() C.enum_sfc_status {
				return C.sfc_client_lookup(p, g, C.bool(o.healthyOnly), svc, tag, &out, &stale)
			})
		})
		runtime.KeepAlive(c)
		if err != nil {
			return LookupResult{}, err
		}
		var r LookupResult
		if err := json.Unmarshal([]byte(takeString(out)), &r.Instances); err != nil {
			return LookupResult{}, err
		}
		r.Stale = bool(stale)
		return r, nil
	})
	if err != nil {
		return r, c.h.explain(err)
	}
	return r, nil
}

// Query asks the registry directly (no cache) for every instance matching f.
func (c *Client) Query(ctx context.Context, f Filter) ([]Instance, error) {
	b, err := json.Marshal(f)
	if err != nil {
		return nil, err
	}
	s, err := cstr("filter", string(b))
	if err != nil {
		return nil, err
	}
	list, err := blocking(ctx, func() ([]Instance, error) {
		defer free(s)
		var out *C.char
		err := c.h.with(func(p *C.sfc_client) error {
			return call(func() C.enum_sfc_status { return C.sfc_client_query(p, s, &out) })
		})
		runtime.KeepAlive(c)
		if err != nil {
			return nil, err
		}
		var list []Instance
		if err := json.Unmarshal([]byte(takeString(out)), &list); err != nil {
			return nil, err
		}
		return list, nil
	})
	if err != nil {
		return nil, c.h.explain(err)
	}
	return list, nil
}

// Watch streams the events of the instances matching f as they happen. The channel closes
// when ctx ends or the client is closed.
func (c *Client) Watch(ctx context.Context, f Filter) (<-chan Event, error) {
	b, err := json.Marshal(f)
	if err != nil {
		return nil, err
	}
	s, err := cstr("filter", string(b))
	if err != nil {
		return nil, err
	}
	defer free(s)
	var w *C.sfc_watch
	err = c.h.with(func(p *C.sfc_client) error {
		return call(func() C.enum_sfc_status { return C.sfc_client_watch(p, s, C.bool(f.Reports), &w) })
	})
	runtime.KeepAlive(c)
	if err != nil {
		return nil, err
	}
	ch := make(chan Event, 64)
	h := c.h
	go func() {
		// The watch keeps the C runtime alive on its own, so it needs no lock on the client;
		// a cancelled ctx wakes the blocked sfc_watch_next through sfc_watch_cancel.
		var mu sync.Mutex
		freed := false
		stop := context.AfterFunc(ctx, func() {
			mu.Lock()
			defer mu.Unlock()
			if !freed {
				C.sfc_watch_cancel(w)
			}
		})
		defer close(ch)
		defer func() {
			stop()
			mu.Lock()
			freed = true
			C.sfc_watch_free(w)
			mu.Unlock()
		}()
		for {
			var out *C.char
			err := call(func() C.enum_sfc_status { return C.sfc_watch_next(w, C.SFC_WAIT_FOREVER, &out) })
			h.pulls.Add(1)
			if err != nil {
				if isStatus(err, StatusNoEvent) {
					continue
				}
				return
			}
			h.delivered.Add(1)
			var ev Event
			if json.Unmarshal([]byte(takeString(out)), &ev) != nil {
				continue
			}
			select {
			case ch <- ev:
			case <-ctx.Done():
				return
			}
		}
	}()
	return ch, nil
}

// Close answers the command being handled (see Config.OnCommand), sends leave to the
// registry, waits for the registry to confirm it, and frees the client. Commands still
// queued are answered with an error. It returns nil once the leave is confirmed; an *Error
// with StatusTimeout when the registry did not confirm it within Config.StopTimeout (the
// client is closed all the same); ctx.Err() when ctx ends first (closing then finishes in
// the background).
//
// It may be called from any goroutine, more than once and concurrently: every call returns
// the result of the one close. Inside a command handler it answers that command first.
func (c *Client) Close(ctx context.Context) error {
	err := c.h.close(ctx, calledFromHandler())
	runtime.SetFinalizer(c, nil)
	runtime.KeepAlive(c)
	return err
}

func (h *handle) close(ctx context.Context, inHandler bool) error {
	h.closeMu.Lock()
	first := !h.closing
	h.closing = true
	h.closeMu.Unlock()
	current := h.commands.closing()
	if inHandler && current != nil {
		// The handler calling us cannot return its answer before we leave: answer now.
		h.commands.answer(current, nil, nil)
	}
	if first {
		go h.finish(current)
	}
	select {
	case <-h.closed:
		return h.closeErr
	case <-ctx.Done():
		select {
		case <-h.closed: // both ready: the handler's ctx ends with the close
			return h.closeErr
		default:
		}
		if first {
			close(h.giveUp)
		}
		return ctx.Err()
	}
}

// finish waits for the command being handled to be answered (its answer is then queued
// before the leave on the client's one ordered control channel), leaves, and frees.
func (h *handle) finish(current *inflight) {
	if current != nil {
		select {
		case <-current.answered:
		case <-h.giveUp:
			h.commands.stop() // the handler's ctx ends: no one waits for its answer now
		}
	}
	h.commands.closing()
	if h.runtime != nil {
		h.runtime.stop()
	}
	err := h.with(func(p *C.sfc_client) error {
		return call(func() C.enum_sfc_status { return C.sfc_client_stop(p) })
	})
	<-h.pumpDone
	h.free()
	h.closeErr = err
	close(h.closed)
	h.commands.stop()
}
