//! The configuration model: LiteLLM's `mcp_servers:` and `general_settings:`, plus the environment.
//!
//! Operators bring an existing LiteLLM `config.yaml`; we read the same keys and the same
//! `os.environ/NAME` references (resolved through a lookup the caller passes, so this module never
//! touches the process environment). Where LiteLLM guesses silently we fail at load with a
//! [`Diagnostic`] that names the server, the field and the fix; where a setting is legal but risky we
//! return a warning as a value. Every diagnostic is collected, not just the first, so `check config`
//! can list them all with their place in the file.

use std::fmt;

use indexmap::IndexMap;
use serde_json::{Map, Value};
use url::Url;

use crate::Reason as _;
use crate::flow::{Flow, FlowError, FlowInput, OAuth2Flow, select_flow};
use crate::origin::{HostCase, Origin, OriginSettings, TrustedProxies, parse_authority};
use crate::redirect::TrustedRedirectOrigins;
use crate::seal::{KeyError, MAX_GRANT_LIFETIME, SEALING_KEYS_ENV, SealingKeys};
use crate::secret::Secret;

/// Looks up an environment variable; the caller decides where variables come from.
pub type EnvLookup<'a> = &'a dyn Fn(&str) -> Option<String>;

/// The prefix LiteLLM uses to reference an environment variable from YAML.
pub const ENV_PREFIX: &str = "os.environ/";

pub use crate::flow::AuthType;

/// `transport`: how the gateway talks to the upstream MCP server.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    /// Streamable HTTP (the default).
    Http,
    /// The legacy HTTP+SSE transport.
    Sse,
    /// A local process; not served by this gateway.
    Stdio,
}

/// `token_endpoint_auth_method`: the OAuth client's own type (only `client_secret_post` and
/// `client_secret_basic` are read from the configuration).
pub type ClientAuthMethod = crate::client::token::TokenEndpointAuth;

/// One `mcp_servers` entry as written, with `os.environ/` references resolved and types checked.
///
/// Fields that are absent stay `None`; nothing is inferred here. Unknown keys are kept by name so
/// a typo (`oauth_flow`) can be reported as a warning instead of silently ignored.
#[derive(Clone, Debug, Default)]
pub struct ServerEntry {
    /// `url`: the upstream MCP endpoint.
    pub url: Option<String>,
    /// `transport`.
    pub transport: Option<Transport>,
    /// `auth_type`.
    pub auth_type: Option<AuthType>,
    /// `oauth2_flow`.
    pub oauth2_flow: Option<OAuth2Flow>,
    /// `client_id`.
    pub client_id: Option<String>,
    /// `client_secret`.
    pub client_secret: Option<Secret>,
    /// `token_url`.
    pub token_url: Option<String>,
    /// `authorization_url`.
    pub authorization_url: Option<String>,
    /// `registration_url`.
    pub registration_url: Option<String>,
    /// `revocation_url`: the upstream's RFC 7009 revocation endpoint (an addition to LiteLLM's
    /// fields; filled by start-up discovery when the upstream names one). Revoking a grant
    /// revokes its upstream refresh token there, best effort.
    pub revocation_url: Option<String>,
    /// `issuer`: the authorization server's issuer identifier.
    pub issuer: Option<String>,
    /// `scopes`.
    pub scopes: Option<Vec<String>>,
    /// `token_validation`: dotted path → expected value.
    pub token_validation: Option<Map<String, Value>>,
    /// `token_storage_ttl_seconds`.
    pub token_storage_ttl_seconds: Option<u64>,
    /// `delegate_auth_to_upstream`.
    pub delegate_auth_to_upstream: Option<bool>,
    /// `available_on_public_internet` (LiteLLM's default is `true`).
    pub available_on_public_internet: Option<bool>,
    /// `authentication_token` (alias `auth_value`).
    pub authentication_token: Option<Secret>,
    /// `token_endpoint_auth_method`.
    pub token_endpoint_auth_method: Option<ClientAuthMethod>,
    /// `audience` for token exchange.
    pub audience: Option<String>,
    /// `token_exchange_endpoint` (falls back to `token_url`).
    pub token_exchange_endpoint: Option<String>,
    /// `subject_token_type` for token exchange.
    pub subject_token_type: Option<String>,
    /// `resource` (RFC 8707) for the gateway's own M2M token requests.
    pub resource: ResourceSetting,
    /// Keys this version does not know, in file order.
    pub unknown_keys: Vec<String>,
}

/// The `resource` (RFC 8707) an M2M token request names (design §4.3): an MCP server checks that a
/// token names it as its audience.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum ResourceSetting {
    /// No `resource:` field: the server's URL, except for a Microsoft Entra issuer or token host,
    /// which refuses the parameter.
    #[default]
    Default,
    /// `resource: null`: never sent.
    Omit,
    /// `resource: <value>`: sent as written.
    Value(String),
}

/// Keys LiteLLM accepts that this gateway reads nowhere but must not warn about.
const KNOWN_IGNORED_KEYS: &[&str] = &[
    "description",
    "mcp_info",
    "alias",
    "spec_path",
    "command",
    "args",
    "env",
    "extra_headers",
    "static_headers",
    "env_vars",
    "allowed_tools",
    "disallowed_tools",
    "allowed_params",
    "access_groups",
    "allow_all_keys",
    "oauth_passthrough",
    "dcr_bridge",
    "per_server_oauth_discovery",
    "aws_access_key_id",
    "aws_secret_access_key",
    "aws_session_token",
    "aws_region_name",
    "aws_service_name",
    "aws_role_name",
    "aws_session_name",
    "token_exchange_profile",
    "id_jag_resource_token_endpoint",
    "id_jag_resource",
    "client_private_key",
    "client_private_key_id",
    "client_assertion_signing_alg",
    "upstream_resource",
    "upstream_token_header",
    "instructions",
    "allow_sampling",
    "allow_elicitation",
    "timeout",
    "max_concurrent_requests",
    "tool_name_to_display_name",
    "tool_name_to_description",
    "server_name",
    "server_id",
];

/// Reads fields of one JSON object, collecting a diagnostic per bad field.
struct FieldReader<'a> {
    object: &'a Map<String, Value>,
    env: EnvLookup<'a>,
    server: Option<&'a str>,
    section: &'static str,
    diagnostics: Vec<Diagnostic>,
}

impl<'a> FieldReader<'a> {
    fn error(&mut self, field: &str, code: &'static str, message: String, fix: impl Into<String>) {
        self.diagnostics.push(Diagnostic {
            severity: Severity::Error,
            code,
            section: self.section,
            server: self.server.map(str::to_owned),
            field: Some(field.to_owned()),
            message,
            fix: Some(fix.into()),
            location: None,
        });
    }

    /// A string field; `os.environ/NAME` is resolved; an empty string counts as absent.
    fn string(&mut self, field: &str) -> Option<String> {
        match self.object.get(field)? {
            Value::Null => None,
            Value::String(text) => {
                let resolved = self.resolve_env(field, text)?;
                (!resolved.trim().is_empty()).then_some(resolved)
            }
            other => {
                self.error(
                    field,
                    "invalid_type",
                    format!("`{field}` must be a string, found {}", kind(other)),
                    format!("quote the value of `{field}`"),
                );
                None
            }
        }
    }

    fn resolve_env(&mut self, field: &str, text: &str) -> Option<String> {
        let Some(name) = text.strip_prefix(ENV_PREFIX) else {
            return Some(text.to_owned());
        };
        match (self.env)(name) {
            Some(value) => Some(value),
            None => {
                self.error(
                    field,
                    "missing_environment_variable",
                    format!("`{field}` references environment variable `{name}`, which is not set"),
                    format!("export {name}=... before starting, or write the value inline"),
                );
                None
            }
        }
    }

    fn secret(&mut self, field: &str) -> Option<Secret> {
        self.string(field).map(Secret::new)
    }

    fn boolean(&mut self, field: &str) -> Option<bool> {
        match self.object.get(field)? {
            Value::Null => None,
            Value::Bool(flag) => Some(*flag),
            other => {
                self.error(
                    field,
                    "invalid_type",
                    format!("`{field}` must be a boolean, found {}", kind(other)),
                    format!("write `{field}: true` or `{field}: false` without quotes"),
                );
                None
            }
        }
    }

    fn unsigned(&mut self, field: &str) -> Option<u64> {
        self.whole_number(field, "seconds")
    }

    /// A non-negative integer field counted in `unit` (named in the diagnostic).
    fn whole_number(&mut self, field: &str, unit: &str) -> Option<u64> {
        match self.object.get(field)? {
            Value::Null => None,
            Value::Number(number) if number.as_u64().is_some() => number.as_u64(),
            other => {
                self.error(
                    field,
                    "invalid_type",
                    format!("`{field}` must be a whole number of {unit}, found {}", kind(other)),
                    format!("write `{field}` as a non-negative integer"),
                );
                None
            }
        }
    }

    fn string_list(&mut self, field: &str) -> Option<Vec<String>> {
        match self.object.get(field)? {
            Value::Null => None,
            Value::Array(items) => {
                let mut list = Vec::with_capacity(items.len());
                for item in items {
                    match item {
                        Value::String(text) if text.trim().is_empty() => {}
                        Value::String(text) => list.push(text.trim().to_owned()),
                        other => {
                            self.error(
                                field,
                                "invalid_type",
                                format!(
                                    "`{field}` must be a list of strings, found an item that is {}",
                                    kind(other)
                                ),
                                format!("quote every item of `{field}`"),
                            );
                            return None;
                        }
                    }
                }
                Some(list)
            }
            other => {
                self.error(
                    field,
                    "invalid_type",
                    format!("`{field}` must be a list of strings, found {}", kind(other)),
                    format!("write `{field}: [\"a\", \"b\"]`"),
                );
                None
            }
        }
    }

    /// An enumerated field; unlike free text, an empty string is an unknown value, not an absent one,
    /// so `oauth2_flow: ""` fails at load instead of silently selecting a flow.
    fn choice<T: Copy>(&mut self, field: &str, choices: &[(&str, T)]) -> Option<T> {
        let value = match self.object.get(field)? {
            Value::String(text) if text.trim().is_empty() => text.clone(),
            _ => self.string(field)?,
        };
        if let Some((_, choice)) = choices.iter().find(|(name, _)| *name == value) {
            return Some(*choice);
        }
        let names: Vec<&str> = choices.iter().map(|(name, _)| *name).collect();
        self.error(
            field,
            "unknown_value",
            format!("`{field}: {}` is not a known value", truncate(&value)),
            format!("use one of: {}", names.join(", ")),
        );
        None
    }
}

fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "a mapping",
    }
}

fn truncate(value: &str) -> String {
    value.chars().take(64).collect()
}

