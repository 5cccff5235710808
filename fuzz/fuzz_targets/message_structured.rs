//! Every message decoder, on structured input: a JSON object whose `type` is one of the
//! protocol's message types and whose fields (nested too) are mostly real field names with
//! values on the edges (u64 overflow, 1e309, control characters, wrong types). Raw bytes
//! rarely get past the JSON syntax; this reaches each message's own fields.
#![no_main]

use arbitrary::{Arbitrary, Unstructured};
use libfuzzer_sys::fuzz_target;
use sfc_registry::protocol::MESSAGE_TYPES;
use sfc_registry::registry::Registry;
use sfc_fuzz::{object_fields, push_str, render_object, Key};

thread_local! {
    static REG: Registry = sfc_fuzz::registry();
}

#[derive(Debug)]
struct Input {
    kind: u8,
    fields: Vec<(Key, sfc_fuzz::Json)>,
}

impl<'a> Arbitrary<'a> for Input {
    fn arbitrary(u: &mut Unstructured<'a>) -> arbitrary::Result<Self> {
        Ok(Input {
            kind: u.arbitrary()?,
            fields: object_fields(u, 0)?,
        })
    }
}

fuzz_target!(|input: Input| {
    let mut text = String::from("{\"type\":");
    push_str(
        &mut text,
        MESSAGE_TYPES[input.kind as usize % MESSAGE_TYPES.len()],
    );
    let mut rest = String::new();
    render_object(&input.fields, &mut rest);
    if rest.len() > 2 {
        text.push(',');
        text.push_str(&rest[1..]);
    } else {
        text.push('}');
    }
    if let Some(m) = sfc_fuzz::decode_checked(text.as_bytes()) {
        REG.with(|reg| sfc_fuzz::apply(reg, m));
    }
});
