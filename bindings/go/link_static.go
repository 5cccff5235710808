//go:build cgo && !sfc_shared

package sfc

// libsfc.a, named by its path in pkg-config's sfc-static module: a program links the library
// into itself and needs no libsfc.so at run time, even where both are installed (-lsfc would
// pick the shared one). Build with -tags sfc_shared to link libsfc.so instead (link_shared.go).

/*
#cgo pkg-config: sfc-static
*/
import "C"