impl ServerEntry {
    /// The fields flow selection (design §4.1) reads.
    pub fn flow_input(&self) -> FlowInput<'_> {
        FlowInput {
            auth_type: self.auth_type,
            oauth2_flow: self.oauth2_flow,
            authorization_url: self.authorization_url.as_deref(),
            token_url: self.token_url.as_deref(),
            client_id: self.client_id.as_deref(),
            client_secret: self.client_secret.as_ref().map(Secret::expose),
        }
    }

    /// The fields this module reads, in documentation order.
    pub const KNOWN_KEYS: &'static [&'static str] = &[
        "url",
        "transport",
        "auth_type",
        "oauth2_flow",
        "client_id",
        "client_secret",
        "token_url",
        "authorization_url",
        "registration_url",
        "revocation_url",
        "issuer",
        "scopes",
        "token_validation",
        "token_storage_ttl_seconds",
        "delegate_auth_to_upstream",
        "available_on_public_internet",
        "authentication_token",
        "auth_value",
        "token_endpoint_auth_method",
        "audience",
        "token_exchange_endpoint",
        "subject_token_type",
        "resource",
    ];

    /// Reads one entry from its JSON form, resolving `os.environ/` through `env`; returns every
    /// field error at once.
    pub fn from_json(
        server: &str,
        object: &Map<String, Value>,
        env: EnvLookup<'_>,
    ) -> Result<Self, Vec<Diagnostic>> {
        let mut reader = FieldReader {
            object,
            env,
            server: Some(server),
            section: "mcp_servers",
            diagnostics: Vec::new(),
        };
        let token_validation = match object.get("token_validation") {
            None | Some(Value::Null) => None,
            Some(Value::Object(rules)) => {
                for (path, expected) in rules {
                    if crate::token::text_form(expected).is_none() || path.is_empty() {
                        reader.error("token_validation", "invalid_type", format!("token_validation rule `{}` must map a non-empty path to a string, number or boolean", truncate(path)), "write rules as `team.enterprise_id: \"E123\"`");
                    }
                }
                Some(rules.clone())
            }
            Some(other) => {
                reader.error(
                    "token_validation",
                    "invalid_type",
                    format!("`token_validation` must be a mapping, found {}", kind(other)),
                    "write `token_validation: {team.enterprise_id: \"E123\"}`",
                );
                None
            }
        };
        let authentication_token = match reader.secret("authentication_token") {
            Some(token) => Some(token),
            None => reader.secret("auth_value"),
        };
        let entry = Self {
            url: reader.string("url"),
            transport: reader.choice(
                "transport",
                &[
                    ("http", Transport::Http),
                    ("streamable_http", Transport::Http),
                    ("sse", Transport::Sse),
                    ("stdio", Transport::Stdio),
                ],
            ),
            auth_type: reader.choice("auth_type", &AuthType::ALL),
            oauth2_flow: reader.choice(
                "oauth2_flow",
                &[
                    ("client_credentials", OAuth2Flow::ClientCredentials),
                    ("authorization_code", OAuth2Flow::AuthorizationCode),
                ],
            ),
            client_id: reader.string("client_id"),
            client_secret: reader.secret("client_secret"),
            token_url: reader.string("token_url"),
            authorization_url: reader.string("authorization_url"),
            registration_url: reader.string("registration_url"),
            revocation_url: reader.string("revocation_url"),
            issuer: reader.string("issuer"),
            scopes: reader.string_list("scopes"),
            token_validation,
            token_storage_ttl_seconds: reader.unsigned("token_storage_ttl_seconds"),
            delegate_auth_to_upstream: reader.boolean("delegate_auth_to_upstream"),
            available_on_public_internet: reader.boolean("available_on_public_internet"),
            authentication_token,
            token_endpoint_auth_method: reader.choice(
                "token_endpoint_auth_method",
                &[
                    ("client_secret_post", ClientAuthMethod::ClientSecretPost),
                    ("client_secret_basic", ClientAuthMethod::ClientSecretBasic),
                ],
            ),
            audience: reader.string("audience"),
            token_exchange_endpoint: reader.string("token_exchange_endpoint"),
            subject_token_type: reader.string("subject_token_type"),
            resource: match object.get("resource") {
                None => ResourceSetting::Default,
                Some(Value::Null) => ResourceSetting::Omit,
                Some(_) => reader.string("resource").map_or(ResourceSetting::Omit, ResourceSetting::Value),
            },
            unknown_keys: Self::unknown_keys(object),
        };
        if reader.diagnostics.is_empty() { Ok(entry) } else { Err(reader.diagnostics) }
    }

    /// The keys of `object` that neither this gateway nor LiteLLM knows, in file order.
    pub fn unknown_keys(object: &Map<String, Value>) -> Vec<String> {
        object
            .keys()
            .filter(|key| {
                !Self::KNOWN_KEYS.contains(&key.as_str()) && !KNOWN_IGNORED_KEYS.contains(&key.as_str())
            })
            .cloned()
            .collect()
    }

    /// The policy-relevant summary of this entry (flow selected, delegation flag, issuer identity).
    pub fn policy(&self) -> Result<ServerPolicy, FlowError> {
        let selection = select_flow(&self.flow_input())?;
        Ok(ServerPolicy {
            auth_type: self.auth_type.unwrap_or(AuthType::None),
            flow: selection.flow,
            flow_inferred: selection.inferred,
            delegate_auth_to_upstream: self.delegate_auth_to_upstream == Some(true),
            authorization_server: self
                .authorization_url
                .as_deref()
                .or(self.issuer.as_deref())
                .and_then(normalize_authorization_server),
            has_static_token: self.authentication_token.as_ref().is_some_and(|token| !token.is_empty()),
        })
    }
}

/// Normalises an authorization-server URL for identity comparison: scheme and host lower-cased,
/// default port dropped, one trailing slash dropped; the path is kept, because two tenants on one
/// host are two authorization servers.
pub fn normalize_authorization_server(value: &str) -> Option<String> {
    let url = Url::parse(value).ok()?;
    let origin = Origin::from_url(&url)?;
    let path = url.path();
    let path = path.strip_suffix('/').unwrap_or(path);
    let mut normalized = format!("{origin}{path}");
    if let Some(query) = url.query() {
        normalized.push('?');
        normalized.push_str(query);
    }
    Some(normalized)
}

/// The facts about one server that per-request decisions need, computed once at load.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerPolicy {
    /// `auth_type`, `none` when absent.
    pub auth_type: AuthType,
    /// The selected flow.
    pub flow: Flow,
    /// Whether the flow was inferred rather than set with `oauth2_flow`.
    pub flow_inferred: bool,
    /// `delegate_auth_to_upstream` is the boolean `true`.
    pub delegate_auth_to_upstream: bool,
    /// The normalised `authorization_url`, else `issuer`, naming the authorization server.
    pub authorization_server: Option<String>,
    /// A non-empty `authentication_token` is configured.
    pub has_static_token: bool,
}

impl ServerPolicy {
    /// Whether auth for this server may be delegated to the upstream (design §4.6): interactive
    /// oauth2 that opted in. `delegate_auth_to_upstream` anywhere else is ignored.
    pub fn delegates(&self) -> bool {
        self.auth_type == AuthType::OAuth2 && self.flow.is_interactive() && self.delegate_auth_to_upstream
    }

    /// Whether the gateway is this server's clients' authorization server (design §4.8):
    /// interactive oauth2 that does not delegate.
    pub fn gateway_authorizes(&self) -> bool {
        self.auth_type == AuthType::OAuth2 && self.flow.is_interactive() && !self.delegate_auth_to_upstream
    }
}

/// One fully validated upstream server.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    /// The key under `mcp_servers`.
    pub name: String,
    /// The upstream MCP endpoint.
    pub url: Url,
    /// The entry as written (resolved).
    pub entry: ServerEntry,
    /// The per-request policy summary.
    pub policy: ServerPolicy,
    /// The upstream authorization server advertises `iss` in its authorization responses
    /// (RFC 9207), as start-up discovery found: an answer at `/callback` without one is refused.
    pub issuer_in_responses: bool,
}

/// `general_settings` plus the environment, validated.
#[derive(Clone, Debug, Default)]
pub struct GatewaySettings {
    /// Keys that admit callers: `master_key` first, then `gateway_keys`.
    pub gateway_keys: Vec<Secret>,
    /// The name of each of [`GatewaySettings::gateway_keys`], in the same order: `master` for
    /// `master_key`, the map key for `gateway_keys: {name: key}`, `key-{n}` for the `n`th entry
    /// (from 1, as written) of `gateway_keys: [..]`. A grant's identity is a name (design §4.8).
    pub gateway_key_names: Vec<String>,
    /// Sealing keys, the grant store and the grant lifetime (design §4.10).
    pub grants: GrantSettings,
    /// Everything that decides the public origin.
    pub origin: OriginSettings,
    /// `MCP_TRUSTED_REDIRECT_ORIGINS`.
    pub trusted_redirect_origins: TrustedRedirectOrigins,
    /// What a stranger's connection may hold: idle time, body read time, connections.
    pub connections: ConnectionLimits,
}

impl GatewaySettings {
    /// Every gateway key with its name (see [`GatewaySettings::gateway_key_names`]); a key without
    /// a name (settings built by hand) is named `key-{n}` by its position from 1.
    pub fn named_gateway_keys(&self) -> impl Iterator<Item = (std::borrow::Cow<'_, str>, &Secret)> {
        self.gateway_keys.iter().enumerate().map(|(index, key)| {
            let name = match self.gateway_key_names.get(index) {
                Some(name) => std::borrow::Cow::Borrowed(name.as_str()),
                None => std::borrow::Cow::Owned(format!("key-{}", index + 1)),
            };
            (name, key)
        })
    }

    /// The key configured under `name`, if any.
    pub fn gateway_key_named(&self, name: &str) -> Option<&Secret> {
        self.named_gateway_keys().find(|(candidate, _)| candidate == name).map(|(_, key)| key)
    }
}

/// What the gateway needs to act as an authorization server (design §4.10).
#[derive(Clone, Debug)]
pub struct GrantSettings {
    /// `MCP_OAUTH_SEALING_KEYS`, else `general_settings.sealing_keys`; `None` when neither is set
    /// (then `serve` draws a key at start-up, memory store only).
    pub sealing_keys: Option<SealingKeys>,
    /// `general_settings.mcp_oauth_store`. Default: memory.
    pub store: StoreSetting,
    /// `general_settings.grant_max_lifetime_days`: a grant ends this long after its last refresh.
    /// Default and maximum: 30 days.
    pub max_lifetime: std::time::Duration,
}

impl Default for GrantSettings {
    fn default() -> Self {
        Self { sealing_keys: None, store: StoreSetting::Memory, max_lifetime: MAX_GRANT_LIFETIME }
    }
}

