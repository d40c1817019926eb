//! The gateway's router: the one place a request path is read (design §3, "parse once").
//!
//! A security review broke admission with `POST //internal/mcp`: the router stripped every leading
//! `/` while the delegation check stripped one, so the two disagreed on which server a request
//! reached. Here the path is parsed once, strictly, into a [`Route`] that names its server, and
//! every later decision (admission, delegation, the credential) takes that server, never the raw
//! path. A path that could be read two ways is no route at all: an empty segment (`//`, a trailing
//! `/`), a dot segment, a percent-encoded byte, a backslash or a fragment is a 404.

use http::Method;

/// Where a request goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Route {
    /// `GET /health`.
    Health,
    /// `GET /.well-known/oauth-protected-resource/{server}/mcp`.
    ProtectedResourceMetadata(String),
    /// `GET /.well-known/oauth-authorization-server/{server}`.
    AuthorizationServerMetadata(String),
    /// `GET /{server}/authorize`.
    Authorize(String),
    /// `GET /callback` (the upstream returns here).
    Callback,
    /// `POST /{server}/token`.
    Token(String),
    /// `POST /{server}/register`.
    Register(String),
    /// `POST /{server}/consent` (the consent page's form).
    Consent(String),
    /// `POST /{server}/revoke` (RFC 7009).
    Revoke(String),
    /// `POST|GET|DELETE /{server}/mcp`.
    ServerMcp(String),
    /// `POST /mcp` with `x-mcp-servers`: the aggregating MCP endpoint.
    Mcp,
    /// `GET /mcp-rest/tools/list`: the targets' tools as plain JSON.
    RestToolsList,
    /// `POST /mcp-rest/tools/call`: one tool call as plain JSON.
    RestToolsCall,
    /// Nothing here.
    NotFound,
}

impl Route {
    /// Maps a method and a request target (`/path?query`) to a route.
    pub fn parse(method: &Method, path_and_query: &str) -> Self {
        let Some(segments) = segments(path_and_query) else {
            return Self::NotFound;
        };
        let server = |name: &str| name.to_owned();
        match (method, segments.as_slice()) {
            (&Method::GET, ["health"]) => Self::Health,
            (&Method::GET, [".well-known", "oauth-protected-resource", name, "mcp"]) => {
                Self::ProtectedResourceMetadata(server(name))
            }
            (&Method::GET, [".well-known", "oauth-authorization-server", name]) => {
                Self::AuthorizationServerMetadata(server(name))
            }
            (&Method::GET, ["callback"]) => Self::Callback,
            (&Method::POST | &Method::GET | &Method::DELETE, ["mcp"]) => Self::Mcp,
            (&Method::GET, ["mcp-rest", "tools", "list"]) => Self::RestToolsList,
            (&Method::POST, ["mcp-rest", "tools", "call"]) => Self::RestToolsCall,
            (&Method::GET, [name, "authorize"]) => Self::Authorize(server(name)),
            (&Method::POST, [name, "token"]) => Self::Token(server(name)),
            (&Method::POST, [name, "register"]) => Self::Register(server(name)),
            (&Method::POST, [name, "consent"]) => Self::Consent(server(name)),
            (&Method::POST, [name, "revoke"]) => Self::Revoke(server(name)),
            (&Method::POST | &Method::GET | &Method::DELETE, [name, "mcp"]) => Self::ServerMcp(server(name)),
            _ => Self::NotFound,
        }
    }

    /// The server a route names, if any.
    pub fn server(&self) -> Option<&str> {
        match self {
            Self::ProtectedResourceMetadata(name)
            | Self::AuthorizationServerMetadata(name)
            | Self::Authorize(name)
            | Self::Token(name)
            | Self::Register(name)
            | Self::Consent(name)
            | Self::Revoke(name)
            | Self::ServerMcp(name) => Some(name),
            _ => None,
        }
    }

    /// Whether [`crate::gateway::decide`] needs [`crate::gateway::Context::random`] for this route
    /// (it starts an authorization).
    pub fn needs_random(&self) -> bool {
        matches!(
            self,
            Self::Authorize(_)
                | Self::Register(_)
                | Self::Consent(_)
                | Self::Callback
                | Self::Token(_)
                | Self::Revoke(_)
        )
    }

