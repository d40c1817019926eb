//! The policy as JSON: one object in, one object out (design §5).
//!
//! `mcp-oauth eval` is a thin loop around [`evaluate_line`], so conformance vectors, other
//! languages' test suites and fuzzers can drive every decision without linking Rust. Each input has
//! a `"check"` and its fields; optional fields may be absent or `null`. Every output field the
//! contract lists is present (`null` when it has no value); an input refused as invalid is answered
//! with `{"error": "..."}` and never stops the stream.

use std::net::IpAddr;

use http::{HeaderMap, HeaderName, HeaderValue};
use serde_json::{Map, Value, json};
use url::Url;

use crate::Reason;
use crate::config::{EnvLookup, ServerEntry, ServerPolicy};
use crate::delegate::{Target, decide_delegation};
use crate::discovery::{authorization_server_candidates, entra_fallback, protected_resource_candidates};
use crate::mask::mask;
use crate::origin::{Origin, OriginSettings, RequestOrigin, Scheme, TrustedProxies, resolve_public_origin};
use crate::outbound::resolve_outbound_auth;
use crate::redirect::{TrustedRedirectOrigins, validate_redirect_uri};
use crate::secret::Secret;
use crate::token::{m2m_cache_ttl, user_token_ttl, validate_token_response};
use crate::www_authenticate::parse_bearer;

/// The names of every check `eval` answers.
pub const CHECKS: [&str; 14] = [
    "redirect_uri",
    "public_origin",
    "flow",
    "delegate",
    "protected_resource_candidates",
    "authorization_server_candidates",
    "entra_fallback",
    "www_authenticate",
    "mask",
    "token_validation",
    "token_ttl",
    "outbound_auth",
    "fetch_target",
    "registration",
];

/// The longest input line `eval` reads, in bytes; longer lines are answered with an error.
pub const MAX_LINE_BYTES: usize = 1024 * 1024;

type Answer = Result<Value, String>;

/// Answers one input line with one output line (no trailing newline).
pub fn evaluate_line(line: &str, env: EnvLookup<'_>) -> String {
    let answer = if line.len() > MAX_LINE_BYTES {
        error(format!("line is longer than {MAX_LINE_BYTES} bytes"))
    } else if line.trim().is_empty() {
        error("empty line: expected one JSON object".to_owned())
    } else {
        match serde_json::from_str::<Value>(line) {
            Ok(input) => evaluate(&input, env),
            Err(parse) => error(format!("invalid JSON: {parse}")),
        }
    };
    answer.to_string()
}

fn error(message: String) -> Value {
    json!({ "error": message })
}

/// Answers one parsed input; `env` resolves `os.environ/NAME` references in server entries.
pub fn evaluate(input: &Value, env: EnvLookup<'_>) -> Value {
    let Some(input) = input.as_object() else {
        return error("input must be a JSON object".to_owned());
    };
    let answer = match input.get("check") {
        Some(Value::String(check)) => match check.as_str() {
            "redirect_uri" => redirect_uri(input),
            "public_origin" => public_origin(input),
            "flow" => flow(input, env),
            "delegate" => delegate(input, env),
            "protected_resource_candidates" => protected_resource(input),
            "authorization_server_candidates" => authorization_servers(input),
            "entra_fallback" => entra(input),
            "www_authenticate" => www_authenticate(input),
            "mask" => required_str(input, "value").map(|value| json!({ "masked": mask(value) })),
            "token_validation" => token_validation(input),
            "token_ttl" => token_ttl(input),
            "outbound_auth" => outbound_auth(input, env),
            "fetch_target" => fetch_target(input),
            "registration" => registration(input),
            other => Err(format!(
                "unknown check `{}`; known checks: {}",
                other.chars().take(64).collect::<String>(),
                CHECKS.join(", ")
            )),
        },
        Some(_) => Err("`check` must be a string".to_owned()),
        None => Err("missing `check`".to_owned()),
    };
    answer.unwrap_or_else(error)
}

fn optional<'v>(input: &'v Map<String, Value>, field: &str) -> Option<&'v Value> {
    input.get(field).filter(|value| !value.is_null())
}

fn optional_str<'v>(input: &'v Map<String, Value>, field: &str) -> Result<Option<&'v str>, String> {
    match optional(input, field) {
        None => Ok(None),
        Some(Value::String(text)) => Ok(Some(text)),
        Some(_) => Err(format!("`{field}` must be a string or null")),
    }
}