/// `general_settings.mcp_oauth_store`: where grants, single-use marks and upstream registrations
/// live.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum StoreSetting {
    /// `memory`: in the process; lost on restart, one replica only.
    #[default]
    Memory,
    /// `sqlite://PATH`: an embedded database file that survives restarts (one host).
    Sqlite {
        /// Everything after `sqlite://`: absolute when it starts with `/`, else relative to the
        /// working directory.
        path: String,
    },
    /// `redis://[[USER]:PASSWORD@]HOST[:PORT][/DB]`: shared by replicas.
    Redis(RedisSetting),
}

impl StoreSetting {
    /// Whether the store outlives the process or is shared (sqlite, redis): it needs sealing keys.
    pub fn is_durable(&self) -> bool {
        !matches!(self, Self::Memory)
    }

    /// Parses the setting; the error never repeats the value (a Redis URL may hold a password).
    pub fn parse(text: &str) -> Result<Self, StoreSettingError> {
        let text = text.trim();
        if text == "memory" {
            return Ok(Self::Memory);
        }
        if let Some(path) = text.strip_prefix("sqlite://") {
            if path.is_empty() || path.contains('\0') {
                return Err(StoreSettingError::SqlitePath);
            }
            return Ok(Self::Sqlite { path: path.to_owned() });
        }
        if text.starts_with("redis://") {
            return RedisSetting::parse(text).map(Self::Redis);
        }
        Err(StoreSettingError::UnknownScheme)
    }
}

/// A Redis store's address; `Debug` redacts the password.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RedisSetting {
    /// Host name or IP address.
    pub host: String,
    /// Port; 6379 when the URL names none.
    pub port: u16,
    /// Database number; 0 when the URL names none.
    pub db: u32,
    /// `USER` of the URL's userinfo (Redis 6 ACL), if any.
    pub username: Option<String>,
    /// `PASSWORD` of the URL's userinfo, if any.
    pub password: Option<Secret>,
}

impl RedisSetting {
    fn parse(text: &str) -> Result<Self, StoreSettingError> {
        let url = Url::parse(text).map_err(|_| StoreSettingError::RedisUrl)?;
        let host = match url.host() {
            Some(url::Host::Domain(name)) if !name.is_empty() => name.to_owned(),
            Some(url::Host::Ipv4(address)) => address.to_string(),
            Some(url::Host::Ipv6(address)) => format!("[{address}]"),
            _ => return Err(StoreSettingError::RedisUrl),
        };
        if url.query().is_some() || url.fragment().is_some() {
            return Err(StoreSettingError::RedisUrl);
        }
        let db = match url.path().trim_start_matches('/') {
            "" => 0,
            number => number.parse().map_err(|_| StoreSettingError::RedisUrl)?,
        };
        // `url` keeps userinfo percent-encoded; Redis wants the text itself (`p%40ss` is `p@ss`).
        let decode = |text: &str| {
            percent_encoding::percent_decode_str(text)
                .decode_utf8()
                .map(|decoded| decoded.into_owned())
                .map_err(|_| StoreSettingError::RedisUrl)
        };
        let username = match url.username() {
            "" => None,
            name => Some(decode(name)?),
        };
        let password = url.password().map(decode).transpose()?.map(Secret::new);
        Ok(Self { host, port: url.port().unwrap_or(6379), db, username, password })
    }
}

/// A `general_settings.mcp_oauth_store` that is not one of the three forms.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum StoreSettingError {
    /// Neither `memory`, `sqlite://` nor `redis://`.
    #[error("`mcp_oauth_store` must be `memory`, `sqlite://PATH` or `redis://HOST:PORT[/DB]`")]
    UnknownScheme,
    /// `sqlite://` with no path.
    #[error("`mcp_oauth_store: sqlite://` needs a file path after `sqlite://`")]
    SqlitePath,
    /// A `redis://` URL without a host, with a non-numeric database, a query or a fragment.
    #[error("`mcp_oauth_store` is not a valid `redis://HOST:PORT[/DB]` URL")]
    RedisUrl,
}

/// How long a connection may idle or dribble a body, and how many may be open (design §7): a
/// stranger who opens sockets and sends nothing must not hold them for good.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnectionLimits {
    /// `general_settings.mcp_idle_timeout_seconds`: a keep-alive connection with no request (or a
    /// request head that does not arrive) for this long is closed. Default 60 s.
    pub idle_timeout: std::time::Duration,
    /// `general_settings.mcp_oauth_body_timeout_seconds`: time to read a request body on the OAuth
    /// endpoints (token, register). Default 10 s.
    pub oauth_body_timeout: std::time::Duration,
    /// `general_settings.mcp_body_timeout_seconds`: time to read an MCP request body. Default 60 s.
    pub mcp_body_timeout: std::time::Duration,
    /// `general_settings.mcp_max_connections`: connections open at once; past it a new one gets a
    /// 503 and is closed. Default 10,000.
    pub max_connections: usize,
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        Self {
            idle_timeout: std::time::Duration::from_secs(60),
            oauth_body_timeout: std::time::Duration::from_secs(10),
            mcp_body_timeout: std::time::Duration::from_secs(60),
            max_connections: 10_000,
        }
    }
}

/// A loaded configuration: what the gateway serves.
#[derive(Clone, Debug, Default)]
pub struct GatewayConfig {
    /// Servers in file order, by name.
    pub servers: IndexMap<String, ServerConfig>,
    /// Settings.
    pub settings: GatewaySettings,
}

/// A successful load with its warnings.
#[derive(Clone, Debug)]
pub struct Loaded {
    /// The configuration.
    pub config: GatewayConfig,
    /// Warnings to print at start-up.
    pub warnings: Vec<Diagnostic>,
}

/// How serious a diagnostic is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Severity {
    /// The configuration cannot be used.
    Error,
    /// The configuration works but is probably not what the operator wants.
    Warning,
}

/// A line and column in the configuration file (1-based).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Location {
    /// Line, starting at 1.
    pub line: u64,
    /// Column, starting at 1.
    pub column: u64,
}

/// One configuration error or warning: where, what, and how to fix it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Diagnostic {
    /// Error or warning.
    pub severity: Severity,
    /// A stable `snake_case` code.
    pub code: &'static str,
    /// The top-level section (`mcp_servers`, `general_settings`, `environment`).
    pub section: &'static str,
    /// The server's name, for `mcp_servers` diagnostics.
    pub server: Option<String>,
    /// The field (or environment variable) concerned.
    pub field: Option<String>,
    /// What is wrong, never containing a secret.
    pub message: String,
    /// What to change.
    pub fix: Option<String>,
    /// Where in the file, when known.
    pub location: Option<Location>,
}

impl Diagnostic {
    fn new(
        severity: Severity,
        code: &'static str,
        section: &'static str,
        server: Option<&str>,
        field: Option<&str>,
        message: String,
        fix: impl Into<String>,
    ) -> Self {
        Self {
            severity,
            code,
            section,
            server: server.map(str::to_owned),
            field: field.map(str::to_owned),
            message,
            fix: Some(fix.into()),
            location: None,
        }
    }

    /// The dotted place of the diagnostic, e.g. `mcp_servers.github.oauth2_flow`.
    pub fn place(&self) -> String {
        let mut place = self.section.to_owned();
        for part in [self.server.as_deref(), self.field.as_deref()].into_iter().flatten() {
            place.push('.');
            place.push_str(part);
        }
        place
    }
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let severity = match self.severity {
            Severity::Error => "error",
            Severity::Warning => "warning",
        };
        write!(f, "{severity}[{}] {}", self.code, self.place())?;
        if let Some(location) = self.location {
            write!(f, " (line {}, column {})", location.line, location.column)?;
        }
        write!(f, ": {}", self.message)?;
        if let Some(fix) = &self.fix {
            write!(f, "; fix: {fix}")?;
        }
        Ok(())
    }
}

/// A configuration that cannot be used, with every error and warning found.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("the configuration has {} error(s); the first: {}", .errors.len(), .errors.first().map(ToString::to_string).unwrap_or_default())]
pub struct ConfigErrors {
    /// Errors, in file order.
    pub errors: Vec<Diagnostic>,
    /// Warnings found on the way.
    pub warnings: Vec<Diagnostic>,
}

impl crate::Reason for ConfigErrors {
    fn reason(&self) -> &'static str {
        self.errors.first().map_or("invalid_config", |error| error.code)
    }
}

/// Loads a whole configuration from its JSON form (the YAML is converted first, see [`load_yaml`]).
/// `env` supplies `PROXY_BASE_URL`, `MCP_TRUSTED_REDIRECT_ORIGINS` and every `os.environ/` reference.
pub fn load(document: &Value, env: EnvLookup<'_>) -> Result<Loaded, ConfigErrors> {
    let mut errors = Vec::new();
    let mut warnings = Vec::new();
    let empty = Map::new();
    let Some(root) = document.as_object() else {
        errors.push(Diagnostic::new(
            Severity::Error,
            "invalid_type",
            "config",
            None,
            None,
            "the configuration must be a mapping at the top level".into(),
            "start the file with `mcp_servers:`",
        ));
        return Err(ConfigErrors { errors, warnings });
    };
    let settings = load_settings(
        root.get("general_settings").and_then(Value::as_object).unwrap_or(&empty),
        env,
        &mut errors,
        &mut warnings,
    );
    if let Some(other) = root.get("general_settings").filter(|value| !value.is_object() && !value.is_null()) {
        errors.push(Diagnostic::new(
            Severity::Error,
            "invalid_type",
            "general_settings",
            None,
            None,
            format!("`general_settings` must be a mapping, found {}", kind(other)),
            "indent its keys under `general_settings:`",
        ));
    }
    let mut servers = IndexMap::new();
    match root.get("mcp_servers") {
        None | Some(Value::Null) => warnings.push(Diagnostic::new(
            Severity::Warning,
            "no_servers",
            "mcp_servers",
            None,
            None,
            "no `mcp_servers` are configured; the gateway will serve nothing".into(),
            "add an `mcp_servers:` mapping",
        )),
        Some(Value::Object(entries)) => {
            for (name, value) in entries {
                if let Some(server) = load_server(name, value, env, &mut errors, &mut warnings) {
                    servers.insert(name.clone(), server);
                }
            }
        }
        Some(other) => errors.push(Diagnostic::new(
            Severity::Error,
            "invalid_type",
            "mcp_servers",
            None,
            None,
            format!("`mcp_servers` must be a mapping of name to server, found {}", kind(other)),
            "write `mcp_servers:` followed by indented `name:` entries",
        )),
    }
    let interactive: Vec<&str> = servers
        .values()
        .filter(|server| {
            server.policy.auth_type == AuthType::OAuth2 && server.policy.flow == Flow::AuthorizationCode
        })
        .map(|server| server.name.as_str())
        .collect();
    if !interactive.is_empty() && !settings.origin.is_pinned() {
        warnings.push(Diagnostic::new(
            Severity::Warning,
            "origin_not_pinned",
            "environment",
            None,
            Some("PROXY_BASE_URL"),
            format!(
                "interactive server(s) {} need a pinned public origin; `serve` refuses to start unless it listens on a loopback address",
                interactive.join(", ")
            ),
            "set PROXY_BASE_URL to the origin clients use, or trust your proxy (use_x_forwarded_for with mcp_trusted_proxy_ranges), or set allowed_hosts",
        ));
    }
    let authorization_server_for: Vec<&str> = servers
        .values()
        .filter(|server| server.policy.gateway_authorizes())
        .map(|server| server.name.as_str())
        .collect();
    if !authorization_server_for.is_empty() {
        warnings.extend(grant_store_warnings(&settings.grants, &authorization_server_for));
    }
    let keyed: Vec<&str> = servers
        .values()
        .filter(|server| !server.policy.delegates())
        .map(|server| server.name.as_str())
        .collect();
    if !keyed.is_empty() && settings.gateway_keys.iter().all(|key| key.is_empty()) {
        // Design §7: no key refuses every request that is not delegated (LiteLLM would admit
        // everyone); say so at load instead of with the first 401.
        warnings.push(Diagnostic::new(
            Severity::Warning,
            "no_gateway_key",
            "general_settings",
            None,
            Some("master_key"),
            format!(
                "no gateway key is configured, so every MCP and REST request to {} is refused with 401 (only delegated servers and the OAuth endpoints answer)",
                keyed.join(", ")
            ),
            "set general_settings.master_key (e.g. `os.environ/MCP_GATEWAY_KEY`) or gateway_keys",
        ));
    }
    if errors.is_empty() {
        Ok(Loaded { config: GatewayConfig { servers, settings }, warnings })
    } else {
        Err(ConfigErrors { errors, warnings })
    }
}

