//! Fuzz harness for the aggregating endpoint's event-stream rewrite: a target's
//! `text/event-stream`, cut into chunks anywhere, and the caller's answers to its requests.

use serde_json::{Map, Value};

use crate::aggregate::{StreamRewrite, inbound_response, outbound_id};

/// Input: byte 0 says where to cut the rest into two chunks (as a fraction of its length); the
/// rest is the stream. Invariants: nothing panics; the output does not depend on where the stream
/// was cut; every request id in the output that routes back routes to this server, with an id
/// that is written the same way again.
pub fn event_stream(data: &[u8]) {
    let Some((&cut, stream)) = data.split_first() else { return };
    let at = stream.len() * usize::from(cut) / 255;
    let whole = StreamRewrite::new("srv").push(stream);
    let mut chunked = StreamRewrite::new("srv");
    let mut pieces = chunked.push(&stream[..at]);
    pieces.extend(chunked.push(&stream[at..]));
    if stream.len() <= crate::aggregate::MAX_PENDING_EVENT {
        assert_eq!(whole, pieces, "the rewrite depends on where the stream was cut");
    }
    let Ok(text) = std::str::from_utf8(&whole) else { return };
    for line in text.lines() {
        let Some(data) = line.strip_prefix("data: ") else { continue };
        let Ok(Value::Object(message)) = serde_json::from_str::<Value>(data) else { continue };
        let is_request = message.get("method").is_some_and(Value::is_string)
            && message.get("id").is_some_and(|id| id.is_string() || id.is_i64() || id.is_u64());
        if !is_request {
            continue;
        }
        let id = message.get("id").and_then(Value::as_str).unwrap_or_default();
        // The ids the rewrite writes: `srv|` and a string or integer in JSON's own form. (A
        // target's own id in an event the rewrite could not read passes as it was, any shape.)
        let Some(written) = id.strip_prefix("srv|") else { continue };
        let Ok(original) = serde_json::from_str::<Value>(written) else { continue };
        if !(original.is_string() || original.is_i64() || original.is_u64())
            || serde_json::to_string(&original).ok().as_deref() != Some(written)
        {
            continue;
        }
        let mut answer = Map::new();
        answer.insert("jsonrpc".into(), Value::from("2.0"));
        answer.insert("id".into(), Value::from(id));
        answer.insert("result".into(), Value::Object(Map::new()));
        let (target, body) = inbound_response(&answer, &["other", "srv"]).expect("a written id routes back"); // ok: a fuzz invariant; a panic is the finding
        assert_eq!(target, 1, "routed to another server");
        let sent: Value = serde_json::from_slice(&body).expect("the answer sent back is JSON"); // ok: a fuzz invariant; a panic is the finding
        assert_eq!(sent["id"], original, "the target gets another id than it sent");
        assert_eq!(outbound_id("srv", &sent["id"]), Value::from(id), "the id does not round-trip");
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn sample_inputs() {
        super::event_stream(
            b"\x80event: message\ndata: {\"jsonrpc\":\"2.0\",\"id\":3,\"method\":\"roots/list\"}\n\n",
        );
        super::event_stream(
            b"\x10data: {\"jsonrpc\":\"2.0\",\"id\":\"a|b\",\"method\":\"x\"}\r\n\r\ndata\n\n: c\r\r",
        );
        super::event_stream(b"\xffdata: {\"jsonrpc\"");
    }
}
