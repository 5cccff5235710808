//go:build cgo && sfc_shared

package sfc

// With the build tag sfc_shared, libsfc.so through pkg-config's sfc module (-lsfc): the
// program then needs libsfc.so.<major> at run time, from the loader's path (ldconfig) or
// LD_LIBRARY_PATH.

/*
#cgo pkg-config: sfc
*/
import "C"