/// The warnings of design §4.10 for a gateway that issues grants (for `servers`): a memory store
/// keeps them per process, and without keys they die with it.
fn grant_store_warnings(grants: &GrantSettings, servers: &[&str]) -> Option<Diagnostic> {
    let servers = servers.join(", ");
    match (&grants.store, &grants.sealing_keys) {
        (StoreSetting::Memory, None) => Some(Diagnostic::new(
            Severity::Warning,
            "sealing_key_drawn",
            "general_settings",
            None,
            Some("sealing_keys"),
            format!(
                "no sealing keys are configured, so a key is drawn at start-up: client registrations, grants and tokens of {servers} die with the process"
            ),
            format!(
                "set {SEALING_KEYS_ENV} to a base64url 32-byte key (`openssl rand -base64 32 | tr '+/' '-_'`)"
            ),
        )),
        (StoreSetting::Memory, Some(_)) => Some(Diagnostic::new(
            Severity::Warning,
            "store_per_process",
            "general_settings",
            None,
            Some("mcp_oauth_store"),
            format!(
                "the grant store is in memory: single-use guards, grants and refresh generations of {servers} are per process, so run one replica only; grants end on restart"
            ),
            "set mcp_oauth_store to sqlite://PATH (one host) or redis://HOST:PORT (several replicas)",
        )),
        _ => None,
    }
}

/// Names the gateway's own routes use at the top of the path (design §4.8): a server cannot take
/// them.
pub const RESERVED_SERVER_NAMES: [&str; 5] = [".well-known", "callback", "health", "mcp", "mcp-rest"];

/// Server names appear in URL paths and header names, so they are restricted to a safe alphabet,
/// and none may be a name the gateway's own routes use ([`RESERVED_SERVER_NAMES`]).
pub fn is_valid_server_name(name: &str) -> bool {
    !RESERVED_SERVER_NAMES.contains(&name)
        && !name.is_empty()
        && name.len() <= 64
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
        && name != "."
        && name != ".."
}

fn load_server(
    name: &str,
    value: &Value,
    env: EnvLookup<'_>,
    errors: &mut Vec<Diagnostic>,
    warnings: &mut Vec<Diagnostic>,
) -> Option<ServerConfig> {
    let server = Some(name);
    if !is_valid_server_name(name) {
        errors.push(Diagnostic::new(
            Severity::Error,
            "invalid_server_name",
            "mcp_servers",
            server,
            None,
            format!("server name `{}` is not usable in a URL path and header name", truncate(name)),
            "use letters, digits, `_`, `-` and `.` only, at most 64 characters, and none of .well-known, callback, health, mcp, mcp-rest",
        ));
        return None;
    }
    let Some(object) = value.as_object() else {
        errors.push(Diagnostic::new(
            Severity::Error,
            "invalid_type",
            "mcp_servers",
            server,
            None,
            format!("server `{name}` must be a mapping, found {}", kind(value)),
            "indent the server's fields under its name",
        ));
        return None;
    };
    for key in &ServerEntry::unknown_keys(object) {
        warnings.push(Diagnostic::new(
            Severity::Warning,
            "unknown_field",
            "mcp_servers",
            server,
            Some(key),
            format!("`{}` is not a field this gateway or LiteLLM knows; it is ignored", truncate(key)),
            "check the spelling against docs/configuration.md",
        ));
    }
    let entry = match ServerEntry::from_json(name, object, env) {
        Ok(entry) => entry,
        Err(found) => {
            errors.extend(found);
            return None;
        }
    };
    let policy = match entry.policy() {
        Ok(policy) => policy,
        Err(error) => {
            errors.push(Diagnostic::new(
                Severity::Error,
                crate::Reason::reason(&error),
                "mcp_servers",
                server,
                Some(error.field()),
                error.to_string(),
                error.fix(),
            ));
            return None;
        }
    };
    if entry.transport == Some(Transport::Stdio) {
        warnings.push(Diagnostic::new(
            Severity::Warning,
            "stdio_not_served",
            "mcp_servers",
            server,
            Some("transport"),
            "stdio servers run as local processes; this gateway serves only HTTP servers and skips it".into(),
            "run the server behind an HTTP transport and set `url`",
        ));
        return None;
    }
    let url = server_url(&entry, name, errors);
    let mut valid = endpoint_urls_are_valid(&entry, name, errors);
    if policy.flow == Flow::TokenExchange
        && (entry.client_id.is_none()
            || entry.client_secret.is_none()
            || (entry.token_exchange_endpoint.is_none() && entry.token_url.is_none()))
    {
        valid = false;
        errors.push(Diagnostic::new(Severity::Error, "incomplete_token_exchange", "mcp_servers", server, Some("auth_type"), "`oauth2_token_exchange` needs `client_id`, `client_secret` and `token_exchange_endpoint` or `token_url`".into(), "add the missing fields"));
    }
    flow_warnings(&entry, &policy, name, warnings);
    match (url, valid) {
        (Some(url), true) => {
            Some(ServerConfig { name: name.to_owned(), url, entry, policy, issuer_in_responses: false })
        }
        _ => None,
    }
}

/// The server's `url`: an absolute http(s) URL without userinfo, else an error.
fn server_url(entry: &ServerEntry, name: &str, errors: &mut Vec<Diagnostic>) -> Option<Url> {
    let server = Some(name);
    match entry.url.as_deref().map(Url::parse) {
        Some(Ok(url))
            if matches!(url.scheme(), "http" | "https")
                && url.host_str().is_some()
                && url.username().is_empty()
                && url.password().is_none() =>
        {
            Some(url)
        }
        Some(_) => {
            errors.push(Diagnostic::new(
                Severity::Error,
                "invalid_url",
                "mcp_servers",
                server,
                Some("url"),
                "`url` is not an absolute http(s) URL without userinfo".into(),
                "write it as https://host/path",
            ));
            None
        }
        None => {
            errors.push(Diagnostic::new(
                Severity::Error,
                "missing_field",
                "mcp_servers",
                server,
                Some("url"),
                format!("server `{name}` has no `url`"),
                "set `url: https://host/mcp`",
            ));
            None
        }
    }
}

/// Whether every configured endpoint (`token_url`, `authorization_url`, `registration_url`,
/// `issuer`, `token_exchange_endpoint`) is an absolute http(s) URL; an error for each that is not.
fn endpoint_urls_are_valid(entry: &ServerEntry, name: &str, errors: &mut Vec<Diagnostic>) -> bool {
    let server = Some(name);
    let mut valid = true;
    for field in [
        "token_url",
        "authorization_url",
        "registration_url",
        "revocation_url",
        "issuer",
        "token_exchange_endpoint",
    ] {
        let value = match field {
            "token_url" => entry.token_url.as_deref(),
            "authorization_url" => entry.authorization_url.as_deref(),
            "registration_url" => entry.registration_url.as_deref(),
            "revocation_url" => entry.revocation_url.as_deref(),
            "issuer" => entry.issuer.as_deref(),
            _ => entry.token_exchange_endpoint.as_deref(),
        };
        if let Some(value) = value
            && !Url::parse(value).is_ok_and(|url| {
                matches!(url.scheme(), "http" | "https")
                    && url.host_str().is_some()
                    && url.fragment().is_none()
            })
        {
            valid = false;
            errors.push(Diagnostic::new(
                Severity::Error,
                "invalid_url",
                "mcp_servers",
                server,
                Some(field),
                format!("`{field}` is not an absolute http(s) URL"),
                format!("write `{field}` as https://host/path"),
            ));
        }
    }
    valid
}

/// The warnings a server's flow draws: a discovered token endpoint, an inferred M2M flow,
/// delegation where it is risky or ignored, and an Entra M2M token without a resource.
fn flow_warnings(entry: &ServerEntry, policy: &ServerPolicy, name: &str, warnings: &mut Vec<Diagnostic>) {
    let server = Some(name);
    if policy.flow == Flow::ClientCredentials && entry.token_url.is_none() && entry.issuer.is_none() {
        warnings.push(Diagnostic::new(
            Severity::Warning,
            "token_url_discovered",
            "mcp_servers",
            server,
            Some("token_url"),
            "no `token_url` is set; it will be discovered from the server's metadata".into(),
            "set `token_url` to pin the token endpoint",
        ));
    }
    if policy.flow == Flow::ClientCredentials && policy.flow_inferred {
        warnings.push(Diagnostic::new(Severity::Warning, "client_credentials_inferred", "mcp_servers", server, Some("oauth2_flow"), format!("server `{name}` uses client_credentials because token_url, client_id and client_secret are set; every caller will share one app identity"), "set `oauth2_flow` explicitly (client_credentials or authorization_code)"));
    }
    if entry.delegate_auth_to_upstream == Some(true)
        && policy.auth_type == AuthType::OAuth2
        && policy.flow == Flow::AuthorizationCode
        && entry.available_on_public_internet == Some(false)
    {
        warnings.push(Diagnostic::new(Severity::Warning, "delegation_on_internal_server", "mcp_servers", server, Some("delegate_auth_to_upstream"), format!("server `{name}` is internal-only (`available_on_public_internet: false`) but delegates auth to the upstream, so the gateway admits callers without its own key check"), "remove `delegate_auth_to_upstream` or make sure the upstream enforces auth for every caller"));
    }
    if entry.delegate_auth_to_upstream == Some(true)
        && !(policy.auth_type == AuthType::OAuth2 && policy.flow == Flow::AuthorizationCode)
    {
        warnings.push(Diagnostic::new(Severity::Warning, "delegation_ignored", "mcp_servers", server, Some("delegate_auth_to_upstream"), "`delegate_auth_to_upstream` applies only to `auth_type: oauth2` servers with the interactive flow; it is ignored here".into(), "remove it, or use `auth_type: oauth2` with `oauth2_flow: authorization_code`"));
    }
    let entra = [entry.issuer.as_deref(), entry.token_url.as_deref()]
        .into_iter()
        .flatten()
        .any(crate::discovery::is_entra_url);
    if policy.flow == Flow::ClientCredentials && entry.resource == ResourceSetting::Default && entra {
        warnings.push(Diagnostic::new(Severity::Warning, "resource_omitted", "mcp_servers", server, Some("resource"), "the token endpoint is Microsoft Entra, which refuses the RFC 8707 `resource` parameter, so the M2M token request names no resource; an MCP server that checks the token's audience may refuse it".into(), "set `resource:` to the application ID URI Entra should issue the token for (for example api://your-app), or `resource: null` to silence this"));
    }
}

