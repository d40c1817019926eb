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
//! A session is kept only once a target accepted the caller's `initialize` ([`Opening`]), so a
//! request that opens nothing leaves nothing behind. Everything is bounded: at most
//! [`MAX_SESSIONS`] sessions (the least recently used goes first) and [`MAX_SESSIONS_PER_OWNER`]
//! per owner (one caller cannot push out the others), each ending after [`SESSION_IDLE`] without a
//! request, each holding an `initialize` of at most [`MAX_INITIALIZE`] bytes and remembering at
//! most [`MAX_LEARNED`] URIs and [`MAX_TEMPLATES`] templates.

use std::collections::HashMap;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bytes::Bytes;
use http::HeaderMap;
use sha2::{Digest, Sha256};

use crate::machine::Instant;

/// How many gateway sessions are held at most; past it, the least recently used one ends.
pub const MAX_SESSIONS: usize = 10_000;

/// How long a gateway session lives without a request.
pub const SESSION_IDLE: Duration = Duration::from_secs(60 * 60);

/// How many sessions one owner holds at most; past it, that owner's least recently used one ends.
pub const MAX_SESSIONS_PER_OWNER: usize = 64;

/// The most memory (estimated) all sessions together hold: their `initialize` requests and what
/// they learned. Past it the least recently used sessions end, and listings teach nothing more.
pub const MAX_TABLE_BYTES: usize = 256 * 1024 * 1024;

/// The largest `initialize` request a session keeps (to open its upstream sessions with).
pub const MAX_INITIALIZE: usize = 16 * 1024;

/// How many resource URIs one session remembers.
pub const MAX_LEARNED: usize = 4_096;

/// How many resource templates one session remembers.
pub const MAX_TEMPLATES: usize = 256;

/// How many targets are remembered as listing one URI.
const MAX_LISTERS: usize = 16;

/// The longest URI or template remembered; a longer one is routed as an unknown one.
const MAX_LEARNED_LENGTH: usize = 2_048;

/// Who opened a gateway session: a SHA-256 digest of every credential the request presented (the
/// gateway-key headers and `Authorization`). A request presenting other credentials does not
/// find the session. `Debug` shows nothing of it.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Owner {
    /// Every credential presented: who may use the session.
    binding: [u8; 32],
    /// The one credential that was admitted (the gateway key, else `Authorization`), as its
    /// token: whose share of the table the session counts against, so extra or reworded headers
    /// do not make a caller someone else.
    quota: [u8; 32],
}

