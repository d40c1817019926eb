//! Masking secrets for debug headers and logs (design §4.7).
//!
//! A debug header must let an operator tell two credentials apart without handing the credential
//! to whoever reads the response. The mask keeps a leading `Bearer`/`Basic` scheme word, shows the
//! last four characters only of secrets of twelve characters or more, and always uses the same four
//! stars, so the output does not leak the secret's length.
//!
//! URLs ([`mask_url`]) hide their userinfo, every query value, and every path segment that
//! [`looks_like_credential`]: services such as Zapier put the credential in the path
//! (`https://mcp.zapier.com/api/mcp/s/<secret>/mcp`), where a query-only mask would show it whole.

use url::Url;

/// The fixed run of stars that replaces a secret.
pub const STARS: &str = "****";

/// Secrets shorter than this many characters show no characters at all.
pub const MIN_CHARS_TO_SHOW_TAIL: usize = 12;

/// Masks a credential: `Bearer abcdefgh12345678` → `Bearer****5678`, `Bearer short` → `Bearer****`,
/// `abcdefghijklcdef` → `****cdef`.
pub fn mask(value: &str) -> String {
    let value = value.trim_matches([' ', '\t']);
    let (scheme, secret) = split_scheme(value);
    let mut masked = String::with_capacity(scheme.len() + STARS.len() + 16);
    masked.push_str(scheme);
    push_masked(&mut masked, secret);
    masked
}

/// Masks a bare secret with no scheme word: `****` then its last four characters when it has
/// twelve or more (`abcdefghijklcdef` → `****cdef`, `sk-1234` → `****`).
pub fn mask_secret(secret: &str) -> String {
    let mut masked = String::with_capacity(STARS.len() + 16);
    push_masked(&mut masked, secret);
    masked
}

/// Appends the stars and, for a secret of [`MIN_CHARS_TO_SHOW_TAIL`] characters or more, its last four.
fn push_masked(masked: &mut String, secret: &str) {
    masked.push_str(STARS);
    if secret.chars().count() >= MIN_CHARS_TO_SHOW_TAIL {
        let tail_start = secret.char_indices().rev().nth(3).map_or(0, |(index, _)| index);
        masked.push_str(&secret[tail_start..]);
    }
}

/// Prefixes of well-known token formats: OpenAI and Stripe style (`sk-`, `sk_`, `pk_`, `rk_`),
/// GitHub (`ghp_`, `gho_`, `ghu_`, `ghs_`, `ghr_`, `github_pat_`), GitLab (`glpat-`), Slack
/// (`xoxa-`, `xoxb-`, `xoxe-`, `xoxp-`, `xoxr-`, `xoxs-`, `xapp-`), Google (`AIza`, `ya29.`), a JWT
/// or JOSE header (`eyJ`) and this gateway's own tokens (`mcpgw_`). Compared case-sensitively.
pub const CREDENTIAL_PREFIXES: [&str; 22] = [
    "sk-",
    "sk_",
    "pk_",
    "rk_",
    "ghp_",
    "gho_",
    "ghu_",
    "ghs_",
    "ghr_",
    "github_pat_",
    "glpat-",
    "xoxa-",
    "xoxb-",
    "xoxe-",
    "xoxp-",
    "xoxr-",
    "xoxs-",
    "xapp-",
    "AIza",
    "ya29.",
    "eyJ",
    "mcpgw_",
];

/// A run of this many ASCII letters and digits that has both a letter and a digit looks random.
pub const MIXED_RUN_CHARS: usize = 8;

/// A run of this many ASCII letters and digits looks random whatever it is made of.
pub const LONG_RUN_CHARS: usize = 24;

/// Whether one URL path segment, as written (percent-encoded), looks like a credential.
///
/// A *run* is a maximal sequence of ASCII letters and digits; `-`, `_`, `.`, `~`, `%` and every
/// other character end it. A segment looks like a credential when any of these holds:
/// 1. it starts with one of [`CREDENTIAL_PREFIXES`] and has at least one character after it
///    (`sk-ak-1234`, `ghp_…`, `eyJhbGciOi…`);
/// 2. it has a run of at least [`MIXED_RUN_CHARS`] (8) characters containing both a letter and a
///    digit (`PATHSECRET-9f8e7d6c5b4a`, `550e8400-e29b-41d4-…`, `AKIAIOSFODNN7EXAMPLE`);
/// 3. it has a run of at least [`LONG_RUN_CHARS`] (24) characters of any kind (long random letters or
///    numbers: no word or name is that long without a separator).
///
/// Everything else stays visible: words and names (`mcp`, `api`, `sse`, `v1`, `s`, `zap`,
/// `google-drive-v2`, `github-mcp-server`), short version tags and dates (`2025-03-26`), numbers
/// under 24 digits. A letters-only secret under 24 characters without a known prefix is not
/// recognised; put such a secret in a header or a query value, which are always masked.
pub fn looks_like_credential(segment: &str) -> bool {
    if CREDENTIAL_PREFIXES.iter().any(|prefix| segment.len() > prefix.len() && segment.starts_with(prefix)) {
        return true;
    }
    segment.split(|c: char| !c.is_ascii_alphanumeric()).any(|run| {
        let mixed = run.bytes().any(|b| b.is_ascii_digit()) && run.bytes().any(|b| b.is_ascii_alphabetic());
        run.len() >= LONG_RUN_CHARS || (run.len() >= MIXED_RUN_CHARS && mixed)
    })
}

