//! How a failed step of a forwarded call is answered: one table from a typed failure and the step
//! it happened in to the status and error code the caller sees (design §3: an adapter that picks a
//! status from a reason string holds policy that belongs here).
//!
//! An adapter reports what went wrong in transport terms ([`UpstreamFailure`]) and which step it
//! was ([`CallStep`]); [`failure_response`] answers. The token cache carries a failure to the
//! requests that waited for the same fetch as its [`UpstreamFailure::reason`] code, which
//! [`UpstreamFailure::from_reason`] reads back, so waiters get the answer the fetching request got.

use std::time::Duration;

use super::*;

/// The step of a forwarded call that failed; it names the step in the answer and decides whether
/// an unreachable upstream is a gateway error (502) or a dependency outage (503).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CallStep {
    /// Sending the MCP request to the upstream MCP server.
    Forward,
    /// Fetching the gateway's own upstream token (M2M or RFC 8693 exchange).
    FetchToken,
    /// Redeeming an authorization code or refresh token at the upstream token endpoint.
    ExchangeCode,
    /// Registering at the upstream registration endpoint.
    Register,
}

impl CallStep {
    /// How the step is named in an answer.
    pub fn describe(self, server: &str) -> String {
        match self {
            Self::Forward => format!("forwarding to the upstream MCP server `{server}`"),
            Self::FetchToken => format!("fetching the upstream token for `{server}`"),
            Self::ExchangeCode => format!("exchanging the code at the upstream token endpoint of `{server}`"),
            Self::Register => format!("registering at the upstream registration endpoint of `{server}`"),
        }
    }

    /// The status for an upstream that cannot be used: the gateway's own token and code steps
    /// depend on the authorization server (503: try later), the others are a bad gateway (502).
    fn unavailable(self) -> StatusCode {
        match self {
            Self::FetchToken | Self::ExchangeCode => StatusCode::SERVICE_UNAVAILABLE,
            Self::Forward | Self::Register => StatusCode::BAD_GATEWAY,
        }
    }
}

/// Why an upstream exchange gave no usable answer.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum UpstreamFailure {
    /// No answer within the step's deadline.
    Timeout,
    /// Connecting, TLS or reading failed, or the URL is not usable.
    Unreachable,
    /// The answer was larger than the step allows.
    TooLarge,
    /// The fetch policy refuses the upstream's address; nothing was connected.
    Blocked,
    /// The upstream answered with this 5xx status.
    ServerError(u16),
    /// The token endpoint answered, but with an error or no usable token.
    TokenRefused {
        /// Its HTTP status.
        status: u16,
    },
    /// Token fetches for this key failed recently; none is tried before the backoff ends.
    BackingOff {
        /// Time until a fetch may be tried again.
        retry_in: Duration,
    },
}

impl UpstreamFailure {
    /// The stable code of this failure, as the answer's `error` and the token cache carry it.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Timeout => "upstream_timeout",
            Self::Unreachable => "upstream_unreachable",
            Self::TooLarge | Self::ServerError(_) => "upstream_error",
            Self::Blocked => "blocked_by_fetch_policy",
            Self::TokenRefused { .. } | Self::BackingOff { .. } => "token_endpoint_failed",
        }
    }

    /// Reads back a failure from its [`reason`](Self::reason) code (a token cache hands the code
    /// to the requests that waited for a failed fetch); an unknown code is a refused token.
    pub fn from_reason(reason: &str) -> Self {
        match reason {
            "upstream_timeout" => Self::Timeout,
            "upstream_unreachable" => Self::Unreachable,
            "upstream_error" => Self::TooLarge,
            "blocked_by_fetch_policy" => Self::Blocked,
            _ => Self::TokenRefused { status: 0 },
        }
    }

    /// What went wrong, without the step (for logs and the cache's message).
    pub fn message(&self) -> String {
        match self {
            Self::Timeout => "no answer in time".to_owned(),
            Self::Unreachable => "the upstream could not be reached".to_owned(),
            Self::TooLarge => "the answer is too large".to_owned(),
            Self::Blocked => "the fetch policy refuses the upstream's address".to_owned(),
            Self::ServerError(status) => format!("the upstream answered HTTP {status}"),
            Self::TokenRefused { status: 0 } => "the token endpoint refused or failed".to_owned(),
            Self::TokenRefused { status } => format!("the token endpoint answered HTTP {status}"),
            Self::BackingOff { retry_in } => {
                format!("recent fetches failed; the next try is in {} s", whole_seconds(*retry_in))
            }
        }
    }
}