fn required_str<'v>(input: &'v Map<String, Value>, field: &str) -> Result<&'v str, String> {
    optional_str(input, field)?.ok_or_else(|| format!("missing `{field}`"))
}

fn optional_bool(input: &Map<String, Value>, field: &str) -> Result<Option<bool>, String> {
    match optional(input, field) {
        None => Ok(None),
        Some(Value::Bool(flag)) => Ok(Some(*flag)),
        Some(_) => Err(format!("`{field}` must be a boolean or null")),
    }
}

fn optional_int(input: &Map<String, Value>, field: &str) -> Result<Option<i64>, String> {
    match optional(input, field) {
        None => Ok(None),
        Some(Value::Number(number)) => number
            .as_i64()
            .or_else(|| {
                number
                    .as_f64()
                    .filter(|value| value.is_finite())
                    .map(|value| value.floor().clamp(-1e15, 1e15) as i64)
            })
            .map(Some)
            .ok_or_else(|| format!("`{field}` is out of range")),
        Some(_) => Err(format!("`{field}` must be a number or null")),
    }
}

/// Reads `headers` as `[[name, value], ...]` into a header map, preserving repeats.
fn headers(input: &Map<String, Value>) -> Result<HeaderMap, String> {
    let mut map = HeaderMap::new();
    let Some(list) = optional(input, "headers") else {
        return Ok(map);
    };
    let list = list.as_array().ok_or("`headers` must be a list of [name, value] pairs")?;
    for pair in list {
        let (Some(Value::String(name)), Some(Value::String(value)), 2) =
            (pair.get(0), pair.get(1), pair.as_array().map_or(0, Vec::len))
        else {
            return Err("each header must be a [name, value] pair of strings".to_owned());
        };
        let name = HeaderName::from_bytes(name.as_bytes())
            .map_err(|_| format!("invalid header name `{}`", name.chars().take(64).collect::<String>()))?;
        let value = HeaderValue::from_str(value).map_err(|_| format!("invalid value for header `{name}`"))?;
        map.append(name, value);
    }
    Ok(map)
}

fn trusted_origins(input: &Map<String, Value>) -> Result<TrustedRedirectOrigins, String> {
    TrustedRedirectOrigins::parse(optional_str(input, "trusted_redirect_origins")?.unwrap_or_default())
        .map_err(|e| e.to_string())
}

fn redirect_uri(input: &Map<String, Value>) -> Answer {
    let uri = required_str(input, "redirect_uri")?;
    let origin =
        optional_str(input, "public_origin")?.map(Origin::parse).transpose().map_err(|e| e.to_string())?;
    let trusted = trusted_origins(input)?;
    let decision = validate_redirect_uri(uri, origin.as_ref(), &trusted);
    Ok(json!({ "allowed": decision.is_allowed(), "reason": decision.reason() }))
}

/// Design §4.8's rules for `POST /{s}/register`: `{"allowed": bool, "reason": code,
/// "redirect_uris": [..] | null}` (the URIs as the gateway would seal them).
fn registration(input: &Map<String, Value>) -> Answer {
    let document =
        optional(input, "registration").ok_or("missing `registration` (the registration JSON object)")?;
    let origin = Origin::parse(required_str(input, "public_origin")?).map_err(|e| e.to_string())?;
    let trusted = trusted_origins(input)?;
    Ok(match crate::gateway::validate_registration(document, &origin, &trusted) {
        Ok((uris, _)) => json!({ "allowed": true, "reason": "allowed", "redirect_uris": uris }),
        Err(refused) => json!({ "allowed": false, "reason": refused.error, "redirect_uris": null }),
    })
}

