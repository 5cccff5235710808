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
	"time"
)

// eventPoll bounds how long one pull of the event queue blocks, so Close is never kept
// waiting longer than this.
const eventPoll = 250 * time.Millisecond

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

	closeOnce sync.Once
	closeErr  error
	closing   chan struct{}
	pumpDone  chan struct{}

	cmdMu     sync.RWMutex
	onCommand func(Command) Result
}

// Start starts a client. It does not wait for the registry: connecting and reconnecting
// happen in the background (see WaitConnected). It fails at once on bad settings, e.g. an
// unreadable CA file (StatusFile) or a missing group (StatusInvalidArgument). ctx only bounds
// the start itself.
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
	h := &handle{ptr: ptr, closing: make(chan struct{}), pumpDone: make(chan struct{})}
	go h.pump()
	c := &Client{h: h}
	// A backstop only: a Client dropped without Close is freed (without a leave).
	runtime.SetFinalizer(c, func(c *Client) { c.h.free() })
	return c, nil
}

func setString(cc *C.sfc_config, v string, f func(*C.sfc_config, *C.char) C.enum_sfc_status) error {
	if v == "" {
		return nil
	}
	s := cstr(v)
	defer free(s)
	return call(func() C.enum_sfc_status { return f(cc, s) })
}

func apply(cc *C.sfc_config, cfg Config) error {
	steps := []func() error{
		func() error {
			if cfg.IgnoreEnv {
				return call(func() C.enum_sfc_status { return C.sfc_config_ignore_env(cc) })
			}
			return nil
		},
		func() error {
			return setString(cc, "sfc-go/"+Version(), func(c *C.sfc_config, s *C.char) C.enum_sfc_status { return C.sfc_config_set_client_name(c, s) })
		},
		func() error {
			for _, r := range cfg.Registries {
				if err := setString(cc, r, func(c *C.sfc_config, s *C.char) C.enum_sfc_status { return C.sfc_config_add_registry(c, s) }); err != nil {
					return err
				}
			}
			return nil
		},
		func() error {
			return setString(cc, cfg.Group, func(c *C.sfc_config, s *C.char) C.enum_sfc_status { return C.sfc_config_set_group(c, s) })
		},
		func() error {
			return setString(cc, cfg.Service, func(c *C.sfc_config, s *C.char) C.enum_sfc_status { return C.sfc_config_set_service(c, s) })
		},
		func() error {
			return setString(cc, cfg.InstanceID, func(c *C.sfc_config, s *C.char) C.enum_sfc_status { return C.sfc_config_set_instance_id(c, s) })
		},
		func() error {
			return setString(cc, cfg.Hostname, func(c *C.sfc_config, s *C.char) C.enum_sfc_status { return C.sfc_config_set_hostname(c, s) })
		},
		func() error {
			if cfg.Interval < 0 {
				return invalid("interval", cfg.Interval)
			}
			if cfg.Interval > 0 {
				return call(func() C.enum_sfc_status {
					return C.sfc_config_set_interval_ms(cc, C.uint64_t(cfg.Interval.Milliseconds()))
				})
			}
			return nil
		},
		func() error {
			for _, e := range cfg.Endpoints {
				name, host, proto := cstr(e.Name), cstr(e.Host), (*C.char)(nil)
				if e.Protocol != "" {
					proto = cstr(e.Protocol)
				}
				err := call(func() C.enum_sfc_status { return C.sfc_config_add_endpoint(cc, name, host, C.uint16_t(e.Port), proto) })
				free(name)
				free(host)
				if proto != nil {
					free(proto)
				}
				if err != nil {
					return err
				}
			}
			return nil
		},
		func() error {
			for _, t := range cfg.Tags {
				s := cstr(t)
				err := call(func() C.enum_sfc_status { return C.sfc_config_add_tag(cc, s) })
				free(s)
				if err != nil {
					return err
				}
			}
			return nil
		},
		func() error {
			for k, v := range cfg.Metadata {
				ks, vs := cstr(k), cstr(v)
				err := call(func() C.enum_sfc_status { return C.sfc_config_set_metadata(cc, ks, vs) })
				free(ks)
				free(vs)
				if err != nil {
					return err
				}
			}
			return nil
		},
		func() error {
			return setString(cc, cfg.Version, func(c *C.sfc_config, s *C.char) C.enum_sfc_status { return C.sfc_config_set_version(c, s) })
		},
		func() error {
			if cfg.API == nil {
				return nil
			}
			k, u := cstr(cfg.API.Kind), cstr(cfg.API.URL)
			defer free(k)
			defer free(u)
			return call(func() C.enum_sfc_status { return C.sfc_config_set_api(cc, k, u) })
		},
		func() error {
			return setString(cc, cfg.CA, func(c *C.sfc_config, s *C.char) C.enum_sfc_status { return C.sfc_config_set_ca(c, s) })
		},
		func() error {
			return setString(cc, cfg.Cert, func(c *C.sfc_config, s *C.char) C.enum_sfc_status { return C.sfc_config_set_cert(c, s) })
		},
		func() error {
			return setString(cc, cfg.Key, func(c *C.sfc_config, s *C.char) C.enum_sfc_status { return C.sfc_config_set_key(c, s) })
		},
		func() error {
			if !cfg.InsecurePlaintext {
				return nil
			}
			return call(func() C.enum_sfc_status { return C.sfc_config_set_insecure_plaintext(cc, true) })
		},
		func() error {
			if cfg.ConnectTimeout <= 0 {
				return nil
			}
			return call(func() C.enum_sfc_status {
				return C.sfc_config_set_connect_timeout_ms(cc, C.uint64_t(cfg.ConnectTimeout.Milliseconds()))
			})
		},
		func() error {
			if cfg.StopTimeout <= 0 {
				return nil
			}
			return call(func() C.enum_sfc_status {
				return C.sfc_config_set_stop_timeout_ms(cc, C.uint64_t(cfg.StopTimeout.Milliseconds()))
			})
		},
		func() error {
			if !cfg.NoMetrics {
				return nil
			}
			return call(func() C.enum_sfc_status { return C.sfc_config_set_sample_metrics(cc, false) })
		},
	}
	for _, step := range steps {
		if err := step(); err != nil {
			return err
		}
	}
	return nil
}