fn whole_seconds(duration: Duration) -> u64 {
    duration.as_secs() + u64::from(duration.subsec_nanos() > 0)
}

/// The answer for `failure` in `step` of a call to `server`: 504 after a timeout, 503 while token
/// fetches back off (with `Retry-After`) or when the token endpoint refuses, 502 or 503 for an
/// upstream that cannot be used (see [`CallStep`]). The description names the step and never a
/// secret.
pub fn failure_response(step: CallStep, server: &str, failure: &UpstreamFailure) -> Response<Vec<u8>> {
    let status = match failure {
        UpstreamFailure::Timeout => StatusCode::GATEWAY_TIMEOUT,
        UpstreamFailure::ServerError(_) => StatusCode::BAD_GATEWAY,
        UpstreamFailure::TokenRefused { .. } | UpstreamFailure::BackingOff { .. } => {
            StatusCode::SERVICE_UNAVAILABLE
        }
        UpstreamFailure::Unreachable | UpstreamFailure::TooLarge | UpstreamFailure::Blocked => {
            step.unavailable()
        }
    };
    let description = format!("{}: {}", step.describe(server), failure.message());
    let mut response = error_response(status, failure.reason(), &description);
    if let UpstreamFailure::BackingOff { retry_in } = failure {
        response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(whole_seconds(*retry_in)));
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(step: CallStep, failure: UpstreamFailure) -> (u16, String) {
        let response = failure_response(step, "reports", &failure);
        let body: Value = serde_json::from_slice(response.body()).unwrap_or_default();
        (response.status().as_u16(), body["error"].as_str().unwrap_or_default().to_owned())
    }

    #[test]
    fn one_table_maps_each_failure_and_step_to_a_status() {
        use CallStep::*;
        use UpstreamFailure::*;
        let cases = [
            (Forward, Timeout, 504, "upstream_timeout"),
            (FetchToken, Timeout, 504, "upstream_timeout"),
            (Forward, Unreachable, 502, "upstream_unreachable"),
            (Register, Unreachable, 502, "upstream_unreachable"),
            (FetchToken, Unreachable, 503, "upstream_unreachable"),
            (ExchangeCode, Unreachable, 503, "upstream_unreachable"),
            (Forward, TooLarge, 502, "upstream_error"),
            (FetchToken, Blocked, 503, "blocked_by_fetch_policy"),
            (Forward, Blocked, 502, "blocked_by_fetch_policy"),
            (Forward, ServerError(500), 502, "upstream_error"),
            (FetchToken, TokenRefused { status: 400 }, 503, "token_endpoint_failed"),
            (FetchToken, BackingOff { retry_in: Duration::from_millis(1_500) }, 503, "token_endpoint_failed"),
        ];
        for (step, failure, status, error) in cases {
            assert_eq!(answer(step, failure.clone()), (status, error.to_owned()), "{step:?} {failure:?}");
        }
    }

    #[test]
    fn a_backoff_says_when_to_retry_and_the_step_is_named() {
        let response = failure_response(
            CallStep::FetchToken,
            "reports",
            &UpstreamFailure::BackingOff { retry_in: Duration::from_millis(1_500) },
        );
        assert_eq!(response.headers()[header::RETRY_AFTER], "2");
        let body: Value = serde_json::from_slice(response.body()).unwrap_or_default();
        let description = body["error_description"].as_str().unwrap_or_default();
        assert!(description.starts_with("fetching the upstream token for `reports`"), "{description}");
        assert!(description.contains("2 s"));
    }

    #[test]
    fn a_waiter_gets_the_failure_the_fetch_had() {
        for failure in [UpstreamFailure::Timeout, UpstreamFailure::Unreachable, UpstreamFailure::Blocked] {
            assert_eq!(UpstreamFailure::from_reason(failure.reason()), failure);
        }
        let refused = UpstreamFailure::from_reason(UpstreamFailure::TokenRefused { status: 401 }.reason());
        assert_eq!(
            failure_response(CallStep::FetchToken, "r", &refused).status(),
            StatusCode::SERVICE_UNAVAILABLE
        );
        assert_eq!(
            UpstreamFailure::from_reason("token_validation_failed"),
            UpstreamFailure::TokenRefused { status: 0 }
        );
    }
}
