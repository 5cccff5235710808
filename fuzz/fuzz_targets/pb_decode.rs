//! The binary codec on raw bytes: one frame payload of a session that negotiated `protobuf`
//! and `zstd` (the one-byte frame header, then a protobuf `Frame`, maybe zstd-compressed), as
//! `FrameReader` decodes it. Errors must carry a decoding code and a message; what decodes
//! must re-encode and decode again (in protobuf and in JSON) to the same message type, and is
//! applied to the registry as a session would.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sfc_registry::protocol::{Codec, Compression, ErrorCode, Wire};
use sfc_registry::registry::Registry;

thread_local! {
    static REG: Registry = sfc_fuzz::registry();
}

const LIMIT: usize = 1024 * 1024;

fuzz_target!(|data: &[u8]| {
    let wire = Wire::new(Codec::Protobuf, Some(Compression::Zstd));
    match wire.decode(data, LIMIT) {
        Ok(m) => {
            let again = wire
                .decode(&wire.encode(&m), usize::MAX)
                .expect("our own protobuf encoding decodes");
            assert_eq!(
                again.name(),
                m.name(),
                "protobuf round trip changed the message type"
            );
            sfc_fuzz::check_round_trip(&m);
            REG.with(|reg| sfc_fuzz::apply(reg, m));
        }
        Err(e) => sfc_fuzz::check_error(
            &e,
            &[
                ErrorCode::EmptyFrame,
                ErrorCode::InvalidMessage,
                ErrorCode::UnknownMessage,
                ErrorCode::FrameTooLarge,
            ],
        ),
    }
});
