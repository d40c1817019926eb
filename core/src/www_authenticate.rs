//! `WWW-Authenticate` parsing (RFC 9110 §11.6.1) and the Bearer challenge an MCP server sends.
//!
//! A 401 or 403 from an MCP server tells the gateway where the protected-resource metadata lives
//! (`resource_metadata`, RFC 9728) and which scopes it wants (`scope`, RFC 6750). Those values sit in
//! quoted strings that may contain commas, escaped quotes and several challenges, so splitting on `,`
//! or `"` is wrong. This module implements the full grammar (auth-scheme, token68, auth-params,
//! quoted-pairs, empty list elements) and rejects anything ambiguous — a duplicate parameter, two
//! Bearer challenges — rather than guessing which value the server meant.

use std::fmt;

use url::Url;

/// The longest header value accepted, in bytes (several field lines count joined).
pub const MAX_HEADER_LEN: usize = 8192;

/// One challenge of a `WWW-Authenticate` header: a scheme plus either a token68 or auth-params.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Challenge {
    /// The auth-scheme as written (compare it case-insensitively, e.g. with [`Challenge::is_scheme`]).
    pub scheme: String,
    /// The token68 form of the credentials (`Negotiate abc==`), when the challenge used it.
    pub token68: Option<String>,
    /// The auth-params in order: names lower-cased, values unquoted and unescaped.
    pub params: Vec<(String, String)>,
}

impl Challenge {
    /// The value of the parameter `name` (compared case-insensitively), if present.
    pub fn param(&self, name: &str) -> Option<&str> {
        self.params.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    /// Whether this challenge's auth-scheme is `scheme` (case-insensitive).
    pub fn is_scheme(&self, scheme: &str) -> bool {
        self.scheme.eq_ignore_ascii_case(scheme)
    }
}

/// Writes the challenge back as header text, quoting every parameter value.
///
/// For a challenge produced by [`parse_challenges`] the output parses back to an equal challenge;
/// a hand-built challenge with a scheme or parameter name that is not a token gives unparsable text.
impl fmt::Display for Challenge {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.scheme)?;
        if let Some(token68) = &self.token68 {
            return write!(f, " {token68}");
        }
        for (i, (name, value)) in self.params.iter().enumerate() {
            f.write_str(if i == 0 { " " } else { ", " })?;
            write!(f, "{name}=\"")?;
            for c in value.chars() {
                if c == '"' || c == '\\' {
                    f.write_str("\\")?;
                }
                write!(f, "{c}")?;
            }
            f.write_str("\"")?;
        }
        Ok(())
    }
}

/// Joins challenges into one header value (`, ` separated), each written by its `Display`.
pub fn format_challenges(challenges: &[Challenge]) -> String {
    challenges.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ")
}

/// The Bearer challenge (RFC 6750, RFC 9728) with the fields the gateway acts on.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct BearerChallenge {
    /// Where the protected-resource metadata document lives (absolute http(s) URL).
    pub resource_metadata: Option<Url>,
    /// The scopes the server asks for; `None` when absent or empty.
    pub scope: Option<Vec<String>>,
    /// The RFC 6750 error code (`invalid_token`, `insufficient_scope`, ...).
    pub error: Option<String>,
    /// The human-readable error description the server sent.
    pub error_description: Option<String>,
    /// The protection realm the server named.
    pub realm: Option<String>,
}

