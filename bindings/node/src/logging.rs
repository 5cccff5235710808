//! Native log output. The JavaScript side decides from `DEBUG` (the original module's
//! namespaces `SFC`, `SFC_client`, `SFC_registry`) which tracing targets to show, and this
//! installs one stderr subscriber for them. Without a call nothing is installed and the core's
//! tracing macros cost a relaxed load each.

use napi::bindgen_prelude::*;
use napi_derive::napi;

/// Shows the core's logs for `directives`, an `EnvFilter` string such as
/// `sfc::client=debug,sfc::registry=debug`. Only the first call installs a subscriber; returns
/// whether this one did.
#[napi]
pub fn enable_native_logs(directives: String) -> Result<bool> {
    let filter = tracing_subscriber::EnvFilter::try_new(&directives)
        .map_err(|e| crate::boundary::invalid("log directives", format!("{directives:?}: {e}")))?;
    Ok(tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .try_init()
        .is_ok())
}
