//! Masking secrets for debug headers and logs (design §4.7).
//!
//! A debug header must let an operator tell two credentials apart without handing the credential
//! to whoever reads the response. The mask keeps a leading `Bearer`/`Basic` scheme word, shows the
//! last four characters only of secrets of twelve characters or more, and always uses the same four
//! stars, so the output does not leak the secret's length.

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
    masked.push_str(STARS);
    if secret.chars().count() >= MIN_CHARS_TO_SHOW_TAIL {
        let tail_start = secret.char_indices().rev().nth(3).map_or(0, |(index, _)| index);
        masked.push_str(&secret[tail_start..]);
    }
    masked
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

/// Masks the userinfo and every query value of a URL, keeping its shape for debugging:
/// `https://u:p@h/x?key=v` → `https://****:****@h/x?key=****`.
pub fn mask_url(url: &Url) -> String {
    let mut masked = url.clone();
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
}