fn load_settings(
    object: &Map<String, Value>,
    env: EnvLookup<'_>,
    errors: &mut Vec<Diagnostic>,
    warnings: &mut Vec<Diagnostic>,
) -> GatewaySettings {
    let mut reader =
        FieldReader { object, env, server: None, section: "general_settings", diagnostics: Vec::new() };
    let (gateway_key_names, gateway_keys) = named_gateway_keys(&mut reader).into_iter().unzip();
    let grants = grant_settings(&mut reader, env, warnings);
    let use_x_forwarded_for = reader.boolean("use_x_forwarded_for").unwrap_or(false);
    let ranges = reader.string_list("mcp_trusted_proxy_ranges").unwrap_or_default();
    let allowed_hosts = reader.string_list("allowed_hosts").unwrap_or_default();
    let connections = connection_limits(&mut reader);
    let mut diagnostics = reader.diagnostics;
    let trusted_proxies = TrustedProxies::parse(&ranges).unwrap_or_else(|error| {
        diagnostics.push(Diagnostic::new(
            Severity::Error,
            "invalid_proxy_range",
            "general_settings",
            None,
            Some("mcp_trusted_proxy_ranges"),
            error.to_string(),
            "write CIDR ranges such as 10.0.0.0/8",
        ));
        TrustedProxies::default()
    });
    let mut hosts = Vec::with_capacity(allowed_hosts.len());
    for host in &allowed_hosts {
        match parse_authority(host, HostCase::Insensitive) {
            Ok((name, Some(port))) => hosts.push(format!("{name}:{port}")),
            Ok((name, None)) => hosts.push(name),
            Err(error) => diagnostics.push(Diagnostic::new(
                Severity::Error,
                "invalid_allowed_host",
                "general_settings",
                None,
                Some("allowed_hosts"),
                error.to_string(),
                "list hosts as host or host:port",
            )),
        }
    }
    let proxy_base_url = match env("PROXY_BASE_URL").filter(|value| !value.is_empty()) {
        None => None,
        Some(value) => match Origin::parse(&value) {
            Ok(origin) => Some(origin),
            Err(error) => {
                diagnostics.push(Diagnostic::new(
                    Severity::Error,
                    "invalid_proxy_base_url",
                    "environment",
                    None,
                    Some("PROXY_BASE_URL"),
                    error.to_string(),
                    "set PROXY_BASE_URL to the bare origin clients use, e.g. https://llm.example.com",
                ));
                None
            }
        },
    };
    let trusted_redirect_origins = match env("MCP_TRUSTED_REDIRECT_ORIGINS") {
        None => TrustedRedirectOrigins::default(),
        Some(value) => TrustedRedirectOrigins::parse(&value).unwrap_or_else(|error| {
            diagnostics.push(Diagnostic::new(
                Severity::Error,
                "invalid_trusted_redirect_origin",
                "environment",
                None,
                Some("MCP_TRUSTED_REDIRECT_ORIGINS"),
                error.to_string(),
                "list entries as host, host:port or *.example.com, comma-separated",
            ));
            TrustedRedirectOrigins::default()
        }),
    };
    if proxy_base_url.is_none() && !diagnostics.iter().any(|d| d.code == "invalid_proxy_base_url") {
        let how = if use_x_forwarded_for && !trusted_proxies.is_empty() {
            "X-Forwarded-* from trusted proxies, else the request's Host"
        } else {
            "each request's Host header, which the client controls"
        };
        warnings.push(Diagnostic::new(Severity::Warning, "no_public_origin", "environment", None, Some("PROXY_BASE_URL"), format!("no public origin is configured; redirect_uri checks and metadata will use {how}"), "set PROXY_BASE_URL to the origin clients use (e.g. https://llm.example.com), or set general_settings.allowed_hosts"));
    }
    if use_x_forwarded_for && trusted_proxies.is_empty() {
        warnings.push(Diagnostic::new(Severity::Warning, "no_trusted_proxies", "general_settings", None, Some("mcp_trusted_proxy_ranges"), "`use_x_forwarded_for` is on but no `mcp_trusted_proxy_ranges` are set, so X-Forwarded-* is never trusted".into(), "list your reverse proxies' addresses in mcp_trusted_proxy_ranges"));
    }
    errors.extend(diagnostics);
    GatewaySettings {
        gateway_keys,
        gateway_key_names,
        grants,
        origin: OriginSettings {
            proxy_base_url,
            use_x_forwarded_for,
            trusted_proxies,
            allowed_hosts: hosts,
            listen: None,
        },
        trusted_redirect_origins,
        connections,
    }
}

/// The name `master_key` goes by in a grant's identity.
pub const MASTER_KEY_NAME: &str = "master";

/// `master_key` and `gateway_keys` (a list, or a map of name to key) with their names.
fn named_gateway_keys(reader: &mut FieldReader<'_>) -> Vec<(String, Secret)> {
    const FIELD: &str = "gateway_keys";
    let mut keys: Vec<(String, Secret)> =
        reader.secret("master_key").map(|key| (MASTER_KEY_NAME.to_owned(), key)).into_iter().collect();
    let resolve = |reader: &mut FieldReader<'_>, text: &str| {
        let text = text.trim();
        if text.is_empty() { None } else { reader.resolve_env(FIELD, text).map(Secret::new) }
    };
    match reader.object.get(FIELD) {
        None | Some(Value::Null) => {}
        Some(Value::Array(items)) => {
            for (index, item) in items.iter().enumerate() {
                let Value::String(text) = item else {
                    reader.error(
                        FIELD,
                        "invalid_type",
                        format!("`{FIELD}` must be a list of strings, found an item that is {}", kind(item)),
                        format!("quote every item of `{FIELD}`"),
                    );
                    return keys;
                };
                // Named by position as written, blank items included, so blanking one entry does
                // not rename the ones after it.
                keys.extend(resolve(reader, text).map(|key| (format!("key-{}", index + 1), key)));
            }
        }
        Some(Value::Object(entries)) => {
            for (name, value) in entries {
                if !is_valid_key_name(name) {
                    reader.error(
                        FIELD,
                        "invalid_key_name",
                        format!("gateway key name `{}` is not allowed", truncate(name)),
                        format!("use up to 64 letters, digits, `_`, `-` or `.`; `{MASTER_KEY_NAME}` is master_key's name"),
                    );
                    continue;
                }
                match value {
                    Value::String(text) => keys.extend(resolve(reader, text).map(|key| (name.clone(), key))),
                    Value::Null => {}
                    other => reader.error(
                        FIELD,
                        "invalid_type",
                        format!("gateway key `{}` must be a string, found {}", truncate(name), kind(other)),
                        format!("quote the key named `{}`", truncate(name)),
                    ),
                }
            }
        }
        Some(other) => reader.error(
            FIELD,
            "invalid_type",
            format!("`{FIELD}` must be a list of keys or a mapping of name to key, found {}", kind(other)),
            format!("write `{FIELD}: [\"key\"]` or `{FIELD}: {{alice: \"key\"}}`"),
        ),
    }
    keys
}

/// A gateway key's name appears in audit logs and grant records: a short safe word, not `master`.
fn is_valid_key_name(name: &str) -> bool {
    name != MASTER_KEY_NAME
        && !name.is_empty()
        && name.len() <= 64
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
}

/// Sealing keys (`MCP_OAUTH_SEALING_KEYS` wins over `sealing_keys`), the store and the grant
/// lifetime. A durable or shared store without keys is an error: values sealed under a key drawn
/// at start-up would not open after a restart or on another replica.
fn grant_settings(
    reader: &mut FieldReader<'_>,
    env: EnvLookup<'_>,
    warnings: &mut Vec<Diagnostic>,
) -> GrantSettings {
    let defaults = GrantSettings::default();
    let key_error = |error: &KeyError, section, field: &str| {
        Diagnostic::new(
            Severity::Error,
            error.reason(),
            section,
            None,
            Some(field),
            error.to_string(),
            error.fix(),
        )
    };
    let sealing_keys = match env(SEALING_KEYS_ENV).filter(|value| !value.trim().is_empty()) {
        Some(value) => {
            if reader.object.get("sealing_keys").is_some_and(|value| !value.is_null()) {
                warnings.push(Diagnostic::new(
                    Severity::Warning,
                    "sealing_keys_overridden",
                    "general_settings",
                    None,
                    Some("sealing_keys"),
                    format!("`sealing_keys` is ignored because {SEALING_KEYS_ENV} is set"),
                    format!("remove one of the two; {SEALING_KEYS_ENV} wins"),
                ));
            }
            SealingKeys::parse(&value)
                .map_err(|error| reader.diagnostics.push(key_error(&error, "environment", SEALING_KEYS_ENV)))
                .ok()
        }
        None => sealing_keys_setting(reader).and_then(|parsed| {
            parsed
                .map_err(|error| {
                    reader.diagnostics.push(key_error(&error, "general_settings", "sealing_keys"))
                })
                .ok()
        }),
    };
    let store = match reader.string("mcp_oauth_store") {
        None => StoreSetting::Memory,
        Some(text) => StoreSetting::parse(&text).unwrap_or_else(|error| {
            reader.error(
                "mcp_oauth_store",
                "invalid_store",
                error.to_string(),
                "write `memory`, `sqlite:///var/lib/mcp-oauth/grants.db` or `redis://redis.internal:6379/0`",
            );
            StoreSetting::Memory
        }),
    };
    let key_errors = reader
        .diagnostics
        .iter()
        .any(|d| d.field.as_deref().is_some_and(|f| f == "sealing_keys" || f == SEALING_KEYS_ENV));
    if store.is_durable() && sealing_keys.is_none() && !key_errors {
        reader.error(
            "mcp_oauth_store",
            "store_without_sealing_keys",
            "a durable or shared grant store needs sealing keys: a key drawn at start-up would not open what another process or a restart sealed".into(),
            format!("set {SEALING_KEYS_ENV} (or general_settings.sealing_keys) to base64url 32-byte keys, the same on every replica"),
        );
    }
    let max_days = MAX_GRANT_LIFETIME.as_secs() / 86_400;
    let max_lifetime = match reader.whole_number("grant_max_lifetime_days", "days") {
        None => defaults.max_lifetime,
        Some(days) if (1..=max_days).contains(&days) => std::time::Duration::from_secs(days * 86_400),
        Some(_) => {
            reader.error(
                "grant_max_lifetime_days",
                "invalid_value",
                format!("`grant_max_lifetime_days` must be between 1 and {max_days}"),
                format!("remove it for the default ({max_days}), or set 1 to {max_days}"),
            );
            defaults.max_lifetime
        }
    };
    GrantSettings { sealing_keys, store, max_lifetime }
}