// with runs f with the live C client, or returns ErrStopped once the client is closed.
func (h *handle) with(f func(*C.sfc_client) error) error {
	h.mu.RLock()
	defer h.mu.RUnlock()
	if h.ptr == nil {
		return ErrStopped
	}
	return f(h.ptr)
}

// free releases the C client (no leave). Idempotent.
func (h *handle) free() {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.ptr != nil {
		C.sfc_client_free(h.ptr)
		h.ptr = nil
	}
}

// pump pulls events from C and answers commands with the OnCommand handler.
func (h *handle) pump() {
	defer close(h.pumpDone)
	for {
		select {
		case <-h.closing:
			return
		default:
		}
		var ev *C.sfc_event
		err := h.with(func(p *C.sfc_client) error {
			return call(func() C.enum_sfc_status { return C.sfc_client_next_event(p, C.uint64_t(eventPoll.Milliseconds()), &ev) })
		})
		if err != nil {
			if e, ok := err.(*Error); ok && e.Code == StatusNoEvent {
				continue
			}
			return // stopped or freed
		}
		kind := ev.kind
		text := C.GoString(ev.json)
		C.sfc_event_free(ev)
		if kind == C.SFC_EVENT_KIND_COMMAND {
			h.answer(text)
		}
	}
}

func (h *handle) answer(text string) {
	var cmd Command
	if err := json.Unmarshal([]byte(text), &cmd); err != nil {
		return
	}
	h.cmdMu.RLock()
	handler := h.onCommand
	h.cmdMu.RUnlock()
	res := Result{Err: fmt.Errorf("no command handler for %q", cmd.Name)}
	if handler != nil {
		res = runHandler(handler, cmd)
	}
	ok := res.Err == nil
	var payload string
	if ok {
		b, err := json.Marshal(res.Value)
		if err != nil {
			ok, payload = false, fmt.Sprintf("cannot encode the result of command %q: %v", cmd.Name, err)
		} else {
			payload = string(b)
		}
	} else {
		payload = res.Err.Error()
	}
	s := cstr(payload)
	defer free(s)
	_ = h.with(func(p *C.sfc_client) error {
		return call(func() C.enum_sfc_status { return C.sfc_client_respond(p, C.uint64_t(cmd.ID), C.bool(ok), s) })
	})
}

// runHandler keeps a panicking handler from taking the pump down; the panic becomes the
// command's error.
func runHandler(handler func(Command) Result, cmd Command) (res Result) {
	defer func() {
		if r := recover(); r != nil {
			res = Result{Err: fmt.Errorf("command handler for %q panicked: %v", cmd.Name, r)}
		}
	}()
	return handler(cmd)
}

