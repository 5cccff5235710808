//! Every message decoder, on raw bytes: `Codec::Json.decode` of one frame payload. A decoded
//! hello goes through the handshake's validation and a decoded report is applied to a
//! registered instance, as a session does.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sfc_registry::registry::Registry;

thread_local! {
    static REG: Registry = sfc_fuzz::registry();
}

fuzz_target!(|data: &[u8]| {
    if let Some(m) = sfc_fuzz::decode_checked(data) {
        REG.with(|reg| sfc_fuzz::apply(reg, m));
    }
});