/// Why a server's `WWW-Authenticate` header could not be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum WwwAuthenticateError {
    /// The header holds no challenge at all.
    #[error("the WWW-Authenticate header holds no challenge")]
    Empty,
    /// The header is longer than [`MAX_HEADER_LEN`] bytes.
    #[error("the WWW-Authenticate header is longer than {MAX_HEADER_LEN} bytes")]
    TooLong,
    /// A byte that is neither visible ASCII nor space nor tab.
    #[error("the WWW-Authenticate header has a non-visible or non-ASCII byte at offset {position}")]
    NonVisibleCharacter {
        /// Byte offset in the header value.
        position: usize,
    },
    /// A quoted string without its closing quote.
    #[error("the WWW-Authenticate header has a quoted string opened at offset {position} and never closed")]
    UnterminatedQuotedString {
        /// Byte offset of the opening quote.
        position: usize,
    },
    /// A character the grammar does not allow at this place.
    #[error("the WWW-Authenticate header has an unexpected {found:?} at offset {position}")]
    UnexpectedCharacter {
        /// Byte offset in the header value.
        position: usize,
        /// The character found.
        found: char,
    },
    /// The header ends where the grammar needs more.
    #[error("the WWW-Authenticate header ends in the middle of a challenge")]
    UnexpectedEnd,
    /// An auth-param without `=` or without a value.
    #[error("the WWW-Authenticate parameter {name:?} has no value")]
    MissingParameterValue {
        /// The parameter name (lower-cased).
        name: String,
    },
    /// The same parameter twice in one challenge: which value counts is ambiguous.
    #[error("the {scheme} challenge names the parameter {name:?} twice")]
    DuplicateParameter {
        /// The challenge's auth-scheme.
        scheme: String,
        /// The parameter name (lower-cased).
        name: String,
    },
    /// Two Bearer challenges: which one counts is ambiguous.
    #[error("the server sent more than one Bearer challenge")]
    DuplicateBearerChallenge,
    /// `resource_metadata` is not an absolute http(s) URL with a host and without a fragment.
    #[error("the Bearer challenge's resource_metadata is not usable: {why}")]
    InvalidResourceMetadata {
        /// What is wrong with it.
        why: &'static str,
    },
    /// A `scope` element with a character RFC 6749 §3.3 does not allow.
    #[error("the Bearer challenge's scope has an element with a character RFC 6749 does not allow")]
    InvalidScope,
}

impl crate::Reason for WwwAuthenticateError {
    fn reason(&self) -> &'static str {
        match self {
            Self::Empty => "empty",
            Self::TooLong => "header_too_long",
            Self::NonVisibleCharacter { .. } => "non_visible_character",
            Self::UnterminatedQuotedString { .. } => "unterminated_quoted_string",
            Self::UnexpectedCharacter { .. } => "unexpected_character",
            Self::UnexpectedEnd => "unexpected_end",
            Self::MissingParameterValue { .. } => "missing_parameter_value",
            Self::DuplicateParameter { .. } => "duplicate_parameter",
            Self::DuplicateBearerChallenge => "duplicate_bearer_challenge",
            Self::InvalidResourceMetadata { .. } => "invalid_resource_metadata",
            Self::InvalidScope => "invalid_scope",
        }
    }
}

/// `tchar` exactly as RFC 9110 §5.6.2 lists it.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric()
        || matches!(
            b,
            b'!' | b'#'
                | b'$'
                | b'%'
                | b'&'
                | b'\''
                | b'*'
                | b'+'
                | b'-'
                | b'.'
                | b'^'
                | b'_'
                | b'`'
                | b'|'
                | b'~'
        )
}

/// The characters of a token68 before its trailing `=` (RFC 9110 §11.2).
fn is_token68_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~' | b'+' | b'/')
}

/// Space or horizontal tab (OWS / BWS).
fn is_ows(b: u8) -> bool {
    b == b' ' || b == b'\t'
}

/// A recursive-descent parser over a header already checked to be visible ASCII, SP or HTAB.
struct Parser<'a> {
    text: &'a str,
    pos: usize,
}

impl<'a> Parser<'a> {
    fn peek_at(&self, pos: usize) -> Option<u8> {
        self.text.as_bytes().get(pos).copied()
    }

    fn peek(&self) -> Option<u8> {
        self.peek_at(self.pos)
    }

    /// Skips OWS and returns how many bytes it skipped.
    fn skip_ows(&mut self) -> usize {
        let start = self.pos;
        while self.peek().is_some_and(is_ows) {
            self.pos += 1;
        }
        self.pos - start
    }

    /// Skips OWS and commas: the empty list elements RFC 9110 §5.6.1 tells recipients to accept.
    fn skip_empty_elements(&mut self) {
        while self.peek().is_some_and(|b| is_ows(b) || b == b',') {
            self.pos += 1;
        }
    }

    /// The error for whatever stands at the current position.
    fn unexpected(&self) -> WwwAuthenticateError {
        match self.peek() {
            Some(b) => WwwAuthenticateError::UnexpectedCharacter { position: self.pos, found: char::from(b) },
            None => WwwAuthenticateError::UnexpectedEnd,
        }
    }