fn public_origin(input: &Map<String, Value>) -> Answer {
    let proxy_base_url = optional_str(input, "proxy_base_url")?
        .filter(|value| !value.is_empty())
        .map(Origin::parse)
        .transpose()
        .map_err(|e| format!("PROXY_BASE_URL: {e}"))?;
    let ranges: Vec<&str> = match optional(input, "trusted_proxy_ranges") {
        None => Vec::new(),
        Some(Value::Array(items)) => items
            .iter()
            .map(|item| item.as_str().ok_or("`trusted_proxy_ranges` must hold strings"))
            .collect::<Result<_, _>>()?,
        Some(_) => return Err("`trusted_proxy_ranges` must be a list of CIDR strings".to_owned()),
    };
    let settings = OriginSettings {
        proxy_base_url,
        use_x_forwarded_for: optional_bool(input, "use_x_forwarded_for")?.unwrap_or(false),
        trusted_proxies: TrustedProxies::parse(&ranges).map_err(|e| e.to_string())?,
        allowed_hosts: Vec::new(),
        listen: None,
    };
    let peer = optional_str(input, "peer_ip")?
        .map(|ip| {
            ip.parse::<IpAddr>().map_err(|_| {
                format!("`peer_ip` `{}` is not an IP address", ip.chars().take(64).collect::<String>())
            })
        })
        .transpose()?;
    let scheme = match optional_str(input, "request_scheme")? {
        None => Scheme::Http,
        Some(scheme) => Scheme::parse(scheme).ok_or("`request_scheme` must be http or https")?,
    };
    let headers = headers(input)?;
    let request =
        RequestOrigin { scheme, host: optional_str(input, "request_host")?, peer, headers: &headers };
    let resolved = resolve_public_origin(&settings, &request).map_err(|e| e.to_string())?;
    Ok(json!({ "origin": resolved.origin.to_string(), "source": resolved.source.as_str() }))
}

fn policy(name: &str, entry: &Value, env: EnvLookup<'_>) -> Result<ServerPolicy, String> {
    let object = entry.as_object().ok_or_else(|| format!("server `{name}` must be an object"))?;
    let entry = ServerEntry::from_json(name, object, env)
        .map_err(|diagnostics| diagnostics.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))?;
    entry.policy().map_err(|e| e.to_string())
}

fn flow(input: &Map<String, Value>, env: EnvLookup<'_>) -> Answer {
    let server = input.get("server").filter(|value| !value.is_null()).ok_or("missing `server`")?;
    let policy = policy("server", server, env)?;
    Ok(json!({ "flow": policy.flow.as_str() }))
}

fn delegate(input: &Map<String, Value>, env: EnvLookup<'_>) -> Answer {
    let servers = match optional(input, "servers") {
        None => Map::new(),
        Some(Value::Object(servers)) => servers.clone(),
        Some(_) => return Err("`servers` must be an object of name to server entry".to_owned()),
    };
    let policies: Vec<(&String, Option<ServerPolicy>)> =
        servers.iter().map(|(name, entry)| (name, policy(name, entry, env).ok())).collect();
    let headers = headers(input)?;
    let path = optional_str(input, "path")?.unwrap_or_default();
    // The path goes through the gateway's own router, so `eval` and `serve` read it alike; a path
    // the router refuses (`//b/mcp`) is decided on no further.
    let routed = if path.is_empty() { Ok(None) } else { crate::route::mcp_path_target(path) };
    let Ok(routed) = routed else {
        let why = crate::delegate::NotDelegated::AmbiguousPath;
        return Ok(json!({ "delegate": false, "reason": why.reason() }));
    };
    let decision = decide_delegation(routed, &headers, |name| {
        match policies.iter().find(|(known, _)| known.as_str() == name) {
            None => Target::Unknown,
            Some((_, None)) => Target::Invalid,
            Some((_, Some(policy))) => Target::Known(policy),
        }
    });
    Ok(json!({ "delegate": decision.delegates(), "reason": decision.reason() }))
}

fn absolute_url(input: &Map<String, Value>, field: &str) -> Result<Url, String> {
    let value = required_str(input, field)?;
    Url::parse(value).map_err(|e| format!("`{field}` is not an absolute URL: {e}"))
}

fn candidates(urls: Vec<Url>) -> Value {
    json!({ "candidates": urls.iter().map(Url::as_str).collect::<Vec<_>>() })
}

fn protected_resource(input: &Map<String, Value>) -> Answer {
    let server_url = absolute_url(input, "server_url")?;
    // A malformed challenge does not stop discovery: it falls back to the well-known locations.
    let challenge =
        optional_str(input, "www_authenticate")?.and_then(|header| parse_bearer([header]).ok().flatten());
    Ok(candidates(protected_resource_candidates(&server_url, challenge.as_ref())))
}

