//! Fuzz harness for the aggregating endpoints: the caller's JSON-RPC or REST body, the
//! composite cursor, and the upstream answers (JSON or SSE) merged into one response.

use http::{HeaderValue, Response, StatusCode, header};
use serde_json::Value;

use crate::aggregate::{
    Answer, Endpoint, GatewaySessions, Owner, Plan, Request, Sessions, UpstreamSession, check_message, plan,
    plan_in, prefixed_name, route_tool, session_from_initialize,
};
use crate::machine::Instant;

/// Target names that share prefixes, so routing by prefix has something to get wrong.
const SERVERS: [&str; 3] = ["a", "a-b", "github"];

/// Input: byte 0 picks the endpoint (bits 0–1), delegation (bit 2), SSE answers (bit 3), gateway
/// sessions (bit 4: plan with a session table, bit 5: the request names the session open in it,
/// bit 6: `DELETE`, bit 7: `GET`); the rest splits at NUL bytes into the caller's body and one upstream answer per gathered call (a
/// last line `#value` gives the answer an `Mcp-Session-Id`).
/// Invariants: nothing panics; a body [`check_message`] accepts as one object says `jsonrpc: 2.0`; a forwarded call goes to a target and names the tool or prompt whose
/// prefixed name the caller sent (a resource request is sent as it came); every answer is JSON (or an empty 202); every listed tool name
/// routes back to a target; an upstream's challenge is relayed only when delegated; a session an
/// answer opens has a usable id and protocol version; with gateway sessions, a session is found
/// only by its owner, and what a listing teaches routes a resource only to a target.
pub fn aggregate(data: &[u8]) {
    let Some((&selector, rest)) = data.split_first() else { return };
    let endpoint = match selector & 3 {
        _ if selector & 64 != 0 => Endpoint::McpEnd,
        _ if selector & 128 != 0 => Endpoint::McpStream,
        0 => Endpoint::Mcp,
        1 => Endpoint::RestList,
        _ => Endpoint::RestCall,
    };
    let stateful = selector & 16 != 0;
    let owner = Owner::of(&http::HeaderMap::new());
    let mut table = GatewaySessions::default();
    let (open, _) = table.open([5; 32], owner, Vec::new(), Instant::ZERO);
    let session = (selector & 32 != 0).then_some(open.as_str());
    let delegated = selector & 4 != 0;
    let mut parts = rest.split(|byte| *byte == 0);
    let body = parts.next().unwrap_or_default();
    let servers: Vec<String> = SERVERS.iter().map(|name| (*name).to_owned()).collect();
    if let Err(refused) = check_message(body) {
        assert_eq!(refused.status(), StatusCode::BAD_REQUEST, "a refused body is a 400");
        assert!(serde_json::from_slice::<Value>(refused.body()).is_ok(), "a refusal is JSON");
    } else if let Ok(Value::Object(message)) = serde_json::from_slice::<Value>(body) {
        assert_eq!(
            message.get("jsonrpc").and_then(Value::as_str),
            Some("2.0"),
            "accepted without jsonrpc 2.0"
        );
    }
    let cursor = std::str::from_utf8(body).ok().filter(|_| endpoint == Endpoint::RestList);
    let request = Request { endpoint, servers: &servers, delegated, cursor, session, owner };
    let planned = if stateful {
        plan_in(
            &request,
            body,
            Sessions { table: &mut table, now: Instant::ZERO, random: &mut || Some([6; 32]) },
        )
    } else {
        plan(&request, body)
    };
    // Another caller never finds the session.
    let stranger = Owner::of(&http::HeaderMap::from_iter([(
        http::header::AUTHORIZATION,
        HeaderValue::from_static("Bearer stranger"),
    )]));
    assert!(table.find(&open, stranger, Instant::ZERO).is_none(), "a session found by another owner");
    match planned {
        Plan::Respond(response) => check_response(&response, &servers, delegated),
        Plan::Stream(calls) => {
            for call in calls {
                assert!(call.target < servers.len(), "a stream without a target");
                let listens =
                    call.session.is_some_and(|use_| use_.mode == crate::aggregate::SessionMode::Listen);
                assert!(listens, "a stream outside a session");
            }
        }
        Plan::Forward(call) => {
            let server = servers.get(call.target).expect("a forwarded call has a target"); // ok: a fuzz invariant; a panic is the finding
            let sent: Value = serde_json::from_slice(&call.body).expect("the forwarded body is JSON"); // ok: a fuzz invariant; a panic is the finding
            let asked: Value = serde_json::from_slice(body).expect("a forwarded call came as JSON"); // ok: a fuzz invariant; a panic is the finding
            assert_eq!(sent["method"], asked["method"], "a forward keeps the method");
            // Where the name lives: a tool or prompt is named in params, a prompt completion in
            // its ref; resource requests are not renamed (design §4.11).
            let named = match sent["method"].as_str() {
                Some("tools/call" | "prompts/get") => {
                    Some(("/params/name", "the forwarded call names a tool"))
                }
                Some("completion/complete") if sent["params"]["ref"]["type"] == "ref/prompt" => {
                    Some(("/params/ref/name", "the forwarded completion names a prompt"))
                }
                _ => None,
            };
            match named {
                Some((pointer, why)) => {
                    let own = sent.pointer(pointer).and_then(Value::as_str).expect(why); // ok: a fuzz invariant; a panic is the finding
                    let listed = asked.pointer(pointer).and_then(Value::as_str).expect("the caller named it"); // ok: a fuzz invariant; a panic is the finding
                    assert_eq!(prefixed_name(server, own), listed, "the call went to another tool or prompt");
                }
                None => assert_eq!(sent, asked, "a resource request is sent as it came"),
            }
        }
        Plan::Gather(gather) => {
            for call in gather.calls() {
                assert!(call.target < servers.len(), "a gathered call without a target");
                let ends =
                    call.session.as_ref().is_some_and(|use_| use_.mode == crate::aggregate::SessionMode::End);
                assert!(
                    ends || serde_json::from_slice::<Value>(&call.body).is_ok(),
                    "an upstream body that is not JSON"
                );
            }
            let answers = parts
                .map(|bytes| {
                    let mut response = Response::new(bytes.to_vec());
                    let kind = if selector & 8 != 0 { "text/event-stream" } else { "application/json" };
                    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(kind));
                    if bytes.first() == Some(&b'!') {
                        *response.status_mut() = StatusCode::UNAUTHORIZED;
                    }
                    // A last line `#<value>` becomes the answer's `Mcp-Session-Id`.
                    let last = bytes.rsplit(|byte| *byte == b'\n').next().unwrap_or_default();
                    if let Some(id) = last.strip_prefix(b"#").and_then(|id| HeaderValue::from_bytes(id).ok())
                    {
                        response.headers_mut().insert("mcp-session-id", id);
                    }
                    // The same bytes as an `initialize` answer: any session it opens is usable.
                    if let Some(UpstreamSession::Session { id, protocol_version }) =
                        session_from_initialize(&response)
                    {
                        assert!(
                            HeaderValue::from_str(&id).is_ok() && !id.is_empty(),
                            "an unusable session id"
                        );
                        assert!(
                            HeaderValue::from_str(&protocol_version).is_ok(),
                            "an unusable protocol version"
                        );
                    }
                    Answer::Upstream(response)
                })
                .collect();
            let (response, learned) = gather.finish_learning(answers);
            check_response(&response, &servers, delegated);
            table.learn(learned, Instant::ZERO);
            if let Ok(uri) = std::str::from_utf8(body) {
                for server in table.resource_servers(&open, owner, uri, Instant::ZERO) {
                    assert!(servers.contains(&server), "a resource learned from no target");
                }
            }
        }
    }
}

