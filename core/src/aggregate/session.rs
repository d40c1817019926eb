//! The aggregating endpoint's own MCP sessions (design §4.11).
//!
//! `initialize` on `POST /mcp` opens a gateway session: a random id the caller sends back as
//! `Mcp-Session-Id`, bound to a digest of the credentials that opened it ([`Owner`]), so the id
//! alone is worth nothing to anyone else (they get the 404 of an unknown session). Each gateway
//! session has its own upstream sessions, one per target, opened with the caller's own
//! `initialize` (its capabilities and client info), under a [`Scope`] that keys them apart from
//! every other caller's; the upstream session ids never leave the gateway. A session also
//! remembers which target listed which resource URI and template, so `resources/read` goes where
//! the URI came from.
//!
//! Everything is bounded: at most [`MAX_SESSIONS`] sessions (the least recently used goes first),
//! each ending after [`SESSION_IDLE`] without a request, each remembering at most
//! [`MAX_LEARNED`] URIs and templates.

use std::collections::HashMap;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use http::HeaderMap;
use sha2::{Digest, Sha256};

use crate::machine::Instant;

/// How many gateway sessions are held at most; past it, the least recently used one ends.
pub const MAX_SESSIONS: usize = 10_000;

/// How long a gateway session lives without a request.
pub const SESSION_IDLE: Duration = Duration::from_secs(60 * 60);

/// How many resource URIs and templates one session remembers (each kind).
pub const MAX_LEARNED: usize = 4_096;

/// The longest URI or template remembered; a longer one is routed as an unknown one.
const MAX_LEARNED_LENGTH: usize = 2_048;

/// Who opened a gateway session: a SHA-256 digest of every credential the request presented (the
/// gateway-key headers and `Authorization`). A request presenting other credentials does not
/// find the session. `Debug` shows nothing of it.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Owner([u8; 32]);

impl Owner {
    /// The owner a request with these headers speaks for.
    pub fn of(headers: &HeaderMap) -> Self {
        let mut digest = Sha256::new();
        digest.update(b"mcp-oauth gateway session owner");
        let names = crate::delegate::GATEWAY_KEY_HEADERS.iter().copied().chain(["authorization"]);
        for name in names {
            for value in headers.get_all(name) {
                digest.update([0]);
                digest.update(name.as_bytes());
                digest.update([0]);
                digest.update(value.as_bytes());
            }
        }
        Self(digest.finalize().into())
    }
}

impl std::fmt::Debug for Owner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Owner(..)")
    }
}

/// What keys one gateway session's upstream sessions apart from every other's: a digest of the
/// gateway session's id (the id itself is a bearer value and is kept nowhere else).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Scope([u8; 32]);

impl Scope {
    fn of(id: &str) -> Self {
        Self(Sha256::digest(id.as_bytes()).into())
    }
}

/// A gateway session as a plan sees it: its scope and the caller's `initialize`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SessionView {
    /// The scope of its upstream sessions.
    pub scope: Scope,
    /// The caller's `initialize` request (its id replaced by the gateway's), sent to open each
    /// upstream session.
    pub initialize: Vec<u8>,
}

#[derive(Debug)]
struct Entry {
    owner: Owner,
    view: SessionView,
    /// Resource URI → the server that listed it first.
    resources: HashMap<String, String>,
    /// Resource templates with the server that listed them, in the order learned.
    templates: Vec<(String, String)>,
    used: Instant,
}

/// What a listing taught a session: which server listed which URI or template.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Learned {
    pub(crate) session: Option<String>,
    pub(crate) resources: Vec<(String, String)>,
    pub(crate) templates: Vec<(String, String)>,
}

impl Learned {
    /// Whether there is nothing to remember.
    pub fn is_empty(&self) -> bool {
        self.resources.is_empty() && self.templates.is_empty()
    }
}

/// The aggregating endpoint's sessions (see the module docs).
#[derive(Debug)]
pub struct GatewaySessions {
    entries: HashMap<String, Entry>,
    capacity: usize,
    idle: Duration,
}