fn authorization_servers(input: &Map<String, Value>) -> Answer {
    let issuer = absolute_url(input, "issuer")?;
    authorization_server_candidates(&issuer).map(candidates).map_err(|e| e.to_string())
}

fn entra(input: &Map<String, Value>) -> Answer {
    let issuer = required_str(input, "issuer")?;
    Ok(match entra_fallback(issuer) {
        Some(endpoints) => json!({
            "authorization_endpoint": endpoints.authorization_endpoint.as_str(),
            "token_endpoint": endpoints.token_endpoint.as_str(),
        }),
        None => json!({ "metadata": null }),
    })
}

fn www_authenticate(input: &Map<String, Value>) -> Answer {
    let header = required_str(input, "header")?;
    let challenge = parse_bearer([header]).map_err(|e| e.to_string())?;
    Ok(match challenge {
        Some(challenge) => json!({
            "resource_metadata": challenge.resource_metadata.as_ref().map(Url::as_str),
            "scope": challenge.scope,
            "challenge_error": challenge.error,
        }),
        None => json!({ "resource_metadata": null, "scope": null, "challenge_error": null }),
    })
}

fn token_validation(input: &Map<String, Value>) -> Answer {
    let rules = match optional(input, "rules") {
        None => Map::new(),
        Some(Value::Object(rules)) => rules.clone(),
        Some(_) => return Err("`rules` must be an object of path to value".to_owned()),
    };
    let response = input.get("token_response").ok_or("missing `token_response`")?;
    Ok(match validate_token_response(&rules, response) {
        Ok(()) => json!({ "valid": true }),
        Err(failure) => json!({ "valid": false, "field": failure.field() }),
    })
}

fn token_ttl(input: &Map<String, Value>) -> Answer {
    let expires_in = optional_int(input, "expires_in")?;
    let ttl = match required_str(input, "kind")? {
        "m2m" => m2m_cache_ttl(expires_in),
        "user" => {
            let storage = optional_int(input, "token_storage_ttl_seconds")?
                .map(|value| {
                    u64::try_from(value)
                        .map_err(|_| "`token_storage_ttl_seconds` must not be negative".to_owned())
                })
                .transpose()?;
            user_token_ttl(expires_in, storage)
        }
        _ => return Err("`kind` must be \"m2m\" or \"user\"".to_owned()),
    };
    Ok(json!({ "ttl_seconds": ttl }))
}

fn outbound_auth(input: &Map<String, Value>, env: EnvLookup<'_>) -> Answer {
    let name = required_str(input, "server_name")?;
    let server = input.get("server").filter(|value| !value.is_null()).ok_or("missing `server`")?;
    let policy = policy(name, server, env)?;
    let headers = headers(input)?;
    let keys: Vec<Secret> = optional_str(input, "gateway_key")?.map(Secret::new).into_iter().collect();
    let decision = resolve_outbound_auth(name, &policy, &headers, &keys);
    Ok(
        json!({ "resolution": decision.resolution.as_str(), "forwards_authorization": decision.forwards_authorization() }),
    )
}

/// `fetch_target`: may the client fetch `url` whose host resolved to `resolved` (design §4.9)?
/// An unparsable `url` is a refusal (`invalid_url`); a malformed address is an input error.
fn fetch_target(input: &Map<String, Value>) -> Answer {
    let allow_private = optional_bool(input, "allow_private_addresses")?.unwrap_or(false);
    let resolved = match optional(input, "resolved") {
        None => Vec::new(),
        Some(Value::Array(items)) => items
            .iter()
            .map(|item| {
                item.as_str()
                    .and_then(|text| text.parse::<IpAddr>().ok())
                    .ok_or_else(|| format!("`resolved` entry {item} is not an IP address"))
            })
            .collect::<Result<Vec<IpAddr>, String>>()?,
        Some(_) => return Err("`resolved` must be a list of IP address strings".to_owned()),
    };
    let verdict = match Url::parse(required_str(input, "url")?) {
        Ok(url) => crate::fetch_policy::check_fetch_target(&url, &resolved, allow_private),
        Err(error) => Err(crate::fetch_policy::FetchPolicyError::InvalidUrl { target: error.to_string() }),
    };
    Ok(match verdict {
        Ok(()) => json!({ "allowed": true, "reason": "allowed" }),
        Err(refusal) => json!({ "allowed": false, "reason": refusal.reason() }),
    })
}
