//! A `text/event-stream` parser for MCP's streamable HTTP responses.
//!
//! An MCP server may answer a POST with one JSON body or with a stream of server-sent events whose
//! `data` fields carry JSON-RPC messages. This parser follows the WHATWG event-stream rules that
//! matter here (`data` lines joined with `\n`, comments and unknown fields ignored, `\r\n`, `\r` or
//! `\n` line ends) and works on a complete body: streaming is the adapter's job.

/// Whether a message's `Content-Type` says it is an event stream (any parameters, any case).
pub(crate) fn is_event_stream(headers: &http::HeaderMap) -> bool {
    headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .is_some_and(|kind| kind.trim_start().to_ascii_lowercase().starts_with("text/event-stream"))
}

/// One dispatched event.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Event {
    /// The `event` field; `message` when absent.
    pub event: String,
    /// The `data` lines joined with `\n`.
    pub data: String,
    /// The last `id` field seen, if any.
    pub id: Option<String>,
}

/// Parses a complete event stream into its events, in order.
pub(crate) fn parse_events(body: &str) -> Vec<Event> {
    let body = body.strip_prefix('\u{feff}').unwrap_or(body);
    let mut events = Vec::new();
    let mut event_type = String::new();
    let mut data: Option<String> = None;
    let mut last_id: Option<String> = None;
    for line in body.split("\r\n").flat_map(|line| line.split(['\n', '\r'])) {
        if line.is_empty() {
            if let Some(data) = data.take() {
                let event = if event_type.is_empty() {
                    "message".to_owned()
                } else {
                    std::mem::take(&mut event_type)
                };
                events.push(Event { event, data, id: last_id.clone() });
            }
            event_type.clear();
            continue;
        }
        if line.starts_with(':') {
            continue;
        }
        let (field, value) = match line.split_once(':') {
            Some((field, value)) => (field, value.strip_prefix(' ').unwrap_or(value)),
            None => (line, ""),
        };
        match field {
            "event" => event_type = value.to_owned(),
            "data" => match &mut data {
                Some(existing) => {
                    existing.push('\n');
                    existing.push_str(value);
                }
                None => data = Some(value.to_owned()),
            },
            "id" if !value.contains('\0') => last_id = Some(value.to_owned()),
            _ => {}
        }
    }
    // A stream that ends without a blank line still delivers its last complete event.
    if let Some(data) = data {
        let event = if event_type.is_empty() { "message".to_owned() } else { event_type };
        events.push(Event { event, data, id: last_id });
    }
    events
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn joins_data_lines_and_ignores_comments() {
        let body = ": keep-alive\nevent: message\nid: 7\ndata: {\"a\":\ndata: 1}\n\ndata:{\"b\":2}\r\n\r\n";
        let events = parse_events(body);
        assert_eq!(events.len(), 2);
        assert_eq!(events[0].data, "{\"a\":\n1}");
        assert_eq!(events[0].id.as_deref(), Some("7"));
        assert_eq!(events[1].event, "message");
        assert_eq!(events[1].data, "{\"b\":2}");
    }

    #[test]
    fn unterminated_last_event_and_empty_streams() {
        assert_eq!(parse_events("data: x").len(), 1);
        assert!(parse_events("").is_empty());
        assert!(parse_events("event: ping\n\n").is_empty());
    }
}
