//! The legacy-format parser (`sfc_registry::protocol::legacy::parse`), the one JSON document an
//! original Node client sends per connection. Raw bytes, or (input starting with a 0 byte) a
//! document built from the fuzzer's input with the original field names and edge values for
//! the numbers and the time that the parser converts.
#![no_main]

use arbitrary::{Arbitrary, Unstructured};
use libfuzzer_sys::fuzz_target;
use sfc_registry::protocol::legacy::{self, LegacyAction};
use sfc_registry::protocol::ErrorCode;
use sfc_fuzz::{check_error, push_str, Json};

const ACTIONS: &[&str] = &["HEALTH", "JOIN", "LEAVE", "health", ""];
const NUMERIC: &[&str] = &[
    "rss",
    "heapTotal",
    "heapUsed",
    "external",
    "numCpus",
    "freemem",
    "uptime",
    "updateIntervalSeconds",
];
const TIMES: &[&str] = &[
    "2018-02-14T00:28:07.123Z",
    "1970-01-01T00:00:00Z",
    "1969-12-31T23:59:59Z",
    "9999-12-31T23:59:59.999999999Z",
    "0000-01-01T00:00:00Z",
    "2018-02-30T00:00:00Z",
    "2018-02-14 00:28:07",
    "",
];

#[derive(Debug)]
struct Doc {
    action: u8,
    service: Json,
    group: Json,
    hostname: Json,
    time: Option<Result<u8, String>>,
    numbers: Vec<(u8, Json)>,
    loadadv: Option<Json>,
    user: Option<Json>,
}

impl<'a> Arbitrary<'a> for Doc {
    fn arbitrary(u: &mut Unstructured<'a>) -> arbitrary::Result<Self> {
        let word = |u: &mut Unstructured<'a>| -> arbitrary::Result<Json> {
            Ok(if u.ratio(3, 4)? {
                Json::Str(u.arbitrary()?)
            } else {
                Json::arbitrary(u)?
            })
        };
        Ok(Doc {
            action: u.arbitrary()?,
            service: word(u)?,
            group: word(u)?,
            hostname: word(u)?,
            time: if u.arbitrary()? {
                Some(if u.arbitrary()? {
                    Ok(u.arbitrary()?)
                } else {
                    Err(u.arbitrary()?)
                })
            } else {
                None
            },
            numbers: {
                let n = u.int_in_range(0..=8)?;
                (0..n)
                    .map(|_| Ok((u.arbitrary()?, Json::arbitrary(u)?)))
                    .collect::<arbitrary::Result<_>>()?
            },
            loadadv: if u.arbitrary()? {
                Some(Json::arbitrary(u)?)
            } else {
                None
            },
            user: if u.arbitrary()? { Some(word(u)?) } else { None },
        })
    }
}

impl Doc {
    fn render(&self) -> String {
        let mut s = String::from("{\"action\":");
        push_str(&mut s, ACTIONS[self.action as usize % ACTIONS.len()]);
        s.push_str(",\"payload\":{\"serviceName\":");
        self.service.render(&mut s);
        s.push_str(",\"groupingKey\":");
        self.group.render(&mut s);
        match &self.time {
            Some(Ok(i)) => {
                s.push_str(",\"time\":");
                push_str(&mut s, TIMES[*i as usize % TIMES.len()]);
            }
            Some(Err(t)) => {
                s.push_str(",\"time\":");
                push_str(&mut s, t);
            }
            None => {}
        }
        s.push_str(",\"metrics\":{\"hostname\":");
        self.hostname.render(&mut s);
        for (k, v) in &self.numbers {
            s.push(',');
            push_str(&mut s, NUMERIC[*k as usize % NUMERIC.len()]);
            s.push(':');
            v.render(&mut s);
        }
        if let Some(l) = &self.loadadv {
            s.push_str(",\"loadadv\":");
            l.render(&mut s);
        }
        if let Some(u) = &self.user {
            s.push_str(",\"user\":");
            u.render(&mut s);
        }
        s.push_str("}}}");
        s
    }
}

fn check(bytes: &[u8]) {
    match legacy::parse(bytes) {
        Ok(doc) => {
            assert!(matches!(
                doc.action,
                LegacyAction::Report | LegacyAction::Leave
            ));
            let r = &doc.registration;
            assert!(
                !r.group.is_empty() && !r.instance_id.is_empty(),
                "accepted an empty identity: {r:?}"
            );
            assert_eq!(r.instance_id, r.hostname);
            // What serve_legacy does next.
            if sfc_registry::limits::check_registration(r)
                .and_then(|_| sfc_registry::limits::check_interval_ms(doc.interval_ms))
                .is_ok()
            {
                let _window = std::time::Duration::from_millis(doc.interval_ms) * 3;
            }
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
}

fuzz_target!(|data: &[u8]| {
    match data.split_first() {
        Some((0, rest)) => {
            if let Ok(doc) = Doc::arbitrary_take_rest(Unstructured::new(rest)) {
                check(doc.render().as_bytes());
            }
        }
        _ => check(data),
    }
});