/// Splits a leading `Bearer` or `Basic` (any case) from the secret that follows it.
fn split_scheme(value: &str) -> (&str, &str) {
    let (word, rest) = match value.split_once([' ', '\t']) {
        Some((word, rest)) => (word, rest.trim_start_matches([' ', '\t'])),
        None => (value, ""),
    };
    if word.eq_ignore_ascii_case("bearer") || word.eq_ignore_ascii_case("basic") {
        (word, rest)
    } else {
        ("", value)
    }
}

/// Masks the userinfo, every query value and every path segment that [`looks_like_credential`] of
/// a URL, keeping its shape for debugging, and drops the fragment:
/// `https://u:p@h/s/PATHSECRET-9f8e7d6c5b4a/mcp?key=v` → `https://****:****@h/s/****5b4a/mcp?key=****`.
/// A masked segment follows [`mask_secret`]. The one function behind `x-mcp-debug-outbound-url`
/// and `mcp-oauth check config`. An opaque path (`mailto:…`, never an MCP URL) is left as it is.
pub fn mask_url(url: &Url) -> String {
    let mut masked = url.clone();
    // Only a URL with a masked segment gets a new path, so any other path stays byte for byte.
    if let Some(segments) = url.path_segments()
        && url.path_segments().is_some_and(|mut segments| segments.any(looks_like_credential))
    {
        let path = segments.fold(String::new(), |mut path, segment| {
            path.push('/');
            if looks_like_credential(segment) {
                path.push_str(&mask_secret(segment));
            } else {
                path.push_str(segment);
            }
            path
        });
        masked.set_path(&path);
    }
    if !masked.username().is_empty() {
        // Setting userinfo only fails for URLs that cannot have one, which then have none.
        let _ = masked.set_username(STARS);
    }
    if masked.password().is_some() {
        let _ = masked.set_password(Some(STARS));
    }
    if masked.query().is_some() {
        let names: Vec<String> = masked.query_pairs().map(|(name, _)| name.into_owned()).collect();
        if names.is_empty() {
            masked.set_query(None);
        } else {
            let query = names
                .iter()
                .map(|name| {
                    format!(
                        "{}={STARS}",
                        url::form_urlencoded::byte_serialize(name.as_bytes()).collect::<String>()
                    )
                })
                .collect::<Vec<_>>()
                .join("&");
            masked.set_query(Some(&query));
        }
    }
    masked.set_fragment(None);
    masked.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_scheme_and_tail_of_long_secrets() {
        assert_eq!(mask("Bearer abcdefghijklmnopqrstuvwxyzef01"), "Bearer****ef01");
        assert_eq!(mask("Basic dXNlcjpwYXNzd29yZA=="), "Basic****ZA==");
        assert_eq!(mask("abcdefghijklcdef"), "****cdef");
        assert_eq!(mask("bearer 123456789012"), "bearer****9012");
    }

    #[test]
    fn short_secrets_show_nothing() {
        assert_eq!(mask("Bearer short"), "Bearer****");
        assert_eq!(mask("Bearer 12345678901"), "Bearer****");
        assert_eq!(mask("sk-1234"), "****");
        assert_eq!(mask(""), "****");
        assert_eq!(mask("Bearer"), "Bearer****");
    }

    #[test]
    fn star_count_never_depends_on_length() {
        for length in 0..64 {
            let secret = "x".repeat(length);
            let masked = mask(&format!("Bearer {secret}"));
            assert_eq!(masked.matches('*').count(), 4, "length {length}");
        }
    }

    #[test]
    fn other_scheme_words_are_part_of_the_secret() {
        assert_eq!(mask("Token abcdefghijklmnop"), "****mnop");
        assert_eq!(mask("Bearerabcdefghijklmnop"), "****mnop");
    }

    #[test]
    fn tail_counts_characters_not_bytes() {
        assert_eq!(mask("ééééééééééééabcé"), "****abcé");
    }

    #[test]
    fn url_userinfo_and_query_values_are_masked() {
        let url = Url::parse("https://user:pass@mcp.example.com/mcp?api_key=secret&x=1#frag").unwrap();
        assert_eq!(mask_url(&url), "https://****:****@mcp.example.com/mcp?api_key=****&x=****");
        let plain = Url::parse("https://mcp.example.com/mcp").unwrap();
        assert_eq!(mask_url(&plain), "https://mcp.example.com/mcp");
    }

    #[test]
    fn credential_looking_path_segments_are_masked() {
        let cases = [
            ("https://h.example/zap/PATHSECRET-9f8e7d6c5b4a/mcp", "https://h.example/zap/****5b4a/mcp"),
            (
                "https://mcp.zapier.com/api/mcp/s/ODk1ZTY3MTQtYjM0ZC00ZmI1LWE1NzgtNjBm/mcp",
                "https://mcp.zapier.com/api/mcp/s/****NjBm/mcp",
            ),
            ("https://actions.zapier.com/mcp/sk-ak-1234/sse", "https://actions.zapier.com/mcp/****/sse"),
            (
                "https://mcp.pipedream.net/550e8400-e29b-41d4-a716-446655440000/gmail",
                "https://mcp.pipedream.net/****0000/gmail",
            ),
            ("https://h.example/v1/ghp_abcdefghijklmnop/x", "https://h.example/v1/****mnop/x"),
            ("https://h.example/k/abcdefghijklmnopqrstuvwx", "https://h.example/k/****uvwx"),
            ("https://h.example/k/a1b2c3d4", "https://h.example/k/****"),
            (
                "https://u:p@h.example/s/PATHSECRET-9f8e7d6c5b4a/mcp?key=v#f",
                "https://****:****@h.example/s/****5b4a/mcp?key=****",
            ),
        ];
        for (url, expected) in cases {
            assert_eq!(mask_url(&Url::parse(url).unwrap()), expected, "{url}");
        }
    }

    #[test]
    fn ordinary_path_segments_stay_visible() {
        for url in [
            "https://mcp.example.com/api/mcp/s/mcp",
            "https://mcp.example.com/v1/sse",
            "https://mcp.example.com/github-mcp-server/google-drive-v2/2025-03-26/",
            "https://mcp.example.com/users/12345678901234567890123/abcdefghijklmnopqrstuvw",
            "https://mcp.example.com/sk-/eyJ/a1b2c3d/",
            "https://mcp.example.com/",
        ] {
            assert_eq!(mask_url(&Url::parse(url).unwrap()), url);
        }
    }

    #[test]
    fn credential_rules_have_exact_boundaries() {
        // Rule 1: a known prefix and at least one more character.
        assert!(looks_like_credential("sk-1"));
        assert!(!looks_like_credential("sk-"));
        assert!(!looks_like_credential("Sk-1"));
        assert!(looks_like_credential("mcpgw_x"));
        // Rule 2: a run of 8 with a letter and a digit; 7 is not enough, nor 8 of one kind.
        assert!(looks_like_credential("a1b2c3d4"));
        assert!(looks_like_credential("x-1234567a-y"));
        assert!(!looks_like_credential("a1b2c3d"));
        assert!(!looks_like_credential("a1b2-c3d4"));
        assert!(!looks_like_credential("abcdefgh"));
        assert!(!looks_like_credential("12345678"));
        // Rule 3: a run of 24 of any kind; 23 is not enough.
        assert!(looks_like_credential(&"a".repeat(24)));
        assert!(looks_like_credential(&"7".repeat(24)));
        assert!(!looks_like_credential(&"a".repeat(23)));
        assert!(!looks_like_credential(&format!("{}-{}", "a".repeat(23), "b".repeat(23))));
    }

    #[test]
    fn masked_segments_follow_the_star_rules() {
        for length in 1..40 {
            let secret: String = "a1".repeat(20).chars().take(length).collect();
            let url = Url::parse(&format!("https://h.example/sk-{secret}/mcp")).unwrap();
            let masked = mask_url(&url);
            let segment = masked.trim_start_matches("https://h.example/").trim_end_matches("/mcp");
            assert_eq!(segment.matches('*').count(), 4, "{masked}");
            let shown = if length + 3 >= MIN_CHARS_TO_SHOW_TAIL { 4 } else { 0 };
            assert_eq!(segment.len(), 4 + shown, "{masked}");
        }
        assert_eq!(mask_secret("abcdefghijklcdef"), "****cdef");
        assert_eq!(mask_secret("Bearer abcdefghijkl"), "****ijkl");
        assert_eq!(mask_secret("abcdefghijk"), "****");
    }
}
