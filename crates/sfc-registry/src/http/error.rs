//! The HTTP API's error body, `{"error":{"code":"...","message":"..."}}`, and the status code
//! that goes with each code. The code strings are part of the API contract.

use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};

use crate::protocol::ErrorCode;

/// What went wrong, as the API names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApiCode {
    InvalidRequest,
    Unauthorized,
    AdminDisabled,
    NotFound,
    UnknownInstance,
    MethodNotAllowed,
    NotOnline,
    InstanceOnline,
    CommandTimeout,
    ShuttingDown,
    /// The store fails: the registry serves from memory, and what it acknowledges now would
    /// not survive a restart until the store recovers.
    StoreFailing,
    Internal,
}

impl ApiCode {
    pub fn as_str(self) -> &'static str {
        match self {
            ApiCode::InvalidRequest => "invalid-request",
            ApiCode::Unauthorized => "unauthorized",
            ApiCode::AdminDisabled => "admin-disabled",
            ApiCode::NotFound => "not-found",
            ApiCode::UnknownInstance => "unknown-instance",
            ApiCode::MethodNotAllowed => "method-not-allowed",
            ApiCode::NotOnline => "not-online",
            ApiCode::InstanceOnline => "instance-online",
            ApiCode::CommandTimeout => "command-timeout",
            ApiCode::ShuttingDown => "shutting-down",
            ApiCode::StoreFailing => "store-failing",
            ApiCode::Internal => "internal",
        }
    }

    pub fn status(self) -> StatusCode {
        match self {
            ApiCode::InvalidRequest => StatusCode::BAD_REQUEST,
            ApiCode::Unauthorized => StatusCode::UNAUTHORIZED,
            ApiCode::AdminDisabled => StatusCode::FORBIDDEN,
            ApiCode::NotFound | ApiCode::UnknownInstance => StatusCode::NOT_FOUND,
            ApiCode::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ApiCode::NotOnline | ApiCode::InstanceOnline => StatusCode::CONFLICT,
            ApiCode::CommandTimeout => StatusCode::GATEWAY_TIMEOUT,
            ApiCode::ShuttingDown | ApiCode::StoreFailing => StatusCode::SERVICE_UNAVAILABLE,
            ApiCode::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

/// An error answer of the HTTP API.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{} ({}): {message}", code.as_str(), code.status().as_u16())]
pub struct ApiError {
    pub code: ApiCode,
    pub message: String,
}

impl ApiError {
    pub fn new(code: ApiCode, message: impl Into<String>) -> Self {
        ApiError {
            code,
            message: message.into(),
        }
    }

    pub fn invalid(message: impl Into<String>) -> Self {
        ApiError::new(ApiCode::InvalidRequest, message)
    }
}

impl From<crate::Error> for ApiError {
    fn from(e: crate::Error) -> Self {
        match e {
            crate::Error::Remote { code, message } => {
                let api = match code {
                    ErrorCode::UnknownInstance => ApiCode::UnknownInstance,
                    ErrorCode::NotOnline => ApiCode::NotOnline,
                    ErrorCode::CommandTimeout => ApiCode::CommandTimeout,
                    // Registry::deregister answers invalid-field for a record that is online.
                    ErrorCode::InvalidField => ApiCode::InstanceOnline,
                    ErrorCode::ShuttingDown => ApiCode::ShuttingDown,
                    _ => ApiCode::Internal,
                };
                ApiError::new(api, message)
            }
            crate::Error::Invalid { .. } => ApiError::invalid(e.to_string()),
            other => ApiError::new(ApiCode::Internal, other.to_string()),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body =
            serde_json::json!({ "error": { "code": self.code.as_str(), "message": self.message } });
        let mut resp = (self.code.status(), axum::Json(body)).into_response();
        if self.code == ApiCode::Unauthorized {
            resp.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Bearer"),
            );
        }
        resp
    }
}
