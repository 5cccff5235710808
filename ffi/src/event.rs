//! `sfc_event`: what `sfc_client_next_event` hands out (connection changes, commands, errors).

use std::ffi::{c_char, CString};

use ::sfc_client::ClientEvent;

use crate::error::{sfc_status, FfiError};

/// What kind of event an `sfc_event` is. The numbers are never reused.
#[allow(non_camel_case_types)]
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum sfc_event_kind {
    /// A session with a registry is established. JSON: `{"registry": "host:port", "session": 7}`.
    Connected = 1,
    /// The session ended; the client reconnects by itself. JSON: `{"registry", "reason"}`.
    Disconnected = 2,
    /// A command from the registry; answer it with `sfc_client_respond(command_id, ...)`.
    /// `"shutdown"` asks the host to stop. JSON: `{"command_id", "name", "reason",
    /// "payload", "issued_by"}`.
    Command = 3,
    /// A problem the client recovers from by itself (bad certificate, refused hello...).
    /// JSON: `{"status": "tls", "code": "not-authorized" or null, "message"}`: `status` is the
    /// `sfc_status_name` of the status a call failing the same way returns (`"tls"`,
    /// `"unreachable"`, `"remote"`, ...), `code` the registry's protocol error code when the
    /// registry sent one (PROTOCOL.md §11). The codes a service or observer meets:
    /// `not-authorized`, `invalid-field`, `superseded` (another session took this identity
    /// over), `rate-limited`, `too-many-connections`, `too-many-instances` (registering a new
    /// identity would pass the registry's cap on instances, in all, per group or for legacy
    /// records; status `"remote"`), `slow-consumer` (the client read too slowly and the
    /// registry dropped its session and queue; status `"remote"`), `shutting-down`,
    /// `handshake-timeout`, `unsupported-codec`, and `unsupported-version` (status
    /// `"protocol"`, also for a registry that predates protocol v1: see
    /// `sfc_config_set_legacy`). A fatal code is followed by `SFC_EVENT_KIND_DISCONNECTED`
    /// when it ends a session; the client reconnects by itself in every case.
    Error = 4,
    /// The caller fell more than 1024 events behind and the oldest were dropped.
    /// JSON: `{"missed": 12}`.
    Lagged = 5,
}

/// One event. Read the fields; do not change them. Free it with `sfc_event_free`; the strings
/// live exactly as long as the event.
#[allow(non_camel_case_types)]
#[repr(C)]
pub struct sfc_event {
    pub kind: sfc_event_kind,
    /// The command id to answer with; 0 unless `kind` is `SFC_EVENT_KIND_COMMAND`.
    pub command_id: u64,
    /// The command name (`"shutdown"` or an application-defined name); NULL unless `kind` is
    /// `SFC_EVENT_KIND_COMMAND`.
    pub command_name: *const c_char,
    /// Every detail of the event as a JSON object (see `sfc_event_kind`). Never NULL.
    pub json: *const c_char,
}

fn c_string(s: String) -> Result<CString, FfiError> {
    CString::new(s).map_err(|_| FfiError::Invalid {
        what: "event text",
        why: "contains a nul byte".into(),
    })
}

impl sfc_event {
    pub(crate) fn new(
        kind: sfc_event_kind,
        json: serde_json::Value,
        command: Option<(u64, &str)>,
    ) -> Result<Box<sfc_event>, FfiError> {
        let json = c_string(json.to_string())?;
        let (command_id, name) = match command {
            Some((id, name)) => (id, Some(c_string(name.to_string())?)),
            None => (0, None),
        };
        Ok(Box::new(sfc_event {
            kind,
            command_id,
            command_name: name.map_or(std::ptr::null(), |n| n.into_raw() as *const c_char),
            json: json.into_raw(),
        }))
    }

    pub(crate) fn from_client_event(ev: ClientEvent) -> Result<Box<sfc_event>, FfiError> {
        use serde_json::json;
        match ev {
            ClientEvent::Connected { registry, session } => sfc_event::new(
                sfc_event_kind::Connected,
                json!({ "registry": registry, "session": session }),
                None,
            ),
            ClientEvent::Disconnected { registry, reason } => sfc_event::new(
                sfc_event_kind::Disconnected,
                json!({ "registry": registry, "reason": reason }),
                None,
            ),
            ClientEvent::Command(c) => {
                let detail = serde_json::to_value(&c).map_err(|e| FfiError::Invalid {
                    what: "command",
                    why: e.to_string(),
                })?;
                sfc_event::new(
                    sfc_event_kind::Command,
                    detail,
                    Some((c.command_id, &c.name)),
                )
            }
            ClientEvent::Error { code, message } => {
                let status = status_name(error_event_status(code.is_some(), &message));
                sfc_event::new(
                    sfc_event_kind::Error,
                    json!({ "status": status, "code": code, "message": message }),
                    None,
                )
            }
        }
    }

    pub(crate) fn lagged(missed: u64) -> Result<Box<sfc_event>, FfiError> {
        sfc_event::new(
            sfc_event_kind::Lagged,
            serde_json::json!({ "missed": missed }),
            None,
        )
    }
}

/// The status of an error event: the client's error event text is `"<registry>: <error>"`
/// (a failed connection) or the registry's own message (an error frame, with a `code`); the
/// `<error>` part starts with the `Display` prefix of its `sfc_client::Error` variant.
pub(crate) fn error_event_status(has_code: bool, message: &str) -> sfc_status {
    const PREFIXES: [(&str, sfc_status); 7] = [
        ("tls: ", sfc_status::Tls),
        ("io: ", sfc_status::Io),
        ("registry error ", sfc_status::Remote),
        ("protocol error ", sfc_status::Protocol),
        ("registry unreachable: ", sfc_status::Unreachable),
        ("timed out: ", sfc_status::Timeout),
        ("invalid ", sfc_status::InvalidArgument),
    ];
    let rest = message.split_once(": ").map_or(message, |(_, r)| r);
    for text in [rest, message] {
        if let Some((_, s)) = PREFIXES.iter().find(|(p, _)| text.starts_with(p)) {
            return *s;
        }
    }
    if has_code {
        sfc_status::Remote
    } else {
        sfc_status::Unreachable
    }
}

fn status_name(s: sfc_status) -> String {
    // SAFETY: sfc_status_name returns a static NUL-terminated string.
    unsafe { std::ffi::CStr::from_ptr(crate::sfc_status_name(s as std::ffi::c_int)) }
        .to_string_lossy()
        .into_owned()
}

impl Drop for sfc_event {
    fn drop(&mut self) {
        // SAFETY: both pointers came from CString::into_raw in `new` (or are NULL).
        unsafe {
            if !self.command_name.is_null() {
                drop(CString::from_raw(self.command_name as *mut c_char));
            }
            if !self.json.is_null() {
                drop(CString::from_raw(self.json as *mut c_char));
            }
        }
    }
}

/// Frees an event and its strings. NULL is ignored.
///
/// # Safety
/// `event` is NULL or an event from `sfc_client_next_event` that is not used again.
#[no_mangle]
pub unsafe extern "C" fn sfc_event_free(event: *mut sfc_event) {
    crate::error::run_or((), || {
        if !event.is_null() {
            drop(Box::from_raw(event));
        }
    })
}