// OnCommand sets the function that answers commands ("shutdown" or application-defined).
// It runs on a goroutine of the client, one command at a time; keep it short. Without a
// handler, commands are answered with an error.
func (c *Client) OnCommand(handler func(Command) Result) {
	c.h.cmdMu.Lock()
	c.h.onCommand = handler
	c.h.cmdMu.Unlock()
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

// WaitConnected blocks until a session is established or ctx ends.
func (c *Client) WaitConnected(ctx context.Context) error {
	for {
		err := c.h.with(func(p *C.sfc_client) error {
			return call(func() C.enum_sfc_status { return C.sfc_client_wait_connected(p, C.uint64_t(eventPoll.Milliseconds())) })
		})
		runtime.KeepAlive(c)
		if e, ok := err.(*Error); !ok || e.Code != StatusTimeout {
			return err
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
	}
}

// SetHealth sets the health reported from now on; a change is sent at once.
func (c *Client) SetHealth(h Health, note string) error {
	var n *C.char
	if note != "" {
		n = cstr(note)
		defer free(n)
	}
	err := c.h.with(func(p *C.sfc_client) error {
		return call(func() C.enum_sfc_status { return C.sfc_client_set_health(p, C.int(h), n) })
	})
	runtime.KeepAlive(c)
	return err
}

// SetGauge sets a named gauge sent with every report.
func (c *Client) SetGauge(name string, value float64) error {
	s := cstr(name)
	defer free(s)
	err := c.h.with(func(p *C.sfc_client) error {
		return call(func() C.enum_sfc_status { return C.sfc_client_set_gauge(p, s, C.double(value)) })
	})
	runtime.KeepAlive(c)
	return err
}

// SetRuntimeMetrics replaces the Go runtime figures sent with every report.
func (c *Client) SetRuntimeMetrics(m map[string]float64) error {
	b, err := json.Marshal(m)
	if err != nil {
		return invalid("runtime metrics", err)
	}
	s := cstr(string(b))
	defer free(s)
	err = c.h.with(func(p *C.sfc_client) error {
		return call(func() C.enum_sfc_status { return C.sfc_client_set_runtime_metrics(p, s) })
	})
	runtime.KeepAlive(c)
	return err
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
// unreachable the cached answer comes back with Stale set.
func (c *Client) Lookup(ctx context.Context, group string, opts ...LookupOption) (LookupResult, error) {
	var o lookupOptions
	for _, f := range opts {
		f(&o)
	}
	return blocking(ctx, func() (LookupResult, error) {
		g := cstr(group)
		defer free(g)
		var svc, tag *C.char
		if o.service != "" {
			svc = cstr(o.service)
			defer free(svc)
		}
		if o.tag != "" {
			tag = cstr(o.tag)
			defer free(tag)
		}
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
}

// Query asks the registry directly (no cache) for every instance matching f.
func (c *Client) Query(ctx context.Context, f Filter) ([]Instance, error) {
	b, err := json.Marshal(f)
	if err != nil {
		return nil, err
	}
	return blocking(ctx, func() ([]Instance, error) {
		s := cstr(string(b))
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
}

// Watch streams the events of the instances matching f. The channel closes when ctx ends or
// the client is closed.
func (c *Client) Watch(ctx context.Context, f Filter) (<-chan Event, error) {
	b, err := json.Marshal(f)
	if err != nil {
		return nil, err
	}
	s := cstr(string(b))
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
	go func() {
		// The watch keeps the C runtime alive on its own, so it needs no lock on the client.
		defer close(ch)
		defer C.sfc_watch_free(w)
		for ctx.Err() == nil {
			var out *C.char
			err := call(func() C.enum_sfc_status { return C.sfc_watch_next(w, C.uint64_t(eventPoll.Milliseconds()), &out) })
			if err != nil {
				if e, ok := err.(*Error); ok && e.Code == StatusNoEvent {
					continue
				}
				return
			}
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

// Close sends leave to the registry, stops the client and frees it. It is idempotent: later
// calls return the first call's result.
func (c *Client) Close() error {
	h := c.h
	h.closeOnce.Do(func() {
		h.closeErr = h.with(func(p *C.sfc_client) error {
			return call(func() C.enum_sfc_status { return C.sfc_client_stop(p) })
		})
		close(h.closing)
		<-h.pumpDone
		h.free()
		runtime.SetFinalizer(c, nil)
	})
	runtime.KeepAlive(c)
	return h.closeErr
}