/// `general_settings.sealing_keys`: a comma-separated string (or `os.environ/` reference to one),
/// or a list of keys (each may be an `os.environ/` reference). `None` when absent or blank.
fn sealing_keys_setting(reader: &mut FieldReader<'_>) -> Option<Result<SealingKeys, KeyError>> {
    const FIELD: &str = "sealing_keys";
    match reader.object.get(FIELD)? {
        Value::Array(items) => {
            let mut texts = Vec::with_capacity(items.len());
            for item in items {
                let Value::String(text) = item else {
                    reader.error(
                        FIELD,
                        "invalid_type",
                        format!("`{FIELD}` must be a list of strings, found an item that is {}", kind(item)),
                        format!("quote every item of `{FIELD}`"),
                    );
                    return None;
                };
                texts.push(if text.trim().is_empty() {
                    String::new()
                } else {
                    reader.resolve_env(FIELD, text.trim())?
                });
            }
            (!texts.iter().all(|text| text.trim().is_empty()))
                .then(|| SealingKeys::parse_list(texts.iter().map(String::as_str)))
        }
        _ => reader.string(FIELD).map(|text| SealingKeys::parse(&text)),
    }
}

/// Reads [`ConnectionLimits`]; zero is refused (it would close every connection at once).
fn connection_limits(reader: &mut FieldReader<'_>) -> ConnectionLimits {
    let defaults = ConnectionLimits::default();
    let mut positive = |field: &str| match reader.unsigned(field) {
        Some(0) => {
            reader.error(
                field,
                "invalid_value",
                format!("`{field}` must be at least 1"),
                format!("remove `{field}` for the default, or set a positive number"),
            );
            None
        }
        other => other,
    };
    let seconds = |value: Option<u64>, default| value.map_or(default, std::time::Duration::from_secs);
    let idle = positive("mcp_idle_timeout_seconds");
    let oauth_body = positive("mcp_oauth_body_timeout_seconds");
    let mcp_body = positive("mcp_body_timeout_seconds");
    let connections = positive("mcp_max_connections");
    ConnectionLimits {
        idle_timeout: seconds(idle, defaults.idle_timeout),
        oauth_body_timeout: seconds(oauth_body, defaults.oauth_body_timeout),
        mcp_body_timeout: seconds(mcp_body, defaults.mcp_body_timeout),
        max_connections: connections
            .map_or(defaults.max_connections, |count| usize::try_from(count).unwrap_or(usize::MAX)),
    }
}

/// The largest configuration file accepted, in bytes.
pub const MAX_CONFIG_BYTES: usize = 16 * 1024 * 1024;

/// Parses LiteLLM-style YAML with node, depth and alias budgets (a hostile file cannot exhaust
/// memory), loads it with [`load`], and attaches a line and column to every diagnostic it can place.
pub fn load_yaml(text: &str, env: EnvLookup<'_>) -> Result<Loaded, ConfigErrors> {
    let document =
        parse_yaml(text).map_err(|error| ConfigErrors { errors: vec![*error], warnings: Vec::new() })?;
    // The spans are a second parse; it runs only when a diagnostic needs a place.
    let places = std::cell::OnceCell::new();
    let place = |mut diagnostic: Diagnostic| {
        diagnostic.location = places.get_or_init(|| yaml_places(text)).find(&diagnostic);
        diagnostic
    };
    match load(&document, env) {
        Ok(loaded) => {
            Ok(Loaded { config: loaded.config, warnings: loaded.warnings.into_iter().map(place).collect() })
        }
        Err(errors) => Err(ConfigErrors {
            errors: errors.errors.into_iter().map(place).collect(),
            warnings: errors.warnings.into_iter().map(place).collect(),
        }),
    }
}

fn yaml_options() -> serde_saphyr::Options {
    serde_saphyr::options! {
        budget: serde_saphyr::budget! {
            max_depth: 32,
            max_nodes: 400_000,
            max_events: 1_600_000,
            max_aliases: 256,
            max_anchors: 256,
            max_documents: 1,
            max_total_scalar_bytes: MAX_CONFIG_BYTES,
        },
    }
}

/// Parses YAML text into JSON values, refusing oversized or budget-breaking input.
pub fn parse_yaml(text: &str) -> Result<Value, Box<Diagnostic>> {
    let invalid = |message: String, location: Option<Location>| {
        Box::new(Diagnostic {
            severity: Severity::Error,
            code: "invalid_yaml",
            section: "config",
            server: None,
            field: None,
            message,
            fix: Some("fix the YAML syntax at the place shown".to_owned()),
            location,
        })
    };
    if text.len() > MAX_CONFIG_BYTES {
        return Err(invalid(format!("the file is larger than {MAX_CONFIG_BYTES} bytes"), None));
    }
    if text.trim().is_empty() {
        return Ok(Value::Object(Map::new()));
    }
    serde_saphyr::from_str_with_options::<Value>(text, yaml_options()).map_err(|error| {
        let location = error.location().map(|at| Location { line: at.line(), column: at.column() });
        let message = error.to_string();
        let first = message.lines().next().unwrap_or("invalid YAML").to_owned();
        let mut diagnostic = invalid(first, location);
        if message.contains("budget") || message.contains("limit") || message.contains("exceed") {
            diagnostic.fix = Some(
                "the file breaks a size limit (depth 32, 400,000 nodes, 256 aliases): split it or remove deep nesting and alias chains"
                    .to_owned(),
            );
        }
        diagnostic
    })
}

/// A server (or setting) key's place and the places of its fields.
type ServerPlaces = (String, Location, Vec<(String, Location)>);

/// Where the keys of `mcp_servers` and `general_settings` sit in the file.
#[derive(Default)]
struct Places {
    sections: Vec<(String, Location, Vec<ServerPlaces>)>,
}

impl Places {
    fn find(&self, diagnostic: &Diagnostic) -> Option<Location> {
        let (_, section_at, children) =
            self.sections.iter().find(|(name, _, _)| name == diagnostic.section)?;
        let key = match diagnostic.section {
            "general_settings" => diagnostic.field.as_deref(),
            _ => diagnostic.server.as_deref(),
        };
        let Some(key) = key else { return Some(*section_at) };
        let Some((_, key_at, fields)) = children.iter().find(|(name, _, _)| name == key) else {
            return Some(*section_at);
        };
        if diagnostic.section == "general_settings" {
            return Some(*key_at);
        }
        let field = diagnostic.field.as_deref().map(|field| {
            if field == "authentication_token" && !fields.iter().any(|(n, _)| n == field) {
                "auth_value"
            } else {
                field
            }
        });
        Some(
            field
                .and_then(|field| fields.iter().find(|(name, _)| name == field).map(|(_, at)| *at))
                .unwrap_or(*key_at),
        )
    }
}

/// A YAML node shape that remembers where each mapping key was written.
enum Node {
    Mapping(Vec<(serde_saphyr::Spanned<String>, Node)>),
    Other,
}

impl<'de> serde::Deserialize<'de> for Node {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(NodeVisitor)
    }
}

struct NodeVisitor;

impl<'de> serde::de::Visitor<'de> for NodeVisitor {
    type Value = Node;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any YAML node")
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Node, A::Error> {
        let mut entries = Vec::new();
        while let Some(key) = map.next_key::<serde_saphyr::Spanned<String>>()? {
            entries.push((key, map.next_value::<Node>()?));
        }
        Ok(Node::Mapping(entries))
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Node, A::Error> {
        while seq.next_element::<serde::de::IgnoredAny>()?.is_some() {}
        Ok(Node::Other)
    }

    fn visit_bool<E>(self, _: bool) -> Result<Node, E> {
        Ok(Node::Other)
    }

    fn visit_i64<E>(self, _: i64) -> Result<Node, E> {
        Ok(Node::Other)
    }

    fn visit_u64<E>(self, _: u64) -> Result<Node, E> {
        Ok(Node::Other)
    }

    fn visit_f64<E>(self, _: f64) -> Result<Node, E> {
        Ok(Node::Other)
    }

    fn visit_str<E>(self, _: &str) -> Result<Node, E> {
        Ok(Node::Other)
    }

    fn visit_unit<E>(self) -> Result<Node, E> {
        Ok(Node::Other)
    }

    fn visit_none<E>(self) -> Result<Node, E> {
        Ok(Node::Other)
    }

    fn visit_some<D: serde::Deserializer<'de>>(self, deserializer: D) -> Result<Node, D::Error> {
        serde::Deserialize::deserialize(deserializer)
    }
}

fn to_location(spanned: &serde_saphyr::Spanned<String>) -> Location {
    Location { line: spanned.referenced.line(), column: spanned.referenced.column() }
}

fn yaml_places(text: &str) -> Places {
    let Ok(Node::Mapping(root)) = serde_saphyr::from_str_with_options::<Node>(text, yaml_options()) else {
        return Places::default();
    };
    let sections = root
        .iter()
        .filter(|(key, _)| key.value == "mcp_servers" || key.value == "general_settings")
        .map(|(key, node)| {
            let children = match node {
                Node::Mapping(children) => children
                    .iter()
                    .map(|(child, node)| {
                        let fields = match node {
                            Node::Mapping(fields) => fields
                                .iter()
                                .map(|(field, _)| (field.value.clone(), to_location(field)))
                                .collect(),
                            Node::Other => Vec::new(),
                        };
                        (child.value.clone(), to_location(child), fields)
                    })
                    .collect(),
                Node::Other => Vec::new(),
            };
            (key.value.clone(), to_location(key), children)
        })
        .collect();
    Places { sections }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        match name {
            "GH_SECRET" => Some("gh-secret-value-123456".into()),
            "PROXY_BASE_URL" => Some("https://llm.example.com/".into()),
            _ => None,
        }
    }

    const GOOD: &str = "\
general_settings:
  master_key: sk-master-0001
  use_x_forwarded_for: true
  mcp_trusted_proxy_ranges: [10.0.0.0/8]