impl Default for GatewaySessions {
    fn default() -> Self {
        Self::new(MAX_SESSIONS, SESSION_IDLE)
    }
}

impl GatewaySessions {
    /// A table of at most `capacity` sessions (at least one), each ending after `idle` unused.
    pub fn new(capacity: usize, idle: Duration) -> Self {
        Self { entries: HashMap::new(), capacity: capacity.max(1), idle }
    }

    /// Opens a session for `owner` whose upstream sessions are opened with `initialize`; the id
    /// is `random` in base64url.
    pub fn open(
        &mut self,
        random: [u8; 32],
        owner: Owner,
        initialize: Vec<u8>,
        now: Instant,
    ) -> (String, SessionView) {
        self.sweep(now);
        if self.entries.len() >= self.capacity
            && let Some(oldest) =
                self.entries.iter().min_by_key(|(_, entry)| entry.used).map(|(id, _)| id.clone())
        {
            self.entries.remove(&oldest);
        }
        let id = URL_SAFE_NO_PAD.encode(random);
        let view = SessionView { scope: Scope::of(&id), initialize };
        let entry =
            Entry { owner, view: view.clone(), resources: HashMap::new(), templates: Vec::new(), used: now };
        self.entries.insert(id.clone(), entry);
        (id, view)
    }

    /// The live session `id` when `owner` opened it, marked as used at `now`; `None` for an
    /// unknown, ended or expired id and for anyone else's.
    pub fn find(&mut self, id: &str, owner: Owner, now: Instant) -> Option<SessionView> {
        self.entry(id, owner, now).map(|entry| entry.view.clone())
    }

    fn entry(&mut self, id: &str, owner: Owner, now: Instant) -> Option<&mut Entry> {
        let expired = self.entries.get(id).is_some_and(|entry| self.is_expired(entry, now));
        if expired {
            self.entries.remove(id);
            return None;
        }
        let entry = self.entries.get_mut(id).filter(|entry| entry.owner == owner)?;
        entry.used = now;
        Some(entry)
    }

    /// Ends `owner`'s session `id`; its scope, so its upstream sessions can be ended too.
    pub fn close(&mut self, id: &str, owner: Owner, now: Instant) -> Option<Scope> {
        let scope = self.entry(id, owner, now)?.view.scope;
        self.entries.remove(id);
        Some(scope)
    }

    /// The server that listed `uri` in session `id` (owner checked by the caller of the plan), or
    /// whose listed template matches it.
    pub(crate) fn resource_server(
        &mut self,
        id: &str,
        owner: Owner,
        uri: &str,
        now: Instant,
    ) -> Option<String> {
        let entry = self.entry(id, owner, now)?;
        if let Some(server) = entry.resources.get(uri) {
            return Some(server.clone());
        }
        entry
            .templates
            .iter()
            .find(|(template, _)| template_matches(template, uri))
            .map(|(_, server)| server.clone())
    }

    /// Remembers what a listing in a session found; the first server to list a URI keeps it.
    pub fn learn(&mut self, learned: Learned, now: Instant) {
        let Some(id) = learned.session.as_deref() else { return };
        let Some(entry) = self.entries.get_mut(id) else { return };
        entry.used = now;
        for (uri, server) in learned.resources {
            if entry.resources.len() < MAX_LEARNED && uri.len() <= MAX_LEARNED_LENGTH {
                entry.resources.entry(uri).or_insert(server);
            }
        }
        for (template, server) in learned.templates {
            let known = entry.templates.iter().any(|(known, _)| *known == template);
            if !known && entry.templates.len() < MAX_LEARNED && template.len() <= MAX_LEARNED_LENGTH {
                entry.templates.push((template, server));
            }
        }
    }

    /// How many sessions are held (some may have expired since their last use).
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether no session is held.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    fn is_expired(&self, entry: &Entry, now: Instant) -> bool {
        now.saturating_since(entry.used) >= self.idle
    }

