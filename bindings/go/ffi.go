// Package sfc is the Go binding of the Service Fleet Control client: a service registers with
// a registry, reports its health, gauges and metrics every interval, looks up and watches
// other services, and answers commands such as shutdown.
//
// It is built over cgo on the C ABI (sfc.h) of libsfc, found through pkg-config: by default
// the module sfc-static (libsfc.a, so that programs need no libsfc.so at run time; see
// link_static.go), with the build tag sfc_shared the module sfc (libsfc.so). Point
// PKG_CONFIG_PATH at <prefix>/lib/pkgconfig of an installed libsfc (`make install
// PREFIX=...` or the libsfc-<version>-<target>.tar.gz release). A build without cgo fails
// with a message saying so (cgo_required.go).
//
// Memory and threads: no Go pointer is ever passed into C. Strings go in as C copies freed
// after each call, results come back as C strings copied into Go and freed at once. The
// library never calls back into Go: one goroutine per client (and one per watch) sits in a
// blocking C call (sfc_client_next_event / sfc_watch_next with SFC_WAIT_FOREVER) that sleeps
// on the Rust side's channel until an event arrives, so events are delivered when they
// happen, with no polling and no timer. wasmtime-go calls exported Go functions through a
// handle table instead; that suits callbacks made synchronously on a goroutine's own thread,
// while ours originate on the client's Rust runtime thread, where a callback would run Go
// code on a foreign thread. A parked cgo call costs one idle OS thread and no wake-ups.
// Every C call is followed by runtime.KeepAlive of the Go object that owns the C handle, and
// a finalizer closes a Client that was never closed, as a backstop only.
package sfc

/*
#include <stdlib.h>
#include "sfc.h"
*/
import "C"

import (
	"fmt"
	"runtime"
	"strings"
	"unsafe"
)

// Version is the version of the C library this package is linked with.
func Version() string {
	return C.GoString(C.sfc_version())
}

// Status is the C ABI's status code (sfc_status); its numbers never change meaning.
type Status int

const (
	StatusOK              Status = C.SFC_STATUS_OK
	StatusNullArgument    Status = C.SFC_STATUS_NULL_ARGUMENT
	StatusInvalidUTF8     Status = C.SFC_STATUS_INVALID_UTF8
	StatusInvalidArgument Status = C.SFC_STATUS_INVALID_ARGUMENT
	StatusInvalidJSON     Status = C.SFC_STATUS_INVALID_JSON
	StatusFile            Status = C.SFC_STATUS_FILE
	StatusTLS             Status = C.SFC_STATUS_TLS
	StatusIO              Status = C.SFC_STATUS_IO
	StatusRemote          Status = C.SFC_STATUS_REMOTE
	StatusProtocol        Status = C.SFC_STATUS_PROTOCOL
	StatusUnreachable     Status = C.SFC_STATUS_UNREACHABLE
	StatusTimeout         Status = C.SFC_STATUS_TIMEOUT
	StatusStopped         Status = C.SFC_STATUS_STOPPED
	StatusNoEvent         Status = C.SFC_STATUS_NO_EVENT
	StatusPanic           Status = C.SFC_STATUS_PANIC
)

// String is the status's constant name, e.g. "invalid-argument" (sfc_status_name in C).
func (s Status) String() string {
	return C.GoString(C.sfc_status_name(C.int(s)))
}

// statusByName maps sfc_status_name back to the status (error events carry the name).
var statusByName = func() map[string]Status {
	m := map[string]Status{}
	for s := StatusOK; s <= StatusPanic; s++ {
		m[s.String()] = s
	}
	return m
}()

// Error is what every failing call returns, and what an EventError carries: the C status
// code and the library's message, which says what failed and with which value (the same text
// as in C, Rust and Node.js).
type Error struct {
	Code    Status
	Message string
	// RegistryCode is the registry's protocol error code ("not-authorized",
	// "invalid-field", ...) when the registry sent one; empty otherwise.
	RegistryCode string
	// cause is what ended a wait (context.DeadlineExceeded...), for errors.Is.
	cause error
}

func (e *Error) Error() string { return e.Message }

// Is makes errors.Is(err, sfc.ErrStopped) and friends compare by code.
func (e *Error) Is(target error) bool {
	t, ok := target.(*Error)
	return ok && t.Code == e.Code
}

// Unwrap gives the context error that ended a wait, when there is one, so that
// errors.Is(err, context.DeadlineExceeded) holds for WaitConnected's error.
func (e *Error) Unwrap() error { return e.cause }

// Sentinels to compare with errors.Is; each matches every *Error with its code.
var (
	ErrInvalidArgument = &Error{Code: StatusInvalidArgument, Message: "invalid-argument"}
	ErrFile            = &Error{Code: StatusFile, Message: "file"}
	ErrTLS             = &Error{Code: StatusTLS, Message: "tls"}
	ErrIO              = &Error{Code: StatusIO, Message: "io"}
	ErrRemote          = &Error{Code: StatusRemote, Message: "remote"}
	ErrProtocol        = &Error{Code: StatusProtocol, Message: "protocol"}
	ErrUnreachable     = &Error{Code: StatusUnreachable, Message: "unreachable"}
	ErrTimeout         = &Error{Code: StatusTimeout, Message: "timeout"}
	// ErrStopped is returned by calls on a closed client.
	ErrStopped = &Error{Code: StatusStopped, Message: "stopped"}
)

// call runs one C call and, on failure, reads its message on the same OS thread (the message
// is thread-local in C, and a goroutine may otherwise move between threads).
func call(f func() C.enum_sfc_status) error {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	s := f()
	if s == C.SFC_STATUS_OK {
		return nil
	}
	return &Error{Code: Status(s), Message: C.GoString(C.sfc_last_error_message())}
}

// isStatus tells whether err is an *Error with code s.
func isStatus(err error, s Status) bool {
	e, ok := err.(*Error)
	return ok && e.Code == s
}

// cstr copies s into C memory for the argument named what; the caller frees it with free.
// A NUL byte would cut the string short in C, so it is refused, naming the argument.
func cstr(what, s string) (*C.char, error) {
	if i := strings.IndexByte(s, 0); i >= 0 {
		return nil, &Error{Code: StatusInvalidArgument,
			Message: fmt.Sprintf("invalid %s: %q contains a NUL byte at offset %d", what, s, i)}
	}
	return C.CString(s), nil
}

// optCstr is cstr for an optional argument: "" gives NULL.
func optCstr(what, s string) (*C.char, error) {
	if s == "" {
		return nil, nil
	}
	return cstr(what, s)
}

func free(p *C.char) {
	if p != nil {
		C.free(unsafe.Pointer(p))
	}
}

// takeString copies a string the library returned and frees it.
func takeString(p *C.char) string {
	s := C.GoString(p)
	C.sfc_string_free(p)
	return s
}

func invalid(what string, v any) error {
	return &Error{Code: StatusInvalidArgument, Message: fmt.Sprintf("invalid %s: %v", what, v)}
}
