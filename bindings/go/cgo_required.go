//go:build !cgo

package sfc

// This package calls the C library libsfc through cgo; without cgo (CGO_ENABLED=0, or a
// cross-compilation with no C toolchain) it cannot be built. The identifier below is left
// undefined on purpose, so that such a build fails with this message rather than with
// "undefined: sfc.Start". Build with CGO_ENABLED=1 and a C compiler, and with
// PKG_CONFIG_PATH naming the pkgconfig directory of an installed libsfc
// (<prefix>/lib/pkgconfig, from `make install PREFIX=...` or the libsfc release tarball).
var _ = sfc_go_binding_needs_cgo__build_with_CGO_ENABLED_1_and_libsfc_from_pkg_config