    /// Whether this route serves a stranger's OAuth traffic: it reads or changes the pending
    /// authorizations and spends the caller's per-peer budget, so a server takes the lock on
    /// [`crate::gateway::OAuthState`] for these routes only.
    pub fn is_oauth(&self) -> bool {
        matches!(
            self,
            Self::Authorize(_)
                | Self::Callback
                | Self::Token(_)
                | Self::Register(_)
                | Self::Consent(_)
                | Self::Revoke(_)
        )
    }

    /// A stable label for logs and metrics (the route without its server name).
    pub fn label(&self) -> &'static str {
        match self {
            Self::Health => "health",
            Self::ProtectedResourceMetadata(_) => "protected_resource_metadata",
            Self::AuthorizationServerMetadata(_) => "authorization_server_metadata",
            Self::Authorize(_) => "authorize",
            Self::Callback => "callback",
            Self::Token(_) => "token",
            Self::Register(_) => "register",
            Self::Consent(_) => "consent",
            Self::Revoke(_) => "revoke",
            Self::ServerMcp(_) => "server_mcp",
            Self::Mcp => "mcp",
            Self::RestToolsList => "rest_tools_list",
            Self::RestToolsCall => "rest_tools_call",
            Self::NotFound => "not_found",
        }
    }
}

/// The server named by a `/{server}/mcp` path, read by the same parser as [`Route::parse`] (for
/// callers such as `mcp-oauth eval delegate` that have a path but no method).
pub fn mcp_path_server(path_and_query: &str) -> Option<&str> {
    mcp_path_target(path_and_query).ok().flatten()
}

/// Like [`mcp_path_server`], but tells an ambiguous path (one the router answers 404 for, such
/// as `//b/mcp`) apart from a plain path that names no server (`/mcp`).
pub fn mcp_path_target(path_and_query: &str) -> Result<Option<&str>, AmbiguousPath> {
    match segments(path_and_query).ok_or(AmbiguousPath)?.as_slice() {
        [name, "mcp"] => Ok(Some(name)),
        _ => Ok(None),
    }
}

/// A path with an empty, dot or encoded segment: it names nothing, and nothing is decided on it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("the path has an empty, dot or percent-encoded segment; it names no route")]
pub struct AmbiguousPath;

/// The path's segments, or `None` when the path could be read more than one way.
fn segments(path_and_query: &str) -> Option<Vec<&str>> {
    let path = path_and_query.split_once('?').map_or(path_and_query, |(path, _)| path);
    let rest = path.strip_prefix('/')?;
    let segments: Vec<&str> = rest.split('/').collect();
    segments.iter().all(|segment| plain(segment)).then_some(segments)
}