    /// Reads `1*tchar`, or nothing (and `None`) when no tchar stands here.
    fn token(&mut self) -> Option<&'a str> {
        let start = self.pos;
        while self.peek().is_some_and(is_tchar) {
            self.pos += 1;
        }
        // Only ASCII bytes were consumed, so both ends are char boundaries.
        (self.pos > start).then(|| self.text.get(start..self.pos)).flatten()
    }

    /// Reads a token68 when one stands here *and* it is the whole challenge (followed by OWS and
    /// then the end or a comma); otherwise leaves the position alone and returns `None`.
    fn token68(&mut self) -> Option<&'a str> {
        let start = self.pos;
        let mut end = start;
        while self.peek_at(end).is_some_and(is_token68_char) {
            end += 1;
        }
        if end == start {
            return None;
        }
        while self.peek_at(end) == Some(b'=') {
            end += 1;
        }
        let mut after = end;
        while self.peek_at(after).is_some_and(is_ows) {
            after += 1;
        }
        if matches!(self.peek_at(after), None | Some(b',')) {
            self.pos = end;
            self.text.get(start..end)
        } else {
            None
        }
    }

    /// Whether `token BWS "="` stands here: an auth-param rather than a new challenge (a new
    /// challenge's scheme is followed by the end, a comma, or spaces and a token68 or param name,
    /// never by `=`).
    fn param_ahead(&self) -> bool {
        let mut p = self.pos;
        while self.peek_at(p).is_some_and(is_tchar) {
            p += 1;
        }
        if p == self.pos {
            return false;
        }
        while self.peek_at(p).is_some_and(is_ows) {
            p += 1;
        }
        self.peek_at(p) == Some(b'=')
    }

    /// Reads a quoted-string starting at its opening quote, unescaping quoted-pairs.
    fn quoted_string(&mut self) -> Result<String, WwwAuthenticateError> {
        let open = self.pos;
        self.pos += 1;
        let mut value = String::new();
        loop {
            match self.peek() {
                None => {
                    return Err(WwwAuthenticateError::UnterminatedQuotedString { position: open });
                }
                Some(b'"') => {
                    self.pos += 1;
                    return Ok(value);
                }
                Some(b'\\') => {
                    self.pos += 1;
                    match self.peek() {
                        None => {
                            return Err(WwwAuthenticateError::UnterminatedQuotedString { position: open });
                        }
                        Some(b) => {
                            value.push(char::from(b));
                            self.pos += 1;
                        }
                    }
                }
                Some(b) => {
                    value.push(char::from(b));
                    self.pos += 1;
                }
            }
        }
    }

    /// Reads one `auth-param` into `challenge`.
    fn auth_param(&mut self, challenge: &mut Challenge) -> Result<(), WwwAuthenticateError> {
        let name = self.token().ok_or_else(|| self.unexpected())?.to_ascii_lowercase();
        self.skip_ows();
        match self.peek() {
            Some(b'=') => self.pos += 1,
            None | Some(b',') => return Err(WwwAuthenticateError::MissingParameterValue { name }),
            Some(_) => return Err(self.unexpected()),
        }
        self.skip_ows();
        let value = match self.peek() {
            Some(b'"') => self.quoted_string()?,
            None | Some(b',') => return Err(WwwAuthenticateError::MissingParameterValue { name }),
            Some(_) => self.token().ok_or_else(|| self.unexpected())?.to_owned(),
        };
        if challenge.params.iter().any(|(n, _)| *n == name) {
            return Err(WwwAuthenticateError::DuplicateParameter { scheme: challenge.scheme.clone(), name });
        }
        challenge.params.push((name, value));
        Ok(())
    }

    /// Reads one challenge; stops at the end or at the comma before the next challenge.
    fn challenge(&mut self) -> Result<Challenge, WwwAuthenticateError> {
        let scheme = self.token().ok_or_else(|| self.unexpected())?;
        let mut challenge = Challenge { scheme: scheme.to_owned(), token68: None, params: Vec::new() };
        let spaces = self.skip_ows();
        match self.peek() {
            None => return Ok(challenge),
            Some(b',') => {}
            Some(_) if spaces == 0 => return Err(self.unexpected()),
            Some(_) => {
                if let Some(token68) = self.token68() {
                    challenge.token68 = Some(token68.to_owned());
                    return Ok(challenge);
                }
                self.auth_param(&mut challenge)?;
            }
        }
        loop {
            self.skip_ows();
            match self.peek() {
                None => return Ok(challenge),
                Some(b',') => {}
                Some(_) => return Err(self.unexpected()),
            }
            self.skip_empty_elements();
            if !self.param_ahead() {
                return Ok(challenge);
            }
            self.auth_param(&mut challenge)?;
        }
    }
}

