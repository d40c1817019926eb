//! Server-to-client requests through the aggregating endpoint (design §4.11).
//!
//! A target may ask the caller something while it works (`sampling/createMessage`,
//! `elicitation/create`, `roots/list`) on the event stream that answers a request. Two targets
//! may pick the same JSON-RPC id, so the gateway rewrites each such request's id to
//! `{server}|{original id as JSON}` on its way out ([`StreamRewrite`]), and routes the caller's
//! response back to that server with the original id ([`inbound_response`]). Notifications and
//! responses pass unchanged, and so does every event field other than `data` (line ends are
//! written as `\n`).

use serde_json::{Map, Value};

/// What joins the server's name and the original id in a rewritten id. Server names are URL path
/// segments and header tokens, so they never contain it.
pub const ID_SEPARATOR: char = '|';

/// The most bytes held while waiting for the end of an event; past it the stream is passed on
/// unchanged (an event that large is no request the gateway could route anyway).
pub const MAX_PENDING_EVENT: usize = 4 * 1024 * 1024;

/// The id the caller sees for `server`'s request `id`.
pub fn outbound_id(server: &str, id: &Value) -> Value {
    Value::String(format!("{server}{ID_SEPARATOR}{id}"))
}

/// The target a caller's JSON-RPC response goes to, and the body to send it: the response with
/// the id its target gave. `None` when the id is not one the gateway rewrote for one of
/// `servers`.
pub fn inbound_response<S: AsRef<str>>(
    message: &Map<String, Value>,
    servers: &[S],
) -> Option<(usize, Vec<u8>)> {
    let rewritten = message.get("id")?.as_str()?;
    let (server, original) = rewritten.split_once(ID_SEPARATOR)?;
    let target = servers.iter().position(|name| name.as_ref() == server)?;
    let original: Value = serde_json::from_str(original).ok()?;
    if !routable_id(&original) {
        return None;
    }
    let mut message = message.clone();
    message.insert("id".into(), original);
    Some((target, Value::Object(message).to_string().into_bytes()))
}

/// Whether an id survives being written into a rewritten id and read back exactly: a string or
/// an integer (a fraction may not, as JSON numbers are read into binary floats).
fn routable_id(id: &Value) -> bool {
    id.is_string() || id.is_i64() || id.is_u64()
}

/// Rewrites the ids of server-to-client requests in one target's `text/event-stream`, chunk by
/// chunk as it arrives: complete events go out rewritten, a partial one waits for its end.
///
/// Line ends are read as the event-stream format defines them (`\r\n`, `\r` or `\n`) and
/// written as `\n`, so a `\r` ending one chunk ends its line at once. An event that outgrows
/// [`MAX_PENDING_EVENT`] is passed on as it arrives, unchanged, up to its end; the events after
/// it are read again.
#[derive(Debug)]
pub struct StreamRewrite {
    server: String,
    /// The current event so far, line ends as `\n`.
    pending: Vec<u8>,
    /// How much of `pending` has been searched for the end of the event.
    scanned: usize,
    /// The last byte read was a `\r`: a `\n` right after it belongs to the same line end.
    after_cr: bool,
    /// Passing on an oversized event; the last byte passed was a line end.
    oversized: Option<bool>,
}

impl StreamRewrite {
    /// A rewriter for the stream of `server`.
    pub fn new(server: &str) -> Self {
        Self { server: server.to_owned(), pending: Vec::new(), scanned: 0, after_cr: false, oversized: None }
    }

    /// Takes the next chunk; returns the bytes to send on now.
    pub fn push(&mut self, chunk: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        for &byte in chunk {
            let byte = match (byte, self.after_cr) {
                (b'\n', true) => {
                    self.after_cr = false;
                    continue;
                }
                (b'\r', _) => {
                    self.after_cr = true;
                    b'\n'
                }
                (byte, _) => {
                    self.after_cr = false;
                    byte
                }
            };
            if let Some(line_end) = self.oversized {
                out.push(byte);
                // The oversized event ends at an empty line; the next one is read again.
                self.oversized = if byte == b'\n' && line_end { None } else { Some(byte == b'\n') };
                continue;
            }
            self.pending.push(byte);
        }
        self.drain_events(&mut out);
        out
    }

    /// Sends on every complete event in `pending`, rewritten; an oversized partial one as it is.
    /// Each byte is searched once: the search resumes where the last chunk's ended.
    fn drain_events(&mut self, out: &mut Vec<u8>) {
        let mut start = 0;
        for at in self.scanned..self.pending.len() {
            // An event ends with an empty line: a line end right after another, or first.
            if self.pending[at] == b'\n' && (at == start || self.pending[at - 1] == b'\n') {
                out.extend_from_slice(&self.rewrite(&self.pending[start..=at]));
                start = at + 1;
            }
        }
        self.pending.drain(..start);
        self.scanned = self.pending.len();
        if self.pending.len() > MAX_PENDING_EVENT {
            self.oversized = Some(self.pending.last() == Some(&b'\n'));
            out.append(&mut self.pending);
            self.scanned = 0;
        }
    }

