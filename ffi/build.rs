//! libsfc.so's link arguments (Linux): the SONAME `libsfc.so.<major>` from the crate's version,
//! and a version script that exports the `sfc_*` functions only (everything else, Rust's and the
//! vendored C code's - zstd, ring - stays local to the library).

use std::{env, fs, path::PathBuf};

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    if env::var("CARGO_CFG_TARGET_OS").as_deref() != Ok("linux") {
        return;
    }
    let major = env::var("CARGO_PKG_VERSION_MAJOR").expect("cargo sets CARGO_PKG_VERSION_MAJOR");
    println!("cargo:rustc-cdylib-link-arg=-Wl,-soname,libsfc.so.{major}");
    let script =
        PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets OUT_DIR")).join("libsfc.map");
    fs::write(&script, "{\n  global: sfc_*;\n  local: *;\n};\n").expect("write the version script");
    println!(
        "cargo:rustc-cdylib-link-arg=-Wl,--version-script={}",
        script.display()
    );
}