impl Owner {
    /// The owner a request with these headers speaks for.
    pub fn of(headers: &HeaderMap) -> Self {
        let mut binding = Sha256::new();
        binding.update(b"mcp-oauth gateway session owner");
        let names = crate::delegate::GATEWAY_KEY_HEADERS.iter().copied().chain(["authorization"]);
        for name in names {
            for value in headers.get_all(name) {
                binding.update([0]);
                binding.update(name.as_bytes());
                binding.update([0]);
                binding.update(value.as_bytes());
            }
        }
        let token = |name: &str| {
            headers.get(name).and_then(|value| value.to_str().ok()).map(crate::outbound::bearer_token)
        };
        let admitted = crate::delegate::GATEWAY_KEY_HEADERS
            .iter()
            .find_map(|name| token(name).map(|token| (b"key" as &[u8], token)))
            .or_else(|| token("authorization").map(|token| (b"authorization" as &[u8], token)));
        let mut quota = Sha256::new();
        quota.update(b"mcp-oauth gateway session quota");
        if let Some((kind, token)) = admitted {
            quota.update(kind);
            quota.update([0]);
            quota.update(token.as_bytes());
        }
        Self { binding: binding.finalize().into(), quota: quota.finalize().into() }
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
    pub initialize: Bytes,
}

/// A session an `initialize` is opening: kept ([`GatewaySessions::learn`]) only once a target
/// accepted it.
#[derive(Debug)]
pub struct Opening {
    pub(crate) id: String,
    owner: Owner,
    pub(crate) view: SessionView,
}

#[derive(Debug)]
struct Entry {
    owner: Owner,
    view: SessionView,
    /// Resource URI → the servers that listed it, in the order learned.
    resources: HashMap<String, Vec<String>>,
    /// Resource templates with the server that listed them, in the order learned.
    templates: Vec<(Template, String)>,
    used: Instant,
    /// What it holds, estimated (counted against [`MAX_TABLE_BYTES`]).
    bytes: usize,
}

/// What a finished request taught the sessions: a session to keep, and which server listed which
/// URI or template in a session.
#[derive(Debug, Default)]
pub struct Learned {
    pub(crate) opened: Option<Opening>,
    pub(crate) session: Option<String>,
    pub(crate) resources: Vec<(String, String)>,
    pub(crate) templates: Vec<(String, String)>,
}

impl Learned {
    /// Whether there is nothing to remember.
    pub fn is_empty(&self) -> bool {
        self.opened.is_none() && self.resources.is_empty() && self.templates.is_empty()
    }
}

/// A resource template, compiled once when learned: an RFC 6570 template matched by a
/// linear-time automaton. Literal text must match exactly; a simple `{name}` stands for one or
/// more characters other than `/`, `?` and `#`; any other expression (`{+path}`, `{/segments}`,
/// `{?query}` …) for any text, possibly empty.
#[derive(Clone, Debug)]
pub(crate) struct Template {
    text: String,
    pattern: regex::Regex,
}

impl Template {
    /// The compiled template, or `None` for one that is malformed or too long.
    pub(crate) fn compile(text: &str) -> Option<Self> {
        if text.len() > MAX_LEARNED_LENGTH {
            return None;
        }
        let mut pattern = String::from("^");
        let mut rest = text;
        while let Some(open) = rest.find('{') {
            let close = rest[open..].find('}')?;
            pattern.push_str(&regex::escape(&rest[..open]));
            let expression = &rest[open + 1..open + close];
            let simple = !expression.starts_with(['+', '#', '.', '/', ';', '?', '&']);
            pattern.push_str(if simple { "[^/?#]+" } else { "(?s:.*)" });
            rest = &rest[open + close + 1..];
        }
        if rest.contains('}') {
            return None;
        }
        pattern.push_str(&regex::escape(rest));
        pattern.push('$');
        let pattern = regex::RegexBuilder::new(&pattern).size_limit(1 << 20).build().ok()?;
        Some(Self { text: text.to_owned(), pattern })
    }

    /// Whether `uri` is an expansion of the template.
    pub(crate) fn matches(&self, uri: &str) -> bool {
        uri.len() <= MAX_LEARNED_LENGTH && self.pattern.is_match(uri)
    }
}

/// The aggregating endpoint's sessions (see the module docs).
#[derive(Debug)]
pub struct GatewaySessions {
    entries: HashMap<String, Entry>,
    capacity: usize,
    idle: Duration,
    /// What all entries hold, estimated.
    bytes: usize,
    /// The most they may hold ([`MAX_TABLE_BYTES`]).
    budget: usize,
}

impl Default for GatewaySessions {
    fn default() -> Self {
        Self::new(MAX_SESSIONS, SESSION_IDLE)
    }
}

impl GatewaySessions {
    /// A table of at most `capacity` sessions (at least one), each ending after `idle` unused.
    pub fn new(capacity: usize, idle: Duration) -> Self {
        Self { entries: HashMap::new(), capacity: capacity.max(1), idle, bytes: 0, budget: MAX_TABLE_BYTES }
    }

    /// Begins a session for `owner` whose upstream sessions are opened with `initialize`; the id
    /// is `random` in base64url. Nothing is kept until [`GatewaySessions::learn`] gets it back.
    pub fn begin(random: [u8; 32], owner: Owner, initialize: Bytes) -> Opening {
        let id = URL_SAFE_NO_PAD.encode(random);
        let view = SessionView { scope: Scope::of(&id), initialize };
        Opening { id, owner, view }
    }