fn check_response(response: &Response<Vec<u8>>, servers: &[String], delegated: bool) {
    if response.status() == StatusCode::ACCEPTED || response.status() == StatusCode::NO_CONTENT {
        assert!(response.body().is_empty(), "a 202 or 204 with a body");
        return;
    }
    assert!(
        delegated || !response.headers().contains_key(header::WWW_AUTHENTICATE),
        "an upstream challenge relayed without delegation"
    );
    let body: Value = serde_json::from_slice(response.body()).expect("every answer is JSON"); // ok: a fuzz invariant; a panic is the finding
    let tools = body.get("tools").or_else(|| body.get("result").and_then(|result| result.get("tools")));
    for tool in tools.and_then(Value::as_array).into_iter().flatten() {
        let name = tool["name"].as_str().expect("a listed tool has a name"); // ok: a fuzz invariant; a panic is the finding
        assert!(route_tool(name, servers).is_ok(), "listed `{name}` routes nowhere");
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn sample_inputs() {
        super::aggregate(
            b"\x00{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"tools/call\",\"params\":{\"name\":\"a-b-c\"}}",
        );
        super::aggregate(b"\x00{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"tools/list\"}\x00{\"jsonrpc\":\"2.0\",\"id\":1,\"result\":{\"tools\":[{\"name\":\"b-x\"}],\"nextCursor\":\"n\"}}\x00!\x00");
        super::aggregate(b"\x01");
        super::aggregate(b"\x02{\"name\":\"github-search\",\"arguments\":{}}\x00{\"jsonrpc\":\"2.0\",\"id\":1,\"result\":{}}");
        super::aggregate(b"\x0c{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"tools/list\"}\x00!\x00event: message\ndata: {}\n\n");
        super::aggregate(b"\x30{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"resources/templates/list\"}\x00{\"jsonrpc\":\"2.0\",\"id\":1,\"result\":{\"resourceTemplates\":[{\"uriTemplate\":\"{+x}\"}]}}");
        super::aggregate(b"\x10{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"initialize\",\"params\":{}}\x00{\"jsonrpc\":\"2.0\",\"id\":1,\"result\":{\"capabilities\":{\"tools\":{}}}}");
        super::aggregate(b"\x70");
    }
}
