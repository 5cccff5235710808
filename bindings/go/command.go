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
	"reflect"
	"runtime"
	"strings"
	"sync"
)

// commands runs Config.OnCommand: the event pump queues each command here (it never waits),
// and one goroutine answers them in order, so events keep flowing while a handler runs and a
// handler may call Close.
type commands struct {
	h       *handle
	handler func(context.Context, Command) (any, error)
	ctx     context.Context
	cancel  context.CancelFunc

	mu      sync.Mutex
	wake    *sync.Cond
	queue   []Command
	current *inflight
	stopped bool
}

// inflight is the command being handled; answered closes once its answer is queued in C.
type inflight struct {
	id       uint64
	once     sync.Once
	answered chan struct{}
}

func (q *commands) start(h *handle, handler func(context.Context, Command) (any, error)) {
	q.h, q.handler = h, handler
	q.ctx, q.cancel = context.WithCancel(context.Background())
	q.wake = sync.NewCond(&q.mu)
	go q.serve()
}

func (q *commands) enqueue(cmd Command) {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.stopped {
		go q.answer(&inflight{id: cmd.ID, answered: make(chan struct{})}, nil, errClosing)
		return
	}
	q.queue = append(q.queue, cmd)
	q.wake.Signal()
}

var errClosing = fmt.Errorf("the client is closing")

// closing refuses further commands and answers the queued ones with an error; it returns the
// command being handled, if any.
func (q *commands) closing() *inflight {
	q.mu.Lock()
	queued := q.queue
	q.queue = nil
	q.stopped = true
	cur := q.current
	q.wake.Broadcast()
	q.mu.Unlock()
	for _, cmd := range queued {
		q.answer(&inflight{id: cmd.ID, answered: make(chan struct{})}, nil, errClosing)
	}
	return cur
}

// stop ends the handlers' context; called once Close no longer waits for an answer.
func (q *commands) stop() {
	q.closing()
	q.cancel()
}

func (q *commands) serve() {
	for {
		q.mu.Lock()
		for len(q.queue) == 0 && !q.stopped {
			q.wake.Wait()
		}
		if q.stopped {
			q.mu.Unlock()
			return
		}
		cmd := q.queue[0]
		q.queue = q.queue[1:]
		cur := &inflight{id: cmd.ID, answered: make(chan struct{})}
		q.current = cur
		q.mu.Unlock()

		var v any
		var err error
		if q.handler == nil {
			err = fmt.Errorf("no command handler is installed for %q", cmd.Name)
		} else {
			v, err = runHandler(q.handler, q.ctx, cmd)
		}
		q.answer(cur, v, err)
		q.mu.Lock()
		q.current = nil
		q.mu.Unlock()
	}
}

// answer sends a command's result (or error) once; later answers of the same command are
// dropped (Close inside a handler answers before the handler returns).
func (q *commands) answer(cur *inflight, v any, err error) {
	cur.once.Do(func() {
		defer close(cur.answered)
		ok := err == nil
		var payload string
		if ok {
			b, merr := json.Marshal(v)
			if merr != nil {
				ok, payload = false, fmt.Sprintf("cannot encode the result of command %d: %v", cur.id, merr)
			} else {
				payload = string(b)
			}
		} else {
			payload = err.Error()
		}
		// An error text is plain text for C: a NUL in it would cut it short.
		s := C.CString(strings.ReplaceAll(payload, "\x00", "?"))
		defer free(s)
		_ = q.h.with(func(p *C.sfc_client) error {
			return call(func() C.enum_sfc_status { return C.sfc_client_respond(p, C.uint64_t(cur.id), C.bool(ok), s) })
		})
	})
}

// runHandler keeps a panicking handler from taking the client down; the panic becomes the
// command's error. Its name is how calledFromHandler recognises a handler's goroutine.
func runHandler(handler func(context.Context, Command) (any, error), ctx context.Context, cmd Command) (v any, err error) {
	defer func() {
		if r := recover(); r != nil {
			v, err = nil, fmt.Errorf("command handler for %q panicked: %v", cmd.Name, r)
		}
	}()
	return handler(ctx, cmd)
}

var runHandlerName = runtime.FuncForPC(reflect.ValueOf(runHandler).Pointer()).Name()

// calledFromHandler tells whether the calling goroutine is inside Config.OnCommand: Close
// must then not wait for that handler's answer, which can only come after Close returns.
func calledFromHandler() bool {
	pcs := make([]uintptr, 256)
	n := runtime.Callers(2, pcs)
	frames := runtime.CallersFrames(pcs[:n])
	for {
		f, more := frames.Next()
		if f.Function == runHandlerName {
			return true
		}
		if !more {
			return false
		}
	}
}