    /// Keeps a session at once (what `learn` does with an accepted [`Opening`]); its id and view.
    pub fn open(
        &mut self,
        random: [u8; 32],
        owner: Owner,
        initialize: Vec<u8>,
        now: Instant,
    ) -> (String, SessionView) {
        let opening = Self::begin(random, owner, Bytes::from(initialize));
        let (id, view) = (opening.id.clone(), opening.view.clone());
        self.keep(opening, now);
        (id, view)
    }

    fn keep(&mut self, opening: Opening, now: Instant) {
        self.sweep(now);
        let bytes = opening.id.len() + opening.view.initialize.len();
        // One owner past its share gives up its own oldest session; otherwise a full table gives up
        // the oldest of all, as many as it takes to fit.
        let quota = opening.owner.quota;
        if self.entries.values().filter(|entry| entry.owner.quota == quota).count() >= MAX_SESSIONS_PER_OWNER
        {
            self.evict_oldest(|entry| entry.owner.quota == quota);
        }
        while !self.entries.is_empty()
            && (self.entries.len() >= self.capacity || self.bytes + bytes > self.budget)
        {
            self.evict_oldest(|_| true);
        }
        let entry = Entry {
            owner: opening.owner,
            view: opening.view,
            resources: HashMap::new(),
            templates: Vec::new(),
            used: now,
            bytes,
        };
        self.bytes += bytes;
        self.entries.insert(opening.id, entry);
    }

    /// Ends the least recently used session among those `which` selects.
    fn evict_oldest(&mut self, which: impl Fn(&Entry) -> bool) {
        let oldest = self
            .entries
            .iter()
            .filter(|(_, entry)| which(entry))
            .min_by_key(|(_, entry)| entry.used)
            .map(|(id, _)| id.clone());
        if let Some(oldest) = oldest {
            self.remove(&oldest);
        }
    }

    fn remove(&mut self, id: &str) {
        if let Some(entry) = self.entries.remove(id) {
            self.bytes = self.bytes.saturating_sub(entry.bytes);
        }
    }

    /// The live session `id` when `owner` opened it, marked as used at `now`; `None` for an
    /// unknown, ended or expired id and for anyone else's.
    pub fn find(&mut self, id: &str, owner: Owner, now: Instant) -> Option<SessionView> {
        self.entry(id, owner, now).map(|entry| entry.view.clone())
    }

    fn entry(&mut self, id: &str, owner: Owner, now: Instant) -> Option<&mut Entry> {
        let expired = self.entries.get(id).is_some_and(|entry| self.is_expired(entry, now));
        if expired {
            self.remove(id);
            return None;
        }
        let entry = self.entries.get_mut(id).filter(|entry| entry.owner.binding == owner.binding)?;
        entry.used = now;
        Some(entry)
    }

    /// Ends `owner`'s session `id`; its scope, so its upstream sessions can be ended too.
    pub fn close(&mut self, id: &str, owner: Owner, now: Instant) -> Option<Scope> {
        let scope = self.entry(id, owner, now)?.view.scope;
        self.remove(id);
        Some(scope)
    }

    /// The servers that listed `uri` in session `id` (or a template it expands), in the order
    /// learned; the caller picks by its targets' order.
    pub(crate) fn resource_servers(
        &mut self,
        id: &str,
        owner: Owner,
        uri: &str,
        now: Instant,
    ) -> Vec<String> {
        let Some(entry) = self.entry(id, owner, now) else { return Vec::new() };
        let mut servers = entry.resources.get(uri).cloned().unwrap_or_default();
        for (template, server) in &entry.templates {
            if !servers.contains(server) && template.matches(uri) {
                servers.push(server.clone());
            }
        }
        servers
    }