/// Parses a `WWW-Authenticate` field value into its challenges, in order.
///
/// After a comma, `token BWS "="` continues the current challenge's auth-params and anything else
/// starts a new challenge; a challenge given as a token68 takes no params.
pub fn parse_challenges(header: &str) -> Result<Vec<Challenge>, WwwAuthenticateError> {
    if header.len() > MAX_HEADER_LEN {
        return Err(WwwAuthenticateError::TooLong);
    }
    if let Some(position) = header.bytes().position(|b| !(is_ows(b) || b.is_ascii_graphic())) {
        return Err(WwwAuthenticateError::NonVisibleCharacter { position });
    }
    let mut parser = Parser { text: header, pos: 0 };
    let mut challenges = Vec::new();
    loop {
        parser.skip_empty_elements();
        if parser.peek().is_none() {
            break;
        }
        challenges.push(parser.challenge()?);
    }
    if challenges.is_empty() {
        return Err(WwwAuthenticateError::Empty);
    }
    Ok(challenges)
}

/// Finds the Bearer challenge among every `WWW-Authenticate` field line of one response.
///
/// The lines are one comma-joined list (RFC 9110 §5.3). No line at all, or no Bearer challenge,
/// gives `Ok(None)`; two Bearer challenges are an error.
pub fn parse_bearer<'a>(
    header_values: impl IntoIterator<Item = &'a str>,
) -> Result<Option<BearerChallenge>, WwwAuthenticateError> {
    let mut joined = String::new();
    let mut any = false;
    for value in header_values {
        if any {
            joined.push_str(", ");
        }
        joined.push_str(value);
        any = true;
        if joined.len() > MAX_HEADER_LEN {
            return Err(WwwAuthenticateError::TooLong);
        }
    }
    if !any {
        return Ok(None);
    }
    let challenges = parse_challenges(&joined)?;
    let mut bearers = challenges.iter().filter(|c| c.is_scheme("Bearer"));
    let Some(bearer) = bearers.next() else {
        return Ok(None);
    };
    if bearers.next().is_some() {
        return Err(WwwAuthenticateError::DuplicateBearerChallenge);
    }
    Ok(Some(BearerChallenge {
        resource_metadata: bearer.param("resource_metadata").map(parse_resource_metadata).transpose()?,
        scope: bearer.param("scope").map(parse_scope).transpose()?.flatten(),
        error: bearer.param("error").map(str::to_owned),
        error_description: bearer.param("error_description").map(str::to_owned),
        realm: bearer.param("realm").map(str::to_owned),
    }))
}

/// Checks `resource_metadata`: an absolute http(s) URL with a host, no userinfo, no fragment.
fn parse_resource_metadata(raw: &str) -> Result<Url, WwwAuthenticateError> {
    let invalid = |why| WwwAuthenticateError::InvalidResourceMetadata { why };
    // The URL parser silently strips surrounding and embedded whitespace; a URL has none.
    if raw.bytes().any(is_ows) {
        return Err(invalid("it contains whitespace"));
    }
    let url = Url::parse(raw).map_err(|_| invalid("it is not an absolute URL"))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(invalid("its scheme is not http or https"));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(invalid("it has no host"));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(invalid("it carries userinfo"));
    }
    if url.fragment().is_some() {
        return Err(invalid("it has a fragment"));
    }
    Ok(url)
}

