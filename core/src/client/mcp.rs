//! The MCP side of the client: JSON-RPC over streamable HTTP, as request builders and parsers.
//!
//! Requests carry `Accept: application/json, text/event-stream`, the negotiated
//! `MCP-Protocol-Version` after initialization, and the server's `Mcp-Session-Id` when it issued
//! one. Answers are either one JSON body or an SSE stream whose events carry JSON-RPC messages;
//! [`parse_rpc_response`] finds the response with the request's id in either form.

use http::{Method, Request, Response, header};
use serde_json::{Value, json};
use url::Url;

use crate::Reason;
use crate::secret::Secret;
use crate::sse::parse_events;

/// The session header.
pub const SESSION_HEADER: &str = "mcp-session-id";
/// The protocol version header.
pub const PROTOCOL_VERSION_HEADER: &str = "mcp-protocol-version";

/// What every MCP request of one session shares.
#[derive(Clone, Debug)]
pub struct McpEndpoint {
    /// The MCP URL.
    pub url: Url,
    /// The negotiated protocol version, once known.
    pub protocol_version: Option<String>,
    /// The session ID the server issued, if any.
    pub session_id: Option<String>,
    /// The stateless wire (2026-07-28 and later): no `initialize`; every request carries the
    /// protocol version, client info and capabilities in `params._meta`, plus `Mcp-Method`.
    pub stateless: bool,
}

/// The dated protocol revisions that use the stateful lifecycle (the `initialize` handshake).
pub const STATEFUL_VERSIONS: [&str; 4] = ["2024-11-05", "2025-03-26", "2025-06-18", "2025-11-25"];

/// Whether `version` uses the stateless lifecycle (every revision after 2025-11-25).
pub fn is_stateless(version: &str) -> bool {
    !STATEFUL_VERSIONS.contains(&version)
}

/// The client info sent in `initialize` and in stateless `_meta`.
pub fn client_info() -> Value {
    json!({"name": "mcp-oauth", "version": env!("CARGO_PKG_VERSION")})
}

/// A JSON-RPC call or notification.
pub fn rpc_request(
    endpoint: &McpEndpoint,
    id: Option<u64>,
    method: &str,
    params: Value,
    access_token: Option<&Secret>,
) -> Result<Request<Vec<u8>>, http::Error> {
    let mut params = params;
    if endpoint.stateless
        && let (Some(version), Some(object)) = (&endpoint.protocol_version, params.as_object_mut())
    {
        let meta = object.entry("_meta").or_insert_with(|| json!({}));
        if let Some(meta) = meta.as_object_mut() {
            meta.insert("io.modelcontextprotocol/protocolVersion".into(), json!(version));
            meta.insert("io.modelcontextprotocol/clientInfo".into(), client_info());
            meta.insert("io.modelcontextprotocol/clientCapabilities".into(), json!({}));
        }
    }
    let tool_name = params.get("name").and_then(Value::as_str).map(str::to_owned);
    let mut message = json!({"jsonrpc": "2.0", "method": method, "params": params});
    if let Some(id) = id {
        message["id"] = json!(id);
    }
    let mut builder = Request::builder()
        .method(Method::POST)
        .uri(endpoint.url.as_str())
        .header(header::ACCEPT, "application/json, text/event-stream")
        .header(header::CONTENT_TYPE, "application/json");
    if let Some(version) = &endpoint.protocol_version {
        builder = builder.header(PROTOCOL_VERSION_HEADER, version);
    }
    if endpoint.stateless {
        builder = builder.header("mcp-method", method);
        if let (Some(name), "tools/call") = (tool_name, method) {
            builder = builder.header("mcp-name", name);
        }
    }
    if let Some(session) = &endpoint.session_id {
        builder = builder.header(SESSION_HEADER, session);
    }
    if let Some(token) = access_token {
        builder = builder.header(header::AUTHORIZATION, format!("Bearer {}", token.expose()));
    }
    builder.body(message.to_string().into_bytes())
}

/// The `initialize` parameters for protocol `version`.
pub fn initialize_params(version: &str) -> Value {
    json!({
        "protocolVersion": version,
        "capabilities": {},
        "clientInfo": client_info(),
    })
}

/// Finds the JSON-RPC response to `id` in a JSON or SSE body; returns its `result`.
pub fn parse_rpc_response(response: &Response<Vec<u8>>, id: u64) -> Result<Value, RpcError> {
    if !response.status().is_success() {
        return Err(RpcError::Status(response.status().as_u16()));
    }
    let body = std::str::from_utf8(response.body()).map_err(|_| RpcError::InvalidBody("not UTF-8".into()))?;
    let messages: Vec<Value> = if crate::sse::is_event_stream(response.headers()) {
        parse_events(body)
            .into_iter()
            .filter(|event| event.event == "message")
            .filter_map(|event| serde_json::from_str(&event.data).ok())
            .collect()
    } else {
        match serde_json::from_str::<Value>(body) {
            Ok(Value::Array(batch)) => batch,
            Ok(single) => vec![single],
            Err(error) => return Err(RpcError::InvalidBody(error.to_string())),
        }
    };
    let message = messages
        .into_iter()
        .find(|message| {
            message.get("id").and_then(Value::as_u64) == Some(id) && message.get("method").is_none()
        })
        .ok_or(RpcError::NoResponse)?;
    if let Some(error) = message.get("error") {
        return Err(RpcError::Rpc {
            code: error.get("code").and_then(Value::as_i64).unwrap_or_default(),
            message: error
                .get("message")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .chars()
                .take(500)
                .collect(),
        });
    }
    message.get("result").cloned().ok_or(RpcError::NoResponse)
}

