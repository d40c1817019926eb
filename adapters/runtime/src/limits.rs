//! What every HTTP client shares in enforcing an [`Outgoing`] request's [`Limits`].
//!
//! The parts that depend on the HTTP library (resolving and checking addresses, connecting,
//! reading frames) stay in each adapter's client; these two do the rest:
//!
//! - [`perform_within_limits`] runs one exchange under [`Limits::timeout`] (connect to last body
//!   byte) on the runtime's timer and logs the request and its result at `debug` (purpose,
//!   method, host, status, size or error; never a header value);
//! - [`BodyLimit`] collects a response body under [`Limits::max_body_bytes`]: it refuses a
//!   declared length over the cap before reading anything, and fails as soon as the bytes read
//!   pass it.

use std::future::Future;

use http::Response;
use mcp_oauth_core::machine::{Limits, Outgoing, TransportError};

use crate::runtime::{Runtime, timeout};

/// Runs `exchange` (the adapter's whole exchange for `outgoing`) under the request's timeout on
/// `runtime`, logging it; a timeout is [`TransportError::Timeout`].
pub async fn perform_within_limits<R, F>(
    runtime: &R,
    outgoing: &Outgoing,
    exchange: F,
) -> Result<Response<Vec<u8>>, TransportError>
where
    R: Runtime,
    F: Future<Output = Result<Response<Vec<u8>>, TransportError>>,
{
    tracing::debug!(
        purpose = outgoing.purpose(),
        method = %outgoing.request().method(),
        host = outgoing.request().uri().host().unwrap_or_default(),
        "performing request"
    );
    let result =
        timeout(runtime, outgoing.limits().timeout, exchange).await.unwrap_or(Err(TransportError::Timeout));
    match &result {
        Ok(response) => tracing::debug!(
            purpose = outgoing.purpose(),
            status = response.status().as_u16(),
            bytes = response.body().len(),
            "response"
        ),
        Err(error) => tracing::debug!(purpose = outgoing.purpose(), %error, "request failed"),
    }
    result
}

/// A response body collected under a byte cap.
#[derive(Debug)]
pub struct BodyLimit {
    limit: usize,
    collected: Vec<u8>,
}

impl BodyLimit {
    /// Starts collecting under `limit` bytes, given the length the response declares (its
    /// `Content-Length`, if any): a declared length over the limit fails at once with
    /// [`TransportError::BodyTooLarge`]; otherwise room for it (at most `limit`) is reserved.
    pub fn new(limit: usize, declared: Option<u64>) -> Result<Self, TransportError> {
        if declared.is_some_and(|length| length > limit as u64) {
            return Err(TransportError::BodyTooLarge { limit });
        }
        let capacity = declared.map_or(0, |length| usize::try_from(length).unwrap_or(limit).min(limit));
        Ok(Self { limit, collected: Vec::with_capacity(capacity) })
    }

    /// [`BodyLimit::new`] with the cap of `limits`.
    pub fn for_limits(limits: Limits, declared: Option<u64>) -> Result<Self, TransportError> {
        Self::new(limits.max_body_bytes, declared)
    }

    /// Appends `chunk`, or fails with [`TransportError::BodyTooLarge`] if the body would pass the
    /// limit (nothing past the limit is kept).
    pub fn push(&mut self, chunk: &[u8]) -> Result<(), TransportError> {
        if self.collected.len().saturating_add(chunk.len()) > self.limit {
            return Err(TransportError::BodyTooLarge { limit: self.limit });
        }
        self.collected.extend_from_slice(chunk);
        Ok(())
    }

    /// The body collected so far.
    pub fn into_body(self) -> Vec<u8> {
        self.collected
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_declared_length_over_the_limit_fails_before_reading() {
        assert_eq!(BodyLimit::new(10, Some(11)).err(), Some(TransportError::BodyTooLarge { limit: 10 }));
        assert!(BodyLimit::new(10, Some(10)).is_ok());
        assert!(BodyLimit::new(10, None).is_ok());
        let huge = BodyLimit::new(10, Some(u64::MAX));
        assert_eq!(huge.err(), Some(TransportError::BodyTooLarge { limit: 10 }));
    }

    #[test]
    fn chunks_are_collected_up_to_the_limit_and_no_further() {
        let mut body = BodyLimit::new(5, None).unwrap();
        body.push(b"abc").unwrap();
        body.push(b"de").unwrap();
        assert_eq!(body.push(b"f"), Err(TransportError::BodyTooLarge { limit: 5 }));
        assert_eq!(body.into_body(), b"abcde");
    }

    #[test]
    fn the_reservation_never_passes_the_limit() {
        let body = BodyLimit::new(4, Some(3)).unwrap();
        assert!(body.collected.capacity() >= 3);
        assert_eq!(BodyLimit::for_limits(Limits::METADATA, Some(0)).unwrap().into_body(), b"");
    }
}
