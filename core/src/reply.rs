//! The JSON answers core hands back: one place builds them, so every refusal has the same shape
//! and headers whichever decision made it.

use http::{HeaderValue, Response, StatusCode, header};
use serde_json::{Value, json};

/// A JSON answer with `status`, never cached (it may carry a decision about credentials).
pub(crate) fn json_response(status: StatusCode, body: &Value) -> Response<Vec<u8>> {
    let mut response = Response::new(body.to_string().into_bytes());
    *response.status_mut() = status;
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// The JSON error every refusal uses: `{"error": code, "error_description": message}`.
pub fn error_response(status: StatusCode, error: &str, description: &str) -> Response<Vec<u8>> {
    json_response(status, &json!({"error": error, "error_description": description}))
}