    fn sweep(&mut self, now: Instant) {
        let idle = self.idle;
        self.entries.retain(|_, entry| now.saturating_since(entry.used) < idle);
    }
}

/// Whether `uri` is an expansion of the RFC 6570 `template`: literal text must match exactly; a
/// simple `{name}` stands for one or more characters other than `/`, `?` and `#`; any other
/// expression (`{+path}`, `{/segments}`, `{?query}` …) for any text, possibly empty. A template
/// with more than [`MAX_EXPRESSIONS`] expressions, or a URI longer than [`MAX_LEARNED_LENGTH`],
/// matches nothing, which bounds the work to a few million steps for the worst template.
pub(crate) fn template_matches(template: &str, uri: &str) -> bool {
    let mut pieces = Vec::new();
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        let Some(close) = rest[open..].find('}') else { return false };
        pieces.push(Piece::Literal(&rest[..open]));
        pieces.push(Piece::Expression {
            simple: !rest[open + 1..].starts_with(['+', '#', '.', '/', ';', '?', '&']),
        });
        rest = &rest[open + close + 1..];
    }
    pieces.push(Piece::Literal(rest));
    let expressions = pieces.iter().filter(|piece| matches!(piece, Piece::Expression { .. })).count();
    if expressions > MAX_EXPRESSIONS || uri.len() > MAX_LEARNED_LENGTH {
        return false;
    }
    let mut failed = std::collections::HashSet::new();
    matches_from(&pieces, uri, 0, 0, &mut failed)
}

/// The most expressions a template may have to be matched at all.
const MAX_EXPRESSIONS: usize = 8;

#[derive(Clone, Copy)]
enum Piece<'t> {
    Literal(&'t str),
    Expression { simple: bool },
}

