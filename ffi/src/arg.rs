//! Checked conversions of the raw pointers callers pass in: NULL and non-UTF-8 become errors
//! naming the argument, never a crash.

use std::ffi::{c_char, CStr, CString};

use crate::error::FfiError;

/// A required C string, borrowed for the duration of the call.
///
/// # Safety
/// `p` is NULL or points to a NUL-terminated string that stays valid during the call.
pub(crate) unsafe fn str_arg<'a>(
    p: *const c_char,
    name: &'static str,
) -> Result<&'a str, FfiError> {
    if p.is_null() {
        return Err(FfiError::Null(name));
    }
    CStr::from_ptr(p).to_str().map_err(|_| FfiError::Utf8(name))
}

/// An optional C string: NULL means "not given".
///
/// # Safety
/// As [`str_arg`].
pub(crate) unsafe fn opt_str_arg<'a>(
    p: *const c_char,
    name: &'static str,
) -> Result<Option<&'a str>, FfiError> {
    if p.is_null() {
        Ok(None)
    } else {
        str_arg(p, name).map(Some)
    }
}

/// A required handle, borrowed for the duration of the call.
///
/// # Safety
/// `p` is NULL or a live handle made by this library.
pub(crate) unsafe fn ref_arg<'a, T>(p: *const T, name: &'static str) -> Result<&'a T, FfiError> {
    p.as_ref().ok_or(FfiError::Null(name))
}

/// A required handle the call changes.
///
/// # Safety
/// As [`ref_arg`], and no other thread uses the handle during the call.
pub(crate) unsafe fn mut_arg<'a, T>(p: *mut T, name: &'static str) -> Result<&'a mut T, FfiError> {
    p.as_mut().ok_or(FfiError::Null(name))
}

/// Checks an out-parameter before any work is done; the caller writes it only on success.
pub(crate) fn out_arg<T>(p: *mut T, name: &'static str) -> Result<*mut T, FfiError> {
    if p.is_null() {
        Err(FfiError::Null(name))
    } else {
        Ok(p)
    }
}

/// Hands a string to the caller, who frees it with `sfc_string_free`.
pub(crate) fn into_c_string(s: String, what: &'static str) -> Result<*mut c_char, FfiError> {
    CString::new(s)
        .map(CString::into_raw)
        .map_err(|_| FfiError::Invalid {
            what,
            why: "contains a nul byte".into(),
        })
}

/// Parses a JSON argument into `T`; the error names the argument.
pub(crate) fn json_arg<T: serde::de::DeserializeOwned>(
    text: &str,
    what: &'static str,
) -> Result<T, FfiError> {
    serde_json::from_str(text).map_err(|e| FfiError::Json {
        what,
        why: e.to_string(),
    })
}

/// A millisecond count from C as a duration.
pub(crate) fn millis(ms: u64) -> std::time::Duration {
    std::time::Duration::from_millis(ms)
}
