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
// Memory: no Go pointer is ever passed into C. Strings go in as C copies freed after each
// call, results come back as C strings copied into Go and freed at once, and the library never
// calls back into Go: events and commands are pulled by a goroutine (see Client.OnCommand), so
// there is no callback and nothing for a handle table to guard. Every C call is followed by
// runtime.KeepAlive of the Go object that owns the C handle, and a finalizer frees a Client
// that was never closed, as a backstop only.
package sfc

/*
#include <stdlib.h>
#include "sfc.h"
*/
import "C"

import (
	"fmt"
	"runtime"
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

// String is the status's constant name, e.g. "invalid-argument".
func (s Status) String() string {
	return C.GoString(C.sfc_status_name(C.int(s)))
}

// Error is what every failing call returns: the C status code and the library's message,
// which says what failed and with which value (the same text as in C, Rust and Node.js).
type Error struct {
	Code    Status
	Message string
}

func (e *Error) Error() string { return e.Message }

// Is makes errors.Is(err, sfc.ErrStopped) and friends compare by code.
func (e *Error) Is(target error) bool {
	t, ok := target.(*Error)
	return ok && t.Code == e.Code
}

// ErrStopped is returned (compare with errors.Is) by calls on a stopped or closed client.
var ErrStopped = &Error{Code: StatusStopped, Message: "stopped"}

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

// cstr copies s into C memory; the caller frees it with free.
func cstr(s string) *C.char { return C.CString(s) }

func free(p *C.char) { C.free(unsafe.Pointer(p)) }

// takeString copies a string the library returned and frees it.
func takeString(p *C.char) string {
	s := C.GoString(p)
	C.sfc_string_free(p)
	return s
}

func invalid(what string, v any) error {
	return &Error{Code: StatusInvalidArgument, Message: fmt.Sprintf("invalid %s: %v", what, v)}
}