/// An MCP call failed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RpcError {
    /// A non-success HTTP status.
    #[error("the MCP server answered HTTP {0}")]
    Status(u16),
    /// The body is neither JSON nor an event stream of JSON.
    #[error("the MCP response is invalid: {0}")]
    InvalidBody(String),
    /// No response with the request's id.
    #[error("the MCP response does not answer the request")]
    NoResponse,
    /// A JSON-RPC error.
    #[error("JSON-RPC error {code}: {message}")]
    Rpc {
        /// The error code.
        code: i64,
        /// The message.
        message: String,
    },
}

impl Reason for RpcError {
    fn reason(&self) -> &'static str {
        match self {
            Self::Status(_) => "mcp_status",
            Self::InvalidBody(_) => "invalid_mcp_response",
            Self::NoResponse => "no_rpc_response",
            Self::Rpc { .. } => "rpc_error",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn response(content_type: &str, body: &str) -> Response<Vec<u8>> {
        Response::builder()
            .status(200)
            .header("content-type", content_type)
            .body(body.as_bytes().to_vec())
            .unwrap()
    }

    #[test]
    fn json_and_sse_answers() {
        let json = response("application/json", r#"{"jsonrpc":"2.0","id":3,"result":{"tools":[]}}"#);
        assert_eq!(parse_rpc_response(&json, 3).unwrap(), json!({"tools": []}));
        let sse = response(
            "text/event-stream",
            "event: message\ndata: {\"jsonrpc\":\"2.0\",\"method\":\"notifications/progress\",\"params\":{}}\n\nevent: message\ndata: {\"jsonrpc\":\"2.0\",\"id\":4,\"result\":{\"ok\":true}}\n\n",
        );
        assert_eq!(parse_rpc_response(&sse, 4).unwrap(), json!({"ok": true}));
        assert_eq!(parse_rpc_response(&sse, 5).unwrap_err(), RpcError::NoResponse);
        let error = response(
            "application/json",
            r#"{"jsonrpc":"2.0","id":1,"error":{"code":-32601,"message":"nope"}}"#,
        );
        assert_eq!(parse_rpc_response(&error, 1).unwrap_err().reason(), "rpc_error");
    }

    #[test]
    fn requests_carry_session_version_and_token() {
        let endpoint = McpEndpoint {
            url: Url::parse("https://mcp.example.com/mcp").unwrap(),
            protocol_version: Some("2025-11-25".into()),
            session_id: Some("s-1".into()),
            stateless: false,
        };
        let token = Secret::new("tok");
        let request = rpc_request(&endpoint, Some(2), "tools/list", json!({}), Some(&token)).unwrap();
        assert_eq!(request.headers()[PROTOCOL_VERSION_HEADER], "2025-11-25");
        assert_eq!(request.headers()[SESSION_HEADER], "s-1");
        assert_eq!(request.headers()["authorization"], "Bearer tok");
        let notification =
            rpc_request(&endpoint, None, "notifications/initialized", json!({}), None).unwrap();
        let body: Value = serde_json::from_slice(notification.body()).unwrap();
        assert!(body.get("id").is_none());
    }

    #[test]
    fn the_stateless_wire_carries_meta_and_method_headers() {
        assert!(!is_stateless("2025-11-25"));
        assert!(is_stateless("2026-07-28"));
        let endpoint = McpEndpoint {
            url: Url::parse("https://mcp.example.com/mcp").unwrap(),
            protocol_version: Some("2026-07-28".into()),
            session_id: None,
            stateless: true,
        };
        let request =
            rpc_request(&endpoint, Some(1), "tools/call", json!({"name": "echo", "arguments": {}}), None)
                .unwrap();
        assert_eq!(request.headers()[PROTOCOL_VERSION_HEADER], "2026-07-28");
        assert_eq!(request.headers()["mcp-method"], "tools/call");
        assert_eq!(request.headers()["mcp-name"], "echo");
        let body: Value = serde_json::from_slice(request.body()).unwrap();
        assert_eq!(body["params"]["_meta"]["io.modelcontextprotocol/protocolVersion"], "2026-07-28");
        assert!(body["params"]["_meta"]["io.modelcontextprotocol/clientCapabilities"].is_object());
    }
}