/// A segment that means the same to every reader: not empty, not `.` or `..`, and free of
/// percent-encoding, backslashes and fragments (no configured name or route word contains them).
fn plain(segment: &str) -> bool {
    !segment.is_empty()
        && segment != "."
        && segment != ".."
        && !segment.bytes().any(|byte| matches!(byte, b'%' | b'\\' | b'#'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_name_their_server() {
        let cases = [
            (Method::POST, "/github/mcp", Route::ServerMcp("github".into())),
            (Method::GET, "/github/mcp?x=1", Route::ServerMcp("github".into())),
            (Method::DELETE, "/github/mcp", Route::ServerMcp("github".into())),
            (Method::POST, "/mcp", Route::Mcp),
            (Method::GET, "/health", Route::Health),
            (Method::GET, "/callback?code=1&state=2", Route::Callback),
            (Method::GET, "/github/authorize?x", Route::Authorize("github".into())),
            (Method::POST, "/github/token", Route::Token("github".into())),
            (Method::POST, "/github/register", Route::Register("github".into())),
            (
                Method::GET,
                "/.well-known/oauth-protected-resource/github/mcp",
                Route::ProtectedResourceMetadata("github".into()),
            ),
            (
                Method::GET,
                "/.well-known/oauth-authorization-server/github",
                Route::AuthorizationServerMetadata("github".into()),
            ),
            (Method::GET, "/mcp-rest/tools/list", Route::RestToolsList),
            (Method::POST, "/mcp-rest/tools/call", Route::RestToolsCall),
        ];
        for (method, path, expected) in cases {
            assert_eq!(Route::parse(&method, path), expected, "{method} {path}");
        }
    }

    #[test]
    fn ambiguous_paths_are_no_route() {
        for path in [
            "//internal/mcp",
            "///internal/mcp",
            "/internal//mcp",
            "/internal/mcp/",
            "//mcp",
            "/mcp/",
            "/./mcp",
            "/../internal/mcp",
            "/internal/./mcp",
            "/./internal/mcp",
            "/%69nternal/mcp",
            "/a%2Fb/mcp",
            "/a%2fb/mcp",
            "/internal/mc%70",
            "/a\\b/mcp",
            "/internal/mcp#x",
            "internal/mcp",
            "",
            "/",
            "//health",
            "/health/",
            "//callback",
        ] {
            assert_eq!(Route::parse(&Method::POST, path), Route::NotFound, "POST {path}");
            assert_eq!(Route::parse(&Method::GET, path), Route::NotFound, "GET {path}");
            assert_eq!(mcp_path_server(path), None, "{path}");
        }
    }

    #[test]
    fn an_ambiguous_path_is_told_apart_from_no_server() {
        assert_eq!(mcp_path_target("//b/mcp"), Err(AmbiguousPath));
        assert_eq!(mcp_path_target("/mcp"), Ok(None));
        assert_eq!(mcp_path_target("/b/mcp"), Ok(Some("b")));
    }

    #[test]
    fn the_path_server_agrees_with_the_router() {
        assert_eq!(mcp_path_server("/github/mcp"), Some("github"));
        assert_eq!(mcp_path_server("/github/mcp?x=1"), Some("github"));
        assert_eq!(mcp_path_server("/mcp"), None);
        assert_eq!(mcp_path_server("/a/b/mcp"), None);
        assert_eq!(mcp_path_server("/github/mcpx"), None);
        assert_eq!(mcp_path_server("github/mcp"), None);
    }

    #[test]
    fn only_oauth_routes_take_the_oauth_lock() {
        assert!(Route::Authorize("a".into()).is_oauth());
        assert!(Route::Callback.is_oauth());
        assert!(Route::Token("a".into()).is_oauth());
        assert!(Route::Register("a".into()).is_oauth());
        for route in [Route::ServerMcp("a".into()), Route::Mcp, Route::Health, Route::RestToolsCall] {
            assert!(!route.is_oauth(), "{route:?}");
        }
        assert!(Route::Consent("a".into()).is_oauth() && Route::Revoke("a".into()).is_oauth());
        // Every route that seals something draws randomness; an MCP call never does.
        assert!(Route::Authorize("a".into()).needs_random() && Route::Token("a".into()).needs_random());
        for route in [
            Route::ServerMcp("a".into()),
            Route::Mcp,
            Route::Health,
            Route::ProtectedResourceMetadata("a".into()),
        ] {
            assert!(!route.needs_random(), "{route:?}");
        }
        assert_eq!(Route::ServerMcp("a".into()).server(), Some("a"));
        let labels = [
            (Route::Health, "health"),
            (Route::ProtectedResourceMetadata("a".into()), "protected_resource_metadata"),
            (Route::AuthorizationServerMetadata("a".into()), "authorization_server_metadata"),
            (Route::Authorize("a".into()), "authorize"),
            (Route::Callback, "callback"),
            (Route::Token("a".into()), "token"),
            (Route::Register("a".into()), "register"),
            (Route::ServerMcp("a".into()), "server_mcp"),
            (Route::Mcp, "mcp"),
            (Route::RestToolsList, "rest_tools_list"),
            (Route::RestToolsCall, "rest_tools_call"),
            (Route::NotFound, "not_found"),
        ];
        for (route, label) in labels {
            assert_eq!(route.label(), label);
        }
        assert_eq!(Route::Mcp.server(), None);
    }
}