    /// One complete event (its terminating empty line included), with a request's id rewritten.
    fn rewrite(&self, event: &[u8]) -> Vec<u8> {
        let Ok(text) = std::str::from_utf8(event) else { return event.to_vec() };
        let lines: Vec<&str> = text.split('\n').collect();
        let events = crate::sse::parse_events(text);
        let [parsed] = events.as_slice() else { return event.to_vec() };
        let Ok(Value::Object(mut message)) = serde_json::from_str::<Value>(&parsed.data) else {
            return event.to_vec();
        };
        let is_request =
            message.get("method").is_some_and(Value::is_string) && message.get("id").is_some_and(routable_id);
        if !is_request {
            // A notification, a response, or a request whose id would not survive the round
            // trip (a fraction, which JSON-RPC discourages): passed as it is; an answer to the
            // last is refused, so the target's request times out rather than being misrouted.
            return event.to_vec();
        }
        let id = message.get("id").cloned().unwrap_or(Value::Null);
        message.insert("id".into(), outbound_id(&self.server, &id));
        let mut out = String::with_capacity(event.len() + self.server.len() + 8);
        for line in lines.iter().filter(|line| !line.is_empty() && !is_data_line(line)) {
            out.push_str(line);
            out.push('\n');
        }
        out.push_str("data: ");
        out.push_str(&Value::Object(message).to_string());
        out.push_str("\n\n");
        out.into_bytes()
    }
}

fn is_data_line(line: &str) -> bool {
    line == "data" || line.starts_with("data:")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn rewritten(server: &str, chunks: &[&str]) -> String {
        let mut rewrite = StreamRewrite::new(server);
        let out: Vec<u8> = chunks.iter().flat_map(|chunk| rewrite.push(chunk.as_bytes())).collect();
        String::from_utf8(out).unwrap_or_default()
    }

    #[test]
    fn requests_get_the_servers_id_and_everything_else_passes_unchanged() {
        let stream = concat!(
            ": keep-alive\n\n",
            "event: message\nid: 7\ndata: {\"jsonrpc\":\"2.0\",\"method\":\"notifications/progress\",\"params\":{}}\n\n",
            "event: message\nid: 8\ndata: {\"jsonrpc\":\"2.0\",\"id\":5,\"method\":\"sampling/createMessage\",\"params\":{}}\n\n",
            "data: {\"jsonrpc\":\"2.0\",\"id\":1,\"result\":{}}\n\n",
        );
        let out = rewritten("everything", &[stream]);
        let events: Vec<&str> = out.split("\n\n").collect();
        assert_eq!(events[0], ": keep-alive");
        assert!(events[1].contains("notifications/progress") && !events[1].contains("everything|"));
        assert!(events[2].starts_with("event: message\nid: 8\ndata: "), "{}", events[2]);
        let request: Value =
            serde_json::from_str(events[2].rsplit("data: ").next().unwrap_or_default()).unwrap_or_default();
        assert_eq!(request["id"], "everything|5");
        assert_eq!(request["method"], "sampling/createMessage");
        assert_eq!(
            events[3], "data: {\"jsonrpc\":\"2.0\",\"id\":1,\"result\":{}}",
            "the answer keeps the caller's id"
        );
    }

    #[test]
    fn events_split_anywhere_across_chunks_come_out_the_same() {
        let stream = "event: message\r\ndata: {\"jsonrpc\":\"2.0\",\"id\":\"x\",\"method\":\"roots/list\"}\r\n\r\ndata: {\"jsonrpc\":\"2.0\",\"method\":\"n\"}\r\r";
        let whole = rewritten("a", &[stream]);
        assert!(whole.contains(r#""id":"a|\"x\"""#), "{whole}");
        for split in 1..stream.len() {
            let (head, tail) = stream.split_at(split);
            assert_eq!(rewritten("a", &[head, tail]), whole, "split at {split}");
        }
    }

    #[test]
    fn a_response_is_routed_back_by_its_rewritten_id() {
        let servers = ["a", "b"];
        for original in [json!(5), json!("x")] {
            let Value::String(id) = outbound_id("b", &original) else { panic!("a string id") };
            let message = json!({"jsonrpc": "2.0", "id": id, "result": {"ok": true}});
            let (target, body) =
                inbound_response(message.as_object().unwrap_or(&Map::new()), &servers).unwrap_or_default();
            assert_eq!(target, 1);
            let sent: Value = serde_json::from_slice(&body).unwrap_or_default();
            assert_eq!((sent["id"].clone(), sent["result"]["ok"].clone()), (original, json!(true)));
        }
        for id in [json!(5), json!("c|1"), json!("a|{}"), json!("a"), json!("a|not json"), json!("a|1.5")] {
            let message = json!({"jsonrpc": "2.0", "id": id, "result": {}});
            assert!(inbound_response(message.as_object().unwrap_or(&Map::new()), &servers).is_none(), "{id}");
        }
    }

    #[test]
    fn an_oversized_event_is_passed_on_as_it_comes_and_the_next_ones_are_rewritten() {
        let mut rewrite = StreamRewrite::new("a");
        let big = vec![b'x'; MAX_PENDING_EVENT + 1];
        assert_eq!(rewrite.push(&big).len(), big.len());
        assert_eq!(rewrite.push(b"yy\n"), b"yy\n", "still the oversized event: passed on at once");
        let request = b"\ndata: {\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"roots/list\"}\n\n";
        let out = String::from_utf8(rewrite.push(request)).unwrap_or_default();
        assert!(out.starts_with('\n') && out.contains(r#""id":"a|1""#), "{out}");
    }

    #[test]
    fn a_stream_ending_in_bare_carriage_returns_delivers_its_last_event() {
        let out = rewritten("a", &["data: {\"jsonrpc\":\"2.0\",\"id\":1,\"result\":{}}\r\r"]);
        assert_eq!(out, "data: {\"jsonrpc\":\"2.0\",\"id\":1,\"result\":{}}\n\n");
    }
}
