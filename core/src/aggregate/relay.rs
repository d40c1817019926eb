//! Server-to-client requests through the aggregating endpoint (design §4.11).
//!
//! A target may ask the caller something while it works (`sampling/createMessage`,
//! `elicitation/create`, `roots/list`) on the event stream that answers a request. Two targets
//! may pick the same JSON-RPC id, so the gateway rewrites each such request's id to
//! `{server}|{original id as JSON}` on its way out ([`StreamRewrite`]), and routes the caller's
//! response back to that server with the original id ([`inbound_response`]). Notifications and
//! responses pass unchanged, and so does every event field other than `data`.

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
#[derive(Debug)]
pub struct StreamRewrite {
    server: String,
    pending: Vec<u8>,
    /// The stream outgrew [`MAX_PENDING_EVENT`] inside one event: everything passes unchanged.
    passthrough: bool,
}

impl StreamRewrite {
    /// A rewriter for the stream of `server`.
    pub fn new(server: &str) -> Self {
        Self { server: server.to_owned(), pending: Vec::new(), passthrough: false }
    }

    /// Takes the next chunk; returns the bytes to send on now.
    pub fn push(&mut self, chunk: &[u8]) -> Vec<u8> {
        if self.passthrough {
            return chunk.to_vec();
        }
        self.pending.extend_from_slice(chunk);
        let mut out = Vec::with_capacity(self.pending.len());
        // An event ends at an empty line; `\r\n`, `\n` and `\r` all end a line. A `\r` at the end
        // of the buffer may be the first half of `\r\n`, so it waits for the next chunk.
        let mut start = 0;
        while let Some(end) = event_end(&self.pending[start..]) {
            let event = &self.pending[start..start + end];
            out.extend_from_slice(&self.rewrite(event));
            start += end;
        }
        self.pending.drain(..start);
        if self.pending.len() > MAX_PENDING_EVENT {
            self.passthrough = true;
            out.append(&mut self.pending);
        }
        out
    }

    /// One complete event (its terminating empty line included), with a request's id rewritten.
    fn rewrite(&self, event: &[u8]) -> Vec<u8> {
        let Ok(text) = std::str::from_utf8(event) else { return event.to_vec() };
        let lines: Vec<&str> = split_lines(text);
        let data: Vec<&str> = lines
            .iter()
            .filter_map(|line| line.strip_prefix("data"))
            .filter_map(|rest| match rest.strip_prefix(':') {
                Some(value) => Some(value.strip_prefix(' ').unwrap_or(value)),
                None if rest.is_empty() => Some(""),
                None => None,
            })
            .collect();
        if data.is_empty() {
            return event.to_vec();
        }
        let Ok(Value::Object(mut message)) = serde_json::from_str::<Value>(&data.join("\n")) else {
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

/// The lines of a complete event, without their line ends.
fn split_lines(text: &str) -> Vec<&str> {
    let mut lines = Vec::new();
    let mut rest = text;
    while let Some(at) = rest.find(['\r', '\n']) {
        lines.push(&rest[..at]);
        let skip = if rest[at..].starts_with("\r\n") { 2 } else { 1 };
        rest = &rest[at + skip..];
    }
    if !rest.is_empty() {
        lines.push(rest);
    }
    lines
}

/// Where the first complete event in `bytes` ends (just past its empty line), if it is complete.
fn event_end(bytes: &[u8]) -> Option<usize> {
    let mut index = 0;
    let mut line_start = 0;
    while index < bytes.len() {
        let ending = match bytes[index] {
            b'\n' => 1,
            b'\r' if index + 1 == bytes.len() => return None,
            b'\r' if bytes[index + 1] == b'\n' => 2,
            b'\r' => 1,
            _ => {
                index += 1;
                continue;
            }
        };
        let empty = index == line_start;
        index += ending;
        if empty {
            return Some(index);
        }
        line_start = index;
    }
    None
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
    fn an_endless_event_is_passed_on_unchanged_rather_than_held() {
        let mut rewrite = StreamRewrite::new("a");
        let big = vec![b'x'; MAX_PENDING_EVENT + 1];
        assert_eq!(rewrite.push(&big).len(), big.len());
        assert_eq!(rewrite.push(b"data: {}\n\n"), b"data: {}\n\n");
    }
}
