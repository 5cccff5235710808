//! `include/sfc.h` is generated from this crate and committed: this test regenerates it and
//! fails when the committed file differs. `SFC_BLESS=1` writes the new header instead
//! (`make header`).

use std::path::Path;

/// The header's version macros, from this crate's version.
fn version_macros() -> String {
    let v = env!("CARGO_PKG_VERSION");
    let core = v.split(['-', '+']).next().unwrap_or(v);
    let mut parts = core
        .split('.')
        .map(|p| p.parse::<u32>().expect("numeric version part"));
    let (major, minor, patch) = (
        parts.next().unwrap(),
        parts.next().unwrap(),
        parts.next().unwrap(),
    );
    format!(
        "\n/* The version this header belongs to; sfc_version() gives the library's. */\n\
         #define SFC_VERSION \"{v}\"\n\
         #define SFC_VERSION_MAJOR {major}\n\
         #define SFC_VERSION_MINOR {minor}\n\
         #define SFC_VERSION_PATCH {patch}\n"
    )
}

fn generate() -> String {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let config =
        cbindgen::Config::from_file(dir.join("cbindgen.toml")).expect("read ffi/cbindgen.toml");
    let bindings = cbindgen::Builder::new()
        .with_config(config)
        .with_after_include(version_macros())
        .with_crate(dir)
        .generate()
        .expect("cbindgen generates the header");
    let mut out = Vec::new();
    bindings.write(&mut out);
    String::from_utf8(out).expect("header is utf-8")
}

#[test]
fn committed_header_is_current() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../include/sfc.h");
    let fresh = generate();
    assert!(fresh.contains(&format!(
        "#define SFC_VERSION \"{}\"",
        env!("CARGO_PKG_VERSION")
    )));
    if std::env::var_os("SFC_BLESS").is_some() {
        std::fs::write(&path, &fresh).expect("write include/sfc.h");
        return;
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        committed == fresh,
        "include/sfc.h is out of date with ffi/src: run `make header` and commit the result"
    );
}