mcp_servers:
  github:
    url: https://api.githubcopilot.com/mcp
    auth_type: oauth2
    client_id: abc
    client_secret: os.environ/GH_SECRET
    authorization_url: https://github.com/login/oauth/authorize
    delegate_auth_to_upstream: true
    available_on_public_internet: false
  m2m:
    url: https://m2m.example.com/mcp
    auth_type: oauth2
    token_url: https://auth.example.com/token
    client_id: id
    client_secret: secret-0001
  local:
    transport: stdio
    command: npx
";

    #[test]
    fn names_the_gateway_routes_use_are_refused() {
        for name in RESERVED_SERVER_NAMES {
            assert!(!is_valid_server_name(name), "{name}");
            let yaml = format!("mcp_servers:\n  {name}:\n    url: https://x.example/mcp\n");
            let errors = load_yaml(&yaml, &|_| None).unwrap_err();
            assert_eq!(errors.errors[0].code, "invalid_server_name", "{name}");
        }
        assert!(is_valid_server_name("mcp2"));
        assert!(is_valid_server_name("callbacks"));
    }

    #[test]
    fn an_entra_m2m_server_is_told_its_token_names_no_resource() {
        let yaml = |extra: &str| {
            format!(
                "mcp_servers:\n  e:\n    url: https://e.example/mcp\n    auth_type: oauth2\n    oauth2_flow: client_credentials\n    client_id: i\n    client_secret: s\n    token_url: https://login.microsoftonline.com/t/oauth2/v2.0/token\n{extra}"
            )
        };
        let codes = |extra: &str| {
            let loaded = load_yaml(&yaml(extra), &|_| None).unwrap();
            loaded.warnings.iter().map(|warning| warning.code).collect::<Vec<_>>()
        };
        assert!(codes("").contains(&"resource_omitted"));
        assert!(!codes("    resource: api://e\n").contains(&"resource_omitted"));
        assert!(!codes("    resource: null\n").contains(&"resource_omitted"));
        let loaded = load_yaml(&yaml("    resource: null\n"), &|_| None).unwrap();
        assert_eq!(loaded.config.servers["e"].entry.resource, ResourceSetting::Omit);
        assert!(load_yaml(&yaml("    resource: [1]\n"), &|_| None).is_err());
    }

    #[test]
    fn loads_a_litellm_config_with_warnings_as_values() {
        let loaded = load_yaml(GOOD, &env).unwrap();
        let config = &loaded.config;
        assert_eq!(config.servers.keys().collect::<Vec<_>>(), ["github", "m2m"]);
        let github = &config.servers["github"];
        assert_eq!(github.entry.client_secret.as_ref().map(Secret::expose), Some("gh-secret-value-123456"));
        assert_eq!(github.policy.flow, Flow::AuthorizationCode);
        assert!(github.policy.delegate_auth_to_upstream);
        assert_eq!(config.servers["m2m"].policy.flow, Flow::ClientCredentials);
        assert_eq!(
            config.settings.origin.proxy_base_url.as_ref().map(ToString::to_string).as_deref(),
            Some("https://llm.example.com")
        );
        assert!(config.settings.origin.trusted_proxies.contains("10.9.9.9".parse().unwrap()));
        assert!(config.settings.gateway_keys[0].constant_time_eq("sk-master-0001"));

        let codes: Vec<_> = loaded.warnings.iter().map(|w| (w.code, w.server.as_deref())).collect();
        assert!(codes.contains(&("client_credentials_inferred", Some("m2m"))), "{codes:?}");
        assert!(codes.contains(&("delegation_on_internal_server", Some("github"))), "{codes:?}");
        assert!(codes.contains(&("stdio_not_served", Some("local"))), "{codes:?}");
        let inferred = loaded.warnings.iter().find(|w| w.code == "client_credentials_inferred").unwrap();
        assert!(inferred.fix.as_deref().unwrap().contains("set `oauth2_flow` explicitly"));
        assert_eq!(inferred.location, Some(Location { line: 14, column: 3 }));
    }

    #[test]
    fn no_public_origin_is_a_warning() {
        let loaded =
            load_yaml(GOOD, &|name| if name == "PROXY_BASE_URL" { None } else { env(name) }).unwrap();
        assert!(loaded.warnings.iter().any(|w| w.code == "no_public_origin"));
    }

    #[test]
    fn every_error_is_reported_with_server_field_fix_and_place() {
        let text = "\
mcp_servers:
  a:
    url: not a url
    auth_type: oauth2
    oauth2_flow: client_credentials
  b:
    url: https://b.example.com/mcp
    auth_type: magic
    token_storage_ttl_seconds: -5
";
        let errors = load_yaml(text, &env).unwrap_err();
        let found: Vec<_> = errors
            .errors
            .iter()
            .map(|e| (e.server.as_deref(), e.field.as_deref(), e.code, e.location.map(|l| l.line)))
            .collect();
        assert!(
            found.contains(&(
                Some("a"),
                Some("oauth2_flow"),
                "client_credentials_without_credentials",
                Some(5)
            )),
            "{found:?}"
        );
        assert!(found.contains(&(Some("b"), Some("auth_type"), "unknown_value", Some(8))), "{found:?}");
        assert!(
            found.contains(&(Some("b"), Some("token_storage_ttl_seconds"), "invalid_type", Some(9))),
            "{found:?}"
        );
        assert!(errors.errors.iter().all(|e| e.fix.is_some()));
    }

    #[test]
    fn environment_settings_fail_closed() {
        let bad_base = |name: &str| match name {
            "PROXY_BASE_URL" => Some("https://llm.example.com/api".into()),
            _ => None,
        };
        let errors = load_yaml("mcp_servers: {}", &bad_base).unwrap_err();
        assert_eq!(errors.errors[0].code, "invalid_proxy_base_url");
        let bad_origins = |name: &str| {
            (name == "MCP_TRUSTED_REDIRECT_ORIGINS").then(|| "https://app.example.com".to_owned())
        };
        let errors = load_yaml("mcp_servers: {}", &bad_origins).unwrap_err();
        assert_eq!(errors.errors[0].code, "invalid_trusted_redirect_origin");
        let errors = load_yaml("general_settings:\n  mcp_trusted_proxy_ranges: [10.0.0.1/8]\n", &|_| None)
            .unwrap_err();
        assert_eq!(errors.errors[0].code, "invalid_proxy_range");
        assert_eq!(errors.errors[0].location, Some(Location { line: 2, column: 3 }));
    }

    const KEY_A: &str = "AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE";
    const KEY_B: &str = "AgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgI=";
    const INTERACTIVE: &str = "mcp_servers:\n  gh:\n    url: https://gh.example/mcp\n    auth_type: oauth2\n    oauth2_flow: authorization_code\n";

    fn settings(yaml: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<Loaded, ConfigErrors> {
        load_yaml(&format!("general_settings:\n{yaml}mcp_servers: {{}}\n"), env)
    }

    fn error_codes(result: Result<Loaded, ConfigErrors>) -> Vec<(&'static str, Option<String>)> {
        result.unwrap_err().errors.into_iter().map(|e| (e.code, e.field)).collect()
    }

    #[test]
    fn gateway_keys_are_named_by_map_key_position_or_master() {
        let env = |name: &str| (name == "K3").then(|| "key-three-0003".to_owned());
        let loaded =
            settings("  master_key: mk-0001\n  gateway_keys: [k-one-0001, \"  \", os.environ/K3]\n", &env)
                .unwrap();
        let named: Vec<(String, String)> = loaded
            .config
            .settings
            .named_gateway_keys()
            .map(|(name, key)| (name.into_owned(), key.expose().to_owned()))
            .collect();
        assert_eq!(
            named,
            [("master", "mk-0001"), ("key-1", "k-one-0001"), ("key-3", "key-three-0003")]
                .map(|(n, k)| (n.to_owned(), k.to_owned()))
        );
        assert_eq!(loaded.config.settings.gateway_keys.len(), 3, "every existing caller sees every key");
        let map = settings(
            "  gateway_keys:\n    alice: sk-alice-01\n    ci.bot: os.environ/K3\n    blank: ''\n",
            &env,
        )
        .unwrap();
        let settings_ = &map.config.settings;
        assert_eq!(settings_.gateway_key_names, ["alice", "ci.bot"]);
        assert_eq!(settings_.gateway_key_named("ci.bot").map(Secret::expose), Some("key-three-0003"));
        assert!(settings_.gateway_key_named("master").is_none());
        let bad = settings("  gateway_keys:\n    master: x\n    'a b': y\n    n: [1]\n", &env);
        let codes = error_codes(bad);
        assert_eq!(codes.iter().filter(|(code, _)| *code == "invalid_key_name").count(), 2, "{codes:?}");
        assert!(codes.contains(&("invalid_type", Some("gateway_keys".into()))), "{codes:?}");
        assert_eq!(error_codes(settings("  gateway_keys: 5\n", &env))[0].0, "invalid_type");
        // Hand-built settings without names still name every key.
        let hand = GatewaySettings { gateway_keys: vec![Secret::new("a")], ..GatewaySettings::default() };
        assert_eq!(hand.named_gateway_keys().next().map(|(name, _)| name.into_owned()), Some("key-1".into()));
    }

    #[test]
    fn sealing_keys_come_from_the_environment_first_then_the_setting() {
        let none = |_: &str| None;
        let loaded = settings(&format!("  sealing_keys: \"{KEY_A}, {KEY_B}\"\n"), &none).unwrap();
        let keys = loaded.config.settings.grants.sealing_keys.as_ref().unwrap();
        assert_eq!(keys.all().count(), 2);
        let list = settings(&format!("  sealing_keys: [{KEY_B}, os.environ/SK]\n"), &|n: &str| {
            (n == "SK").then(|| KEY_A.to_owned())
        })
        .unwrap();
        let list_keys = list.config.settings.grants.sealing_keys.unwrap();
        assert_eq!(list_keys.current().id(), SealingKeys::parse(KEY_B).unwrap().current().id());
        let from_env = |name: &str| (name == SEALING_KEYS_ENV).then(|| KEY_B.to_owned());
        let loaded = settings("  sealing_keys: not-a-key\n", &from_env).unwrap();
        let keys = loaded.config.settings.grants.sealing_keys.unwrap();
        assert_eq!(keys.all().count(), 1, "the variable wins and the setting is not read");
        assert!(loaded.warnings.iter().any(|w| w.code == "sealing_keys_overridden"));
        assert!(
            settings("  sealing_keys: ''\n", &none).unwrap().config.settings.grants.sealing_keys.is_none()
        );
        assert!(
            settings("  sealing_keys: []\n", &none).unwrap().config.settings.grants.sealing_keys.is_none()
        );

        let short = "c2hvcnQta2V5LW1hdGVyaWFs"; // 18 bytes
        let errors = settings(&format!("  sealing_keys: [{KEY_A}, {short}]\n"), &none).unwrap_err();
        assert_eq!(errors.errors[0].code, "sealing_key_wrong_length");
        assert_eq!(
            errors.errors[0].message,
            "sealing key 2 decodes to 18 bytes; each key must be exactly 32"
        );
        let bad_env = |name: &str| (name == SEALING_KEYS_ENV).then(|| format!("{KEY_A},{short}+/"));
        let errors = settings("", &bad_env).unwrap_err();
        assert_eq!(
            (errors.errors[0].code, errors.errors[0].section),
            ("sealing_key_not_base64url", "environment")
        );
        let rendered = format!("{errors:?} {}", errors.errors[0]);
        assert!(!rendered.contains(short) && !rendered.contains(KEY_A), "{rendered}");
        assert_eq!(error_codes(settings("  sealing_keys: [1]\n", &none))[0].0, "invalid_type");
    }

    #[test]
    fn the_grant_store_setting_is_typed_and_a_durable_store_needs_keys() {
        assert_eq!(StoreSetting::parse("memory"), Ok(StoreSetting::Memory));
        assert_eq!(
            StoreSetting::parse("sqlite:///var/lib/mcp/grants.db"),
            Ok(StoreSetting::Sqlite { path: "/var/lib/mcp/grants.db".into() })
        );
        assert_eq!(
            StoreSetting::parse("sqlite://data/g.db"),
            Ok(StoreSetting::Sqlite { path: "data/g.db".into() })
        );
        let redis = |text| match StoreSetting::parse(text) {
            Ok(StoreSetting::Redis(redis)) => redis,
            other => panic!("{text}: {other:?}"),
        };
        let plain = redis("redis://redis.internal:6380/2");
        assert_eq!((plain.host.as_str(), plain.port, plain.db), ("redis.internal", 6380, 2));
        let defaults = redis("redis://10.0.0.5");
        assert_eq!((defaults.port, defaults.db, defaults.password), (6379, 0, None));
        let auth = redis("redis://app:pa55word-0001@[::1]:6379/0");
        assert_eq!((auth.host.as_str(), auth.username.as_deref()), ("[::1]", Some("app")));
        assert_eq!(auth.password.as_ref().map(Secret::expose), Some("pa55word-0001"));
        assert!(!format!("{auth:?}").contains("pa55word"));
        let encoded = redis("redis://us%3Aer:p%40ss%2Fw0rd@h");
        assert_eq!(encoded.username.as_deref(), Some("us:er"), "userinfo is percent-decoded");
        assert_eq!(encoded.password.as_ref().map(Secret::expose), Some("p@ss/w0rd"));
        for bad in [
            "redis://:%FF@h",
            "",
            "Memory",
            "sqlite://",
            "redis://",
            "redis://h:99999",
            "redis://h/x",
            "redis://h/0?a=1",
            "rediss://h",
            "postgres://h",
        ] {
            assert!(StoreSetting::parse(bad).is_err(), "{bad}");
        }

        let none = |_: &str| None;
        let errors = settings("  mcp_oauth_store: redis://:pa55word-0001@h:1/x\n", &none).unwrap_err();
        assert_eq!(errors.errors[0].code, "invalid_store");
        assert!(!format!("{errors:?}").contains("pa55word"), "the URL is never echoed");
        let errors = settings("  mcp_oauth_store: sqlite:///tmp/g.db\n", &none).unwrap_err();
        assert_eq!(errors.errors[0].code, "store_without_sealing_keys");
        let with_keys =
            settings(&format!("  mcp_oauth_store: redis://h:6379\n  sealing_keys: {KEY_A}\n"), &none)
                .unwrap();
        assert!(with_keys.config.settings.grants.store.is_durable());
        // A bad key is reported once, not also as a missing one.
        let codes = error_codes(settings("  mcp_oauth_store: redis://h:6379\n  sealing_keys: nope\n", &none));
        assert_eq!(codes.iter().map(|(code, _)| *code).collect::<Vec<_>>(), ["sealing_key_wrong_length"]);
    }

    #[test]
    fn grant_lifetime_is_at_most_thirty_days() {
        let none = |_: &str| None;
        let lifetime = |yaml: &str| {
            settings(yaml, &none).map(|l| l.config.settings.grants.max_lifetime.as_secs() / 86_400)
        };
        assert_eq!(lifetime("").unwrap(), 30);
        assert_eq!(lifetime("  grant_max_lifetime_days: 7\n").unwrap(), 7);
        for bad in ["0", "31", "-1"] {
            assert!(lifetime(&format!("  grant_max_lifetime_days: {bad}\n")).is_err(), "{bad}");
        }
        let errors = settings("  grant_max_lifetime_days: ten\n", &none).unwrap_err();
        assert!(errors.errors[0].message.contains("whole number of days"), "{}", errors.errors[0].message);
    }

    #[test]
    fn grant_store_warnings_are_values_for_authorization_servers_only() {
        let codes = |yaml: &str, env: &dyn Fn(&str) -> Option<String>| {
            load_yaml(yaml, env).unwrap().warnings.iter().map(|w| w.code).collect::<Vec<_>>()
        };
        let none = |_: &str| None;
        let keys = |name: &str| (name == SEALING_KEYS_ENV).then(|| KEY_A.to_owned());
        assert!(codes(INTERACTIVE, &none).contains(&"sealing_key_drawn"));
        assert!(!codes(INTERACTIVE, &none).contains(&"store_per_process"));
        assert!(codes(INTERACTIVE, &keys).contains(&"store_per_process"));
        let durable = format!("general_settings:\n  mcp_oauth_store: sqlite://g.db\n{INTERACTIVE}");
        let found = codes(&durable, &keys);
        assert!(!found.contains(&"store_per_process") && !found.contains(&"sealing_key_drawn"), "{found:?}");
        let delegating = format!("{INTERACTIVE}    delegate_auth_to_upstream: true\n");
        assert!(
            !codes(&delegating, &none).contains(&"sealing_key_drawn"),
            "a delegating server issues nothing"
        );
        assert!(!codes(GOOD, &env).contains(&"sealing_key_drawn"));
    }

    #[test]
    fn a_configuration_without_a_gateway_key_says_every_request_will_be_refused() {
        let codes = |yaml: &str| {
            load_yaml(yaml, &|_| None).unwrap().warnings.iter().map(|w| w.code).collect::<Vec<_>>()
        };
        let open = "mcp_servers:\n  a:\n    url: https://a.example/mcp\n";
        assert!(codes(open).contains(&"no_gateway_key"));
        assert!(
            !codes(&format!("general_settings:\n  master_key: sk-1\n{open}")).contains(&"no_gateway_key")
        );
        assert!(
            !codes(&format!("general_settings:\n  gateway_keys: [sk-1]\n{open}")).contains(&"no_gateway_key")
        );
        let delegating = format!("{INTERACTIVE}    delegate_auth_to_upstream: true\n");
        assert!(!codes(&delegating).contains(&"no_gateway_key"), "a delegating server needs no key");
        // The flag on a server that cannot delegate is ignored: that server still needs a key.
        let ignored =
            "mcp_servers:\n  a:\n    url: https://a.example/mcp\n    delegate_auth_to_upstream: true\n";
        assert!(codes(ignored).contains(&"no_gateway_key"), "{:?}", codes(ignored));
    }

    #[test]
    fn secrets_never_reach_diagnostics_or_debug_output() {
        let text = "mcp_servers:\n  a:\n    url: https://a.example.com/mcp\n    auth_type: oauth2\n    oauth2_flow: client_credentials\n    client_id: id\n    client_secret: super-secret-value-42\n    authentication_token: 12345\n";
        let errors = load_yaml(text, &|_| None).unwrap_err();
        let rendered =
            format!("{errors:?} {}", errors.errors.iter().map(ToString::to_string).collect::<String>());
        assert!(!rendered.contains("super-secret-value-42"));
        let loaded = load_yaml(&text.replace("    authentication_token: 12345\n", ""), &|_| None).unwrap();
        assert!(!format!("{loaded:?}").contains("super-secret-value-42"));
    }

    #[test]
    fn ten_thousand_servers_load_and_a_budget_breach_says_so() {
        let mut yaml = String::from("mcp_servers:\n");
        for index in 0..10_000 {
            yaml.push_str(&format!(
                "  s{index}:\n    url: https://s{index}.example.com/mcp\n    auth_type: bearer_token\n    authentication_token: t{index}\n"
            ));
        }
        assert!(yaml.len() > 1024 * 1024, "larger than the old 1 MiB cap");
        let loaded = load_yaml(&yaml, &|_| None).unwrap();
        assert_eq!(loaded.config.servers.len(), 10_000);
        let bomb = format!("a: [{}]\n", vec!["[1, 2]"; 200_000].join(", "));
        let refused = load_yaml(&bomb, &|_| None).unwrap_err();
        assert!(refused.errors[0].fix.as_deref().unwrap_or_default().contains("size limit"), "{refused:?}");
    }

    #[test]
    fn hostile_yaml_is_refused_by_budget_not_memory() {
        let mut bomb = String::from("a: &a [x, x, x, x, x, x, x, x, x, x]\n");
        for level in 0..12 {
            let previous = if level == 0 { "a".to_owned() } else { format!("l{}", level - 1) };
            bomb.push_str(&format!("l{level}: &l{level} [*{previous}, *{previous}, *{previous}, *{previous}, *{previous}, *{previous}, *{previous}, *{previous}, *{previous}, *{previous}]\n"));
        }
        assert!(load_yaml(&bomb, &|_| None).is_err());
        let deep = format!("{}1{}", "[".repeat(200), "]".repeat(200));
        assert!(load_yaml(&deep, &|_| None).is_err());
        assert!(load_yaml("- just\n- a list\n", &|_| None).is_err());
        assert!(load_yaml("mcp_servers:\n  a: 1\n", &|_| None).is_err());
        assert!(load_yaml("", &|_| None).is_ok());
    }

    #[test]
    fn authorization_server_identity_keeps_the_path() {
        assert_eq!(
            normalize_authorization_server("HTTPS://Auth.Example.com:443/t1/").as_deref(),
            Some("https://auth.example.com/t1")
        );
        assert_ne!(
            normalize_authorization_server("https://a.example.com/t1"),
            normalize_authorization_server("https://a.example.com/t2")
        );
        assert_eq!(normalize_authorization_server("not a url"), None);
    }
}