/// Whether `pieces[piece..]` match `uri[at..]`; `failed` remembers the states already ruled out,
/// so each (piece, position) is tried once.
fn matches_from(
    pieces: &[Piece<'_>],
    uri: &str,
    piece: usize,
    at: usize,
    failed: &mut std::collections::HashSet<(usize, usize)>,
) -> bool {
    let Some(current) = pieces.get(piece) else { return at == uri.len() };
    if failed.contains(&(piece, at)) {
        return false;
    }
    let rest = &uri[at..];
    let matched = match *current {
        Piece::Literal(text) => {
            rest.starts_with(text) && matches_from(pieces, uri, piece + 1, at + text.len(), failed)
        }
        Piece::Expression { simple } => {
            let (shortest, longest) =
                if simple { (1, rest.find(['/', '?', '#']).unwrap_or(rest.len())) } else { (0, rest.len()) };
            (shortest..=longest)
                .rev()
                .filter(|&length| rest.is_char_boundary(length))
                .any(|length| matches_from(pieces, uri, piece + 1, at + length, failed))
        }
    };
    if !matched {
        failed.insert((piece, at));
    }
    matched
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for (name, value) in pairs {
            headers.append(
                http::HeaderName::from_bytes(name.as_bytes()).expect("name"),
                http::HeaderValue::from_str(value).expect("value"),
            );
        }
        headers
    }

    #[test]
    fn a_session_is_found_only_by_its_owner_and_only_while_alive() {
        let mut sessions = GatewaySessions::new(8, Duration::from_secs(60));
        let alice = Owner::of(&headers(&[("x-mcp-gateway-key", "alice-key")]));
        let bob = Owner::of(&headers(&[("x-mcp-gateway-key", "bob-key")]));
        let alice_with_token =
            Owner::of(&headers(&[("x-mcp-gateway-key", "alice-key"), ("authorization", "Bearer t")]));
        assert_ne!(alice, bob);
        assert_ne!(alice, alice_with_token);
        let (id, view) = sessions.open([7; 32], alice, b"init".to_vec(), Instant::ZERO);
        assert_eq!(id.len(), 43);
        assert_eq!(sessions.find(&id, alice, Instant::from_millis(1_000)), Some(view.clone()));
        assert_eq!(sessions.find(&id, bob, Instant::from_millis(1_000)), None);
        assert_eq!(sessions.find(&id, alice_with_token, Instant::from_millis(1_000)), None);
        assert_eq!(sessions.find("unknown", alice, Instant::from_millis(1_000)), None);
        // Idle for the whole lifetime since its last use: gone.
        assert_eq!(sessions.find(&id, alice, Instant::from_millis(61_000)), None);
        assert!(sessions.is_empty());
    }

    #[test]
    fn closing_ends_the_session_and_names_its_scope_only_for_its_owner() {
        let mut sessions = GatewaySessions::default();
        let alice = Owner::of(&headers(&[("x-litellm-api-key", "a")]));
        let bob = Owner::of(&headers(&[("x-litellm-api-key", "b")]));
        let (id, view) = sessions.open([1; 32], alice, Vec::new(), Instant::ZERO);
        assert_eq!(sessions.close(&id, bob, Instant::ZERO), None);
        assert_eq!(sessions.close(&id, alice, Instant::ZERO), Some(view.scope));
        assert_eq!(sessions.find(&id, alice, Instant::ZERO), None);
    }

    #[test]
    fn the_table_is_bounded_and_forgets_the_least_recently_used() {
        let mut sessions = GatewaySessions::new(2, Duration::from_secs(600));
        let owner = Owner::of(&HeaderMap::new());
        let (first, _) = sessions.open([1; 32], owner, Vec::new(), Instant::from_millis(1));
        let (second, _) = sessions.open([2; 32], owner, Vec::new(), Instant::from_millis(2));
        assert!(sessions.find(&first, owner, Instant::from_millis(3)).is_some());
        let (third, _) = sessions.open([3; 32], owner, Vec::new(), Instant::from_millis(4));
        assert_eq!(sessions.len(), 2);
        assert!(sessions.find(&second, owner, Instant::from_millis(5)).is_none());
        assert!(sessions.find(&first, owner, Instant::from_millis(5)).is_some());
        assert!(sessions.find(&third, owner, Instant::from_millis(5)).is_some());
    }

    #[test]
    fn resources_route_to_the_first_server_that_listed_them_or_whose_template_matches() {
        let mut sessions = GatewaySessions::default();
        let owner = Owner::of(&HeaderMap::new());
        let (id, _) = sessions.open([9; 32], owner, Vec::new(), Instant::ZERO);
        let learned = Learned {
            session: Some(id.clone()),
            resources: vec![("file:///a".into(), "one".into()), ("file:///a".into(), "two".into())],
            templates: vec![("demo://item/{id}".into(), "two".into())],
        };
        sessions.learn(learned, Instant::ZERO);
        let server =
            |sessions: &mut GatewaySessions, uri| sessions.resource_server(&id, owner, uri, Instant::ZERO);
        assert_eq!(server(&mut sessions, "file:///a").as_deref(), Some("one"));
        assert_eq!(server(&mut sessions, "demo://item/42").as_deref(), Some("two"));
        assert_eq!(server(&mut sessions, "demo://item/42/more"), None);
        assert_eq!(server(&mut sessions, "file:///b"), None);
    }

    #[test]
    fn templates_match_their_expansions() {
        let cases = [
            ("demo://resource/dynamic/{type}/{id}", "demo://resource/dynamic/text/1", true),
            ("demo://resource/dynamic/{type}/{id}", "demo://resource/dynamic/text/", false),
            ("demo://resource/dynamic/{type}/{id}", "demo://resource/dynamic/text/1/2", false),
            ("file:///{+path}", "file:///a/b/c.txt", true),
            ("file:///{+path}", "file:///", true),
            ("repo://{owner}/{repo}{?ref}", "repo://a/b?ref=main", true),
            ("repo://{owner}/{repo}{?ref}", "repo://a/b", true),
            ("plain://x", "plain://x", true),
            ("plain://x", "plain://y", false),
            ("broken://{x", "broken://{x", false),
        ];
        for (template, uri, expected) in cases {
            assert_eq!(template_matches(template, uri), expected, "{template} vs {uri}");
        }
    }
}