/// Splits `scope` on spaces; no element at all means no scope.
fn parse_scope(raw: &str) -> Result<Option<Vec<String>>, WwwAuthenticateError> {
    let scopes: Vec<String> = raw.split(' ').filter(|s| !s.is_empty()).map(str::to_owned).collect();
    // scope-token = 1*( %x21 / %x23-5B / %x5D-7E ) (RFC 6749 §3.3).
    let scope_char = |b: u8| b == 0x21 || (0x23..=0x5B).contains(&b) || (0x5D..=0x7E).contains(&b);
    if scopes.iter().any(|s| !s.bytes().all(scope_char)) {
        return Err(WwwAuthenticateError::InvalidScope);
    }
    Ok((!scopes.is_empty()).then_some(scopes))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::Reason;

    fn one(header: &str) -> Challenge {
        let mut challenges = parse_challenges(header).unwrap();
        assert_eq!(challenges.len(), 1, "{challenges:?}");
        challenges.remove(0)
    }

    fn params(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(n, v)| ((*n).to_owned(), (*v).to_owned())).collect()
    }

    fn err(header: &str) -> &'static str {
        parse_challenges(header).unwrap_err().reason()
    }

    fn bearer(header: &str) -> BearerChallenge {
        parse_bearer([header]).unwrap().unwrap()
    }

    #[test]
    fn scheme_only() {
        let c = one("Bearer");
        assert_eq!(c.scheme, "Bearer");
        assert_eq!(c.token68, None);
        assert!(c.params.is_empty());
    }

    #[test]
    fn quoted_string_with_escapes_and_commas() {
        let c = one(r#"Bearer realm="a \"quoted\", comma\\slash", error="x""#);
        assert_eq!(c.params, params(&[("realm", r#"a "quoted", comma\slash"#), ("error", "x")]));
    }

    #[test]
    fn quoted_pair_of_ordinary_char_is_the_char() {
        assert_eq!(one(r#"Bearer realm="\a\ b""#).param("realm"), Some("a b"));
    }

    #[test]
    fn token_values_and_empty_quoted_value() {
        let c = one(r#"Bearer error=invalid_token, realm="""#);
        assert_eq!(c.params, params(&[("error", "invalid_token"), ("realm", "")]));
    }

    #[test]
    fn names_lowercased_and_lookup_case_insensitive() {
        let c = one(r#"bEaReR Realm="r", ERROR="e""#);
        assert!(c.is_scheme("Bearer"));
        assert_eq!(c.scheme, "bEaReR");
        assert_eq!(c.params, params(&[("realm", "r"), ("error", "e")]));
        assert_eq!(c.param("REALM"), Some("r"));
        assert_eq!(c.param("missing"), None);
    }

    #[test]
    fn bws_around_equals() {
        let c = one("Bearer realm = \"r\" ,error\t=\tx");
        assert_eq!(c.params, params(&[("realm", "r"), ("error", "x")]));
    }

    #[test]
    fn two_challenges_with_params() {
        let cs = parse_challenges(r#"Bearer realm="a", Basic realm="b""#).unwrap();
        assert_eq!(cs.len(), 2);
        assert_eq!(cs[0].scheme, "Bearer");
        assert_eq!(cs[0].params, params(&[("realm", "a")]));
        assert_eq!(cs[1].scheme, "Basic");
        assert_eq!(cs[1].params, params(&[("realm", "b")]));
    }

    #[test]
    fn param_after_comma_stays_in_challenge() {
        let c = one(r#"Bearer realm="a", error="x""#);
        assert_eq!(c.params, params(&[("realm", "a"), ("error", "x")]));
    }

    #[test]
    fn token68_then_challenge() {
        let cs = parse_challenges(r#"Negotiate abc==, Bearer x="y""#).unwrap();
        assert_eq!(cs.len(), 2);
        assert_eq!(cs[0].token68.as_deref(), Some("abc=="));
        assert!(cs[0].params.is_empty());
        assert_eq!(cs[1].params, params(&[("x", "y")]));
    }

    #[test]
    fn token68_shapes() {
        assert_eq!(one("Basic a/b+c~d.e_f-g").token68.as_deref(), Some("a/b+c~d.e_f-g"));
        // `name=` alone is a valid token68, not a param without a value.
        assert_eq!(one("Foo abc=").token68.as_deref(), Some("abc="));
        assert_eq!(one("Foo abc  ").token68.as_deref(), Some("abc"));
        // A token68 takes no params after it.
        assert_eq!(err(r#"Negotiate abc==, x="y""#), "unexpected_character");
    }

    #[test]
    fn challenges_in_every_order() {
        let parts = [
            r#"Bearer realm="a", scope="s t""#,
            "Negotiate abc==",
            "Basic",
            r#"Digest nonce="n,1", qop=auth"#,
        ];
        let orders = [[0, 1, 2, 3], [1, 0, 3, 2], [2, 3, 1, 0], [3, 2, 0, 1], [1, 2, 3, 0], [2, 0, 1, 3]];
        for order in orders {
            let header = order.map(|i| parts[i]).join(", ");
            let cs = parse_challenges(&header).unwrap();
            let schemes: Vec<&str> = cs.iter().map(|c| c.scheme.as_str()).collect();
            let expected: Vec<&str> =
                order.iter().map(|&i| ["Bearer", "Negotiate", "Basic", "Digest"][i]).collect();
            assert_eq!(schemes, expected, "{header}");
            let b = parse_bearer([header.as_str()]).unwrap().unwrap();
            assert_eq!(b.scope, Some(vec!["s".to_owned(), "t".to_owned()]));
            let digest = cs.iter().find(|c| c.is_scheme("digest")).unwrap();
            assert_eq!(digest.params, params(&[("nonce", "n,1"), ("qop", "auth")]));
        }
    }

    #[test]
    fn empty_list_elements_tolerated() {
        let cs = parse_challenges(r#" , ,Bearer realm="a" ,, , error="e",  ,Basic ,, "#).unwrap();
        assert_eq!(cs.len(), 2);
        assert_eq!(cs[0].params, params(&[("realm", "a"), ("error", "e")]));
        assert_eq!(cs[1].scheme, "Basic");
        // A comma straight after the scheme still lets params follow.
        assert_eq!(one(r#"Bearer, realm="a""#).params, params(&[("realm", "a")]));
    }

    #[test]
    fn error_cases() {
        assert_eq!(err(""), "empty");
        assert_eq!(err("  , ,\t"), "empty");
        assert_eq!(err(r#"Bearer realm="abc"#), "unterminated_quoted_string");
        assert_eq!(err(r#"Bearer realm="abc\"#), "unterminated_quoted_string");
        assert_eq!(err("Bearer realm=\"é\""), "non_visible_character");
        assert_eq!(err("Bearer realm=\"a\nb\""), "non_visible_character");
        assert_eq!(err("Bearer realm=\"a\u{7f}\""), "non_visible_character");
        assert_eq!(err(r#"Bearer realm="a" error="b""#), "unexpected_character");
        assert_eq!(err(r#"Bearer realm=a"b""#), "unexpected_character");
        assert_eq!(err(r#"Bearer"realm""#), "unexpected_character");
        assert_eq!(err(r#"=Bearer"#), "unexpected_character");
        assert_eq!(err(r#"Bearer realm=(x)"#), "unexpected_character");
        assert_eq!(err(r#"Bearer a="1", realm="#), "missing_parameter_value");
        assert_eq!(err(r#"Bearer realm =, x=y"#), "missing_parameter_value");
        assert_eq!(err(r#"Bearer a! "#), "missing_parameter_value");
        assert_eq!(err(r#"Bearer realm="a", REALM="b""#), "duplicate_parameter");
        let long = format!("Bearer realm=\"{}\"", "a".repeat(MAX_HEADER_LEN));
        assert_eq!(err(&long), "header_too_long");
        let exact = format!("Bearer realm=\"{}\"", "a".repeat(MAX_HEADER_LEN - 15));
        assert_eq!(exact.len(), MAX_HEADER_LEN);
        assert!(parse_challenges(&exact).is_ok());
    }

    #[test]
    fn error_positions() {
        assert_eq!(
            parse_challenges("Bearer realm=\"a\" x").unwrap_err(),
            WwwAuthenticateError::UnexpectedCharacter { position: 17, found: 'x' }
        );
        assert_eq!(
            parse_challenges("Basic, Bearer x=\"a").unwrap_err(),
            WwwAuthenticateError::UnterminatedQuotedString { position: 16 }
        );
    }

    #[test]
    fn tchar_set_is_exact() {
        let c = one("Bearer !#$%&'*+-.^_`|~09azAZ=x");
        assert_eq!(c.params, params(&[("!#$%&'*+-.^_`|~09azaz", "x")]));
        for bad in ['(', ')', '/', ':', ';', '<', '>', '?', '@', '[', ']', '{', '}'] {
            let header = format!("Bearer a=b{bad}c");
            assert!(parse_challenges(&header).is_err(), "{header}");
        }
    }

    #[test]
    fn display_round_trips() {
        let header = r#"Negotiate abc==, Bearer Realm="a \"q\", \\", error=x, Basic, Digest"#;
        let cs = parse_challenges(header).unwrap();
        let text = format_challenges(&cs);
        assert_eq!(text, r#"Negotiate abc==, Bearer realm="a \"q\", \\", error="x", Basic, Digest"#);
        assert_eq!(parse_challenges(&text).unwrap(), cs);
    }

    #[test]
    fn realistic_mcp_header() {
        let b = bearer(
            r#"Bearer error="insufficient_scope", scope="files:read files:write", resource_metadata="https://mcp.example.com/.well-known/oauth-protected-resource/mcp""#,
        );
        assert_eq!(b.error.as_deref(), Some("insufficient_scope"));
        assert_eq!(b.scope, Some(vec!["files:read".to_owned(), "files:write".to_owned()]));
        assert_eq!(
            b.resource_metadata.unwrap().as_str(),
            "https://mcp.example.com/.well-known/oauth-protected-resource/mcp"
        );
        assert_eq!(b.realm, None);
    }

    #[test]
    fn realistic_headers_from_servers() {
        let b = bearer(
            r#"Bearer realm="OAuth", error="invalid_token", error_description="Missing or invalid access token", resource_metadata="http://localhost:8080/.well-known/oauth-protected-resource""#,
        );
        assert_eq!(b.realm.as_deref(), Some("OAuth"));
        assert_eq!(b.error.as_deref(), Some("invalid_token"));
        assert_eq!(b.error_description.as_deref(), Some("Missing or invalid access token"));
        assert_eq!(
            b.resource_metadata.unwrap().as_str(),
            "http://localhost:8080/.well-known/oauth-protected-resource"
        );
        let b = bearer("Bearer");
        assert_eq!(b, BearerChallenge::default());
    }

    #[test]
    fn several_header_lines_are_one_list() {
        let b =
            parse_bearer([r#"Basic realm="x""#, r#"Bearer realm="a""#, r#"scope="read""#]).unwrap().unwrap();
        // The third line continues the Bearer challenge's params once the lines are joined.
        assert_eq!(b.realm.as_deref(), Some("a"));
        assert_eq!(b.scope, Some(vec!["read".to_owned()]));

        let b = parse_bearer([r#"Negotiate abc=="#, "", r#"bearer scope="a b""#]).unwrap().unwrap();
        assert_eq!(b.scope, Some(vec!["a".to_owned(), "b".to_owned()]));

        assert_eq!(
            parse_bearer([r#"Bearer realm="a""#, r#"Bearer realm="b""#]).unwrap_err().reason(),
            "duplicate_bearer_challenge"
        );
        assert_eq!(parse_bearer(Vec::<&str>::new()).unwrap(), None);
        let long = "a".repeat(MAX_HEADER_LEN / 2);
        assert_eq!(parse_bearer([long.as_str(), long.as_str()]).unwrap_err(), WwwAuthenticateError::TooLong);
    }

    #[test]
    fn no_bearer_challenge() {
        assert_eq!(parse_bearer([r#"Basic realm="x", Negotiate"#]).unwrap(), None);
        assert_eq!(parse_bearer(["Bearerx"]).unwrap(), None);
        assert_eq!(parse_bearer([""]).unwrap_err().reason(), "empty");
    }

    #[test]
    fn bearer_case_insensitive_and_duplicate() {
        let b = bearer(r#"BEARER Scope="a", Resource_Metadata="https://h/x""#);
        assert_eq!(b.scope, Some(vec!["a".to_owned()]));
        assert!(b.resource_metadata.is_some());
        assert_eq!(
            parse_bearer([r#"Bearer realm="a", bearer"#]).unwrap_err().reason(),
            "duplicate_bearer_challenge"
        );
        assert_eq!(
            parse_bearer([r#"Bearer scope="a", scope="b""#]).unwrap_err().reason(),
            "duplicate_parameter"
        );
    }

    #[test]
    fn scope_rules() {
        assert_eq!(bearer(r#"Bearer scope="""#).scope, None);
        assert_eq!(bearer(r#"Bearer scope="   ""#).scope, None);
        assert_eq!(bearer(r#"Bearer scope="  a   b ""#).scope, Some(vec!["a".to_owned(), "b".to_owned()]));
        assert_eq!(bearer("Bearer scope=openid").scope, Some(vec!["openid".to_owned()]));
        for bad in [r#"Bearer scope="a\"b""#, r#"Bearer scope="a\\b""#, "Bearer scope=\"a\tb\""] {
            assert_eq!(parse_bearer([bad]).unwrap_err().reason(), "invalid_scope", "{bad}");
        }
    }

    #[test]
    fn resource_metadata_rules() {
        let ok = |v: &str| parse_bearer([format!("Bearer resource_metadata=\"{v}\"").as_str()]);
        assert!(ok("https://h.example/.well-known/oauth-protected-resource?x=1").is_ok());
        assert!(ok("http://127.0.0.1:9000/prm").is_ok());
        for bad in [
            "",
            "/relative/path",
            "mcp.example.com/prm",
            "ftp://h.example/prm",
            "file:///etc/passwd",
            "https://h.example/prm#frag",
            "https://h.example/prm#",
            "https://user:pw@h.example/prm",
            " https://h.example/prm",
            "https://h.example/p rm",
            "data:text/plain,hi",
        ] {
            assert_eq!(ok(bad).unwrap_err().reason(), "invalid_resource_metadata", "{bad:?}");
        }
    }

    #[test]
    fn reasons_are_snake_case_and_messages_nonempty() {
        let errors = [
            WwwAuthenticateError::Empty,
            WwwAuthenticateError::TooLong,
            WwwAuthenticateError::NonVisibleCharacter { position: 1 },
            WwwAuthenticateError::UnterminatedQuotedString { position: 1 },
            WwwAuthenticateError::UnexpectedCharacter { position: 1, found: '=' },
            WwwAuthenticateError::UnexpectedEnd,
            WwwAuthenticateError::MissingParameterValue { name: "a".into() },
            WwwAuthenticateError::DuplicateParameter { scheme: "Bearer".into(), name: "a".into() },
            WwwAuthenticateError::DuplicateBearerChallenge,
            WwwAuthenticateError::InvalidResourceMetadata { why: "x" },
            WwwAuthenticateError::InvalidScope,
        ];
        for e in errors {
            assert!(e.reason().bytes().all(|b| b.is_ascii_lowercase() || b == b'_'));
            assert!(!e.to_string().is_empty());
        }
    }

    proptest::proptest! {
        #[test]
        fn round_trip_and_no_panic(s in r#"[ ,=\t"\\a-cB/+!~.:é()]{0,40}"#) {
            if let Ok(cs) = parse_challenges(&s) {
                for c in &cs {
                    proptest::prop_assert!(!c.scheme.is_empty());
                    proptest::prop_assert!(c.scheme.bytes().all(is_tchar));
                }
                let again = parse_challenges(&format_challenges(&cs));
                proptest::prop_assert_eq!(again, Ok(cs));
            }
            if let Ok(Some(b)) = parse_bearer(s.split('\n')) {
                for scope in b.scope.unwrap_or_default() {
                    proptest::prop_assert!(!scope.is_empty() && !scope.contains(' '));
                }
            }
        }

        #[test]
        fn structured_round_trip(
            parts in proptest::collection::vec(
                proptest::prop_oneof![
                    r"[A-Za-z][A-Za-z0-9!#$%&'*+.^_`|~-]{0,6}",
                    r"[A-Za-z][A-Za-z0-9]{0,4} [A-Za-z0-9/+._~-]{1,6}={0,2}",
                    r#"[A-Za-z]{1,5} [a-z_]{1,6} ?= ?"[ -~]{0,8}"(, [a-z]{1,4}=[a-z0-9]{1,4}){0,2}"#,
                ],
                1..5,
            )
        ) {
            let header = parts.join(", ");
            if let Ok(cs) = parse_challenges(&header) {
                let again = parse_challenges(&format_challenges(&cs));
                proptest::prop_assert_eq!(again, Ok(cs));
            }
        }
    }
}
