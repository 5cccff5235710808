//! The handshake, as the registry's session runs it on a new connection: the first byte tells
//! a legacy document (`{` or whitespace) from a v1 preamble; the preamble is parsed and a
//! version negotiated; the first frame must be a hello, which is validated (codec, interval,
//! role, registration limits) by the registry's own `check_hello`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sfc_registry::protocol::connection::{FrameReader, ReadError};
use sfc_registry::protocol::frame::{self, PREAMBLE_LEN};
use sfc_registry::protocol::{legacy, ErrorCode, Message};
use sfc_registry::registry::Registry;
use sfc_fuzz::{block_on, check_error, check_hello, Chunked, DECODE_CODES};

thread_local! {
    static REG: Registry = sfc_fuzz::registry();
}

fuzz_target!(|data: &[u8]| {
    let Some(&first) = data.first() else { return };
    if first == b'{' || first.is_ascii_whitespace() {
        // serve_legacy: parse, then the same limits a v1 hello gets.
        match legacy::parse(data) {
            Ok(doc) => {
                let _ = sfc_registry::limits::check_registration(&doc.registration)
                    .and_then(|_| sfc_registry::limits::check_interval_ms(doc.interval_ms));
            }
            Err(e) => check_error(
                &e,
                &[
                    ErrorCode::BadJson,
                    ErrorCode::UnknownMessage,
                    ErrorCode::InvalidField,
                ],
            ),
        }
        return;
    }
    let Some(pre) = data.get(..PREAMBLE_LEN) else {
        return;
    };
    let pre: [u8; PREAMBLE_LEN] = pre.try_into().unwrap();
    let version = match frame::parse_preamble(&pre)
        .and_then(|(lo, hi)| frame::negotiate_version(lo, hi))
    {
        Ok(v) => v,
        Err(e) => return check_error(&e, &[ErrorCode::BadPreamble, ErrorCode::UnsupportedVersion]),
    };
    assert!((frame::PROTOCOL_MIN..=frame::PROTOCOL_MAX).contains(&version));
    REG.with(|reg| {
        block_on(async {
            let mut reader =
                FrameReader::new(Chunked::new(&data[PREAMBLE_LEN..]), reg.config().max_frame);
            match reader.next().await {
                Some(Ok(Message::Hello(h))) => check_hello(reg, h),
                Some(Ok(_)) => {} // refused with unexpected-message
                Some(Err(ReadError::Protocol(e))) => {
                    let mut codes = DECODE_CODES.to_vec();
                    codes.push(ErrorCode::FrameTooLarge);
                    check_error(&e, &codes)
                }
                None | Some(Err(ReadError::Io(_))) => {}
            }
        })
    })
});
