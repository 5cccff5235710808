//! The frame decoder: arbitrary bytes after the preamble, arriving in pieces, read by the
//! same `FrameReader` a session reads with (u32 big-endian length prefix, the limit, then the
//! JSON codec). Every frame is either a message we can encode back or a protocol error with
//! a code and a message; a frame over the limit ends the stream like it ends a session.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sfc_registry::protocol::connection::{FrameReader, ReadError};
use sfc_registry::protocol::ErrorCode;
use sfc_fuzz::{block_on, check_error, check_round_trip, Chunked, DECODE_CODES};

/// Small, so the fuzzer reaches the limit with small inputs.
const MAX_FRAME: usize = 4096;

fuzz_target!(|data: &[u8]| {
    block_on(async {
        let mut reader = FrameReader::new(Chunked::new(data), MAX_FRAME);
        // A frame takes at least 4 bytes, so this bounds the loop.
        for _ in 0..=data.len() / 4 + 1 {
            match reader.next().await {
                None => return,
                Some(Ok(m)) => check_round_trip(&m),
                Some(Err(ReadError::Protocol(e))) if e.code == ErrorCode::FrameTooLarge => {
                    check_error(&e, &[ErrorCode::FrameTooLarge]);
                    assert!(e.message.contains(&MAX_FRAME.to_string()), "{e}");
                    return;
                }
                Some(Err(ReadError::Protocol(e))) => check_error(&e, DECODE_CODES),
                // The stream ended inside a frame.
                Some(Err(ReadError::Io(_))) => return,
            }
        }
        panic!("the reader returned more frames than the input can hold");
    })
});