    /// Keeps a session an `initialize` opened, and remembers what a listing in a session found.
    pub fn learn(&mut self, learned: Learned, now: Instant) {
        if let Some(opening) = learned.opened {
            self.keep(opening, now);
        }
        let Some(id) = learned.session.as_deref() else { return };
        let Some(entry) = self.entries.get_mut(id) else { return };
        entry.used = now;
        let before = entry.bytes;
        // Within the table's budget, estimated: a URI with its server and the map's overhead; a
        // compiled template at sixteen times its text.
        let fits = |entry: &Entry, cost: usize| self.bytes - before + entry.bytes + cost <= self.budget;
        for (uri, server) in learned.resources {
            let cost = uri.len() + server.len() + 64;
            if uri.len() > MAX_LEARNED_LENGTH || !fits(entry, cost) {
                continue;
            }
            let known = entry.resources.len();
            if let Some(listers) = entry.resources.get_mut(&uri) {
                if !listers.contains(&server) && listers.len() < MAX_LISTERS {
                    entry.bytes += server.len() + 24;
                    listers.push(server);
                }
            } else if known < MAX_LEARNED {
                entry.bytes += cost;
                entry.resources.insert(uri, vec![server]);
            }
        }
        for (text, server) in learned.templates {
            let cost = text.len() * 16 + server.len() + 64;
            let known = entry.templates.iter().any(|(known, by)| known.text == text && *by == server);
            if known || entry.templates.len() >= MAX_TEMPLATES || !fits(entry, cost) {
                continue;
            }
            if let Some(template) = Template::compile(&text) {
                entry.bytes += cost;
                entry.templates.push((template, server));
            }
        }
        self.bytes = self.bytes - before + entry.bytes;
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
        let mut freed = 0;
        self.entries.retain(|_, entry| {
            let live = now.saturating_since(entry.used) < idle;
            if !live {
                freed += entry.bytes;
            }
            live
        });
        self.bytes = self.bytes.saturating_sub(freed);
    }
}

/// Whether `uri` is an expansion of the RFC 6570 `template` (see [`Template`]).
#[cfg(test)]
fn template_matches(template: &str, uri: &str) -> bool {
    Template::compile(template).is_some_and(|template| template.matches(uri))
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
    fn resources_remember_every_server_that_listed_them_or_whose_template_matches() {
        let mut sessions = GatewaySessions::default();
        let owner = Owner::of(&HeaderMap::new());
        let (id, _) = sessions.open([9; 32], owner, Vec::new(), Instant::ZERO);
        let learned = Learned {
            opened: None,
            session: Some(id.clone()),
            resources: vec![("file:///a".into(), "one".into()), ("file:///a".into(), "two".into())],
            templates: vec![("demo://item/{id}".into(), "two".into())],
        };
        sessions.learn(learned, Instant::ZERO);
        let servers =
            |sessions: &mut GatewaySessions, uri| sessions.resource_servers(&id, owner, uri, Instant::ZERO);
        assert_eq!(servers(&mut sessions, "file:///a"), ["one", "two"], "every lister, in the order learned");
        assert_eq!(servers(&mut sessions, "demo://item/42"), ["two"]);
        assert!(servers(&mut sessions, "demo://item/42/more").is_empty());
        assert!(servers(&mut sessions, "file:///b").is_empty());
    }

    #[test]
    fn extra_or_reworded_headers_do_not_make_a_caller_someone_else() {
        let mut sessions = GatewaySessions::new(MAX_SESSIONS_PER_OWNER + 1, Duration::from_secs(600));
        let alice = Owner::of(&headers(&[("x-mcp-gateway-key", "alice")]));
        let (kept, _) = sessions.open([0; 32], alice, Vec::new(), Instant::ZERO);
        for index in 1..=200u8 {
            // Each request looks new (its own junk Authorization, the key's scheme reworded),
            // but the admitted key is the same: one share of the table.
            let junk = format!("Bearer junk-{index}");
            let key = if index % 2 == 0 { "Bearer mallory" } else { "mallory" };
            let mallory = Owner::of(&headers(&[("x-mcp-gateway-key", key), ("authorization", &junk)]));
            sessions.open([index; 32], mallory, Vec::new(), Instant::from_millis(u64::from(index)));
        }
        assert!(sessions.find(&kept, alice, Instant::from_millis(300)).is_some());
    }

    #[test]
    fn the_table_keeps_within_its_memory_budget() {
        let mut sessions = GatewaySessions::new(100, Duration::from_secs(600));
        sessions.budget = 10_000;
        let owner = |n: u8| Owner::of(&headers(&[("x-mcp-gateway-key", &format!("key-{n}"))]));
        let (first, _) = sessions.open([1; 32], owner(1), vec![b'x'; 4_000], Instant::from_millis(1));
        let (second, _) = sessions.open([2; 32], owner(2), vec![b'x'; 4_000], Instant::from_millis(2));
        // A third would pass the budget: the oldest ends to make room.
        let (third, _) = sessions.open([3; 32], owner(3), vec![b'x'; 4_000], Instant::from_millis(3));
        assert!(sessions.find(&first, owner(1), Instant::from_millis(4)).is_none());
        assert!(sessions.find(&second, owner(2), Instant::from_millis(4)).is_some());
        assert!(sessions.bytes <= sessions.budget, "{} bytes held", sessions.bytes);
        // Listings teach nothing past the budget.
        let learned = Learned {
            opened: None,
            session: Some(third.clone()),
            resources: (0..100).map(|n| (format!("file:///{n}"), "s".to_owned())).collect(),
            templates: Vec::new(),
        };
        sessions.learn(learned, Instant::from_millis(5));
        assert!(sessions.bytes <= sessions.budget, "{} bytes held", sessions.bytes);
        assert!(
            !sessions.resource_servers(&third, owner(3), "file:///0", Instant::from_millis(6)).is_empty()
        );
        assert!(
            sessions.resource_servers(&third, owner(3), "file:///99", Instant::from_millis(6)).is_empty()
        );
        // Ending sessions gives their memory back.
        sessions.close(&second, owner(2), Instant::from_millis(7));
        sessions.close(&third, owner(3), Instant::from_millis(7));
        assert_eq!(sessions.bytes, 0);
    }

    #[test]
    fn one_owner_cannot_push_out_the_others() {
        let mut sessions = GatewaySessions::new(MAX_SESSIONS_PER_OWNER + 1, Duration::from_secs(600));
        let alice = Owner::of(&headers(&[("x-mcp-gateway-key", "alice")]));
        let mallory = Owner::of(&headers(&[("x-mcp-gateway-key", "mallory")]));
        let (kept, _) = sessions.open([0; 32], alice, Vec::new(), Instant::ZERO);
        for index in 1..=200u8 {
            sessions.open([index; 32], mallory, Vec::new(), Instant::from_millis(u64::from(index)));
        }
        assert!(sessions.find(&kept, alice, Instant::from_millis(300)).is_some());
        assert_eq!(sessions.len(), MAX_SESSIONS_PER_OWNER + 1);
    }

    #[test]
    fn templates_of_many_open_expressions_match_exactly_and_long_uris_not_at_all() {
        // The worst case for a backtracking matcher (quadratic per expression) is one pass here.
        let template = "{+a}x{+b}x{+c}x{+d}x{+e}x{+f}x{+g}x{+h}z";
        assert!(!template_matches(template, &"x".repeat(MAX_LEARNED_LENGTH)));
        assert!(template_matches(template, &format!("{}z", "x".repeat(MAX_LEARNED_LENGTH - 1))));
        assert!(!template_matches(template, &format!("{}z", "x".repeat(MAX_LEARNED_LENGTH))), "too long");
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
            ("broken://x}", "broken://x}", false),
            ("dots.{a}(b)", "dots.1(b)", true),
            ("dots.{a}(b)", "dotsx1(b)", false),
        ];
        for (template, uri, expected) in cases {
            assert_eq!(template_matches(template, uri), expected, "{template} vs {uri}");
        }
    }
}
