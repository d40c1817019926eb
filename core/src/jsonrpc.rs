//! The one JSON-RPC 2.0 validator every gateway route uses (design §4.11).
//!
//! A body that is not JSON-RPC 2.0 is refused with HTTP 400 before any credential is spent on it.
//! The single-server route and the aggregating route once judged bodies differently (a numeric
//! `method` reached the upstream through one and not the other); both now call [`validate`], which
//! reads a message's envelope without building the rest (parameters and results are skipped), and
//! says what kind of message it is.

use serde::Deserialize;
use serde::de::{self, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::Value;

/// What kind of JSON-RPC message a valid body holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Shape {
    /// A request: a string `method` and an `id`.
    Request {
        /// The method.
        method: String,
        /// The id (a string or an integer).
        id: Value,
    },
    /// A notification: a string `method` and no `id`.
    Notification {
        /// The method.
        method: String,
    },
    /// A response: `result` or `error`, and an `id`.
    Response,
    /// A non-empty batch of valid messages (clients of the 2025-03-26 revision send them).
    Batch,
}

/// Why a body is not JSON-RPC 2.0.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum JsonRpcError {
    /// The body is not JSON (JSON-RPC code -32700).
    #[error("the body is not JSON: {0}")]
    Parse(String),
    /// The body is JSON but not a valid JSON-RPC 2.0 message (code -32600).
    #[error("the body is not a JSON-RPC 2.0 message: {why}")]
    Invalid {
        /// The message's id when it had a usable one, so the error can answer it.
        id: Option<Value>,
        /// What is wrong.
        why: String,
    },
}

/// How much of a serde error message is quoted back.
const QUOTE_LIMIT: usize = 200;

fn quote(text: &str) -> String {
    text.chars().take(QUOTE_LIMIT).collect()
}

/// Checks that `body` is one JSON-RPC 2.0 message or a non-empty batch of them, and says which.
pub fn validate(body: &[u8]) -> Result<Shape, JsonRpcError> {
    let trimmed =
        body.iter().position(|byte| !byte.is_ascii_whitespace()).map_or(&[][..], |start| &body[start..]);
    let read = |error: serde_json::Error| {
        if error.is_syntax() || error.is_eof() {
            JsonRpcError::Parse(quote(&error.to_string()))
        } else {
            JsonRpcError::Invalid { id: None, why: quote(&error.to_string()) }
        }
    };
    if trimmed.first() == Some(&b'[') {
        let batch: Vec<Envelope> = serde_json::from_slice(body).map_err(read)?;
        if batch.is_empty() {
            return Err(JsonRpcError::Invalid { id: None, why: "an empty batch".into() });
        }
        for envelope in batch {
            envelope.shape()?;
        }
        return Ok(Shape::Batch);
    }
    let envelope: Envelope = serde_json::from_slice(body).map_err(read)?;
    envelope.shape()
}

/// A JSON value's kind, with short strings and integers kept (they are what the rules read).
#[derive(Clone, Debug, PartialEq)]
enum Field {
    Null,
    Bool,
    Integer(Value),
    Float,
    String(String),
    LongString,
    Array,
    Object,
}

/// Strings longer than this are only noted as strings (a `method` or `id` is never this long).
const KEPT_STRING: usize = 1024;

impl<'de> Deserialize<'de> for Field {
    fn deserialize<D: de::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Kind;
        impl<'de> Visitor<'de> for Kind {
            type Value = Field;
            fn expecting(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                formatter.write_str("any JSON value")
            }
            fn visit_unit<E>(self) -> Result<Field, E> {
                Ok(Field::Null)
            }
            fn visit_bool<E>(self, _: bool) -> Result<Field, E> {
                Ok(Field::Bool)
            }
            fn visit_i64<E>(self, value: i64) -> Result<Field, E> {
                Ok(Field::Integer(value.into()))
            }
            fn visit_u64<E>(self, value: u64) -> Result<Field, E> {
                Ok(Field::Integer(value.into()))
            }
            fn visit_f64<E>(self, _: f64) -> Result<Field, E> {
                Ok(Field::Float)
            }
            fn visit_str<E>(self, value: &str) -> Result<Field, E> {
                Ok(if value.len() <= KEPT_STRING {
                    Field::String(value.to_owned())
                } else {
                    Field::LongString
                })
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Field, A::Error> {
                while seq.next_element::<IgnoredAny>()?.is_some() {}
                Ok(Field::Array)
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Field, A::Error> {
                while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                Ok(Field::Object)
            }
        }
        deserializer.deserialize_any(Kind)
    }
}

/// A present member, `null` included (serde would read a `null` as absent).
fn present<'de, D: de::Deserializer<'de>>(deserializer: D) -> Result<Option<Field>, D::Error> {
    Field::deserialize(deserializer).map(Some)
}

/// The members of one message the rules read; a repeated member is an error (serde refuses
/// duplicate fields), since two readers could each take a different one.
#[derive(Deserialize)]
struct Envelope {
    #[serde(default, deserialize_with = "present")]
    jsonrpc: Option<Field>,
    #[serde(default, deserialize_with = "present")]
    id: Option<Field>,
    #[serde(default, deserialize_with = "present")]
    method: Option<Field>,
    #[serde(default, deserialize_with = "present")]
    params: Option<Field>,
    #[serde(default, deserialize_with = "present")]
    result: Option<Field>,
    #[serde(default, deserialize_with = "present")]
    error: Option<Field>,
}

impl Envelope {
    fn shape(self) -> Result<Shape, JsonRpcError> {
        let usable_id = match &self.id {
            Some(Field::String(id)) => Some(Value::String(id.clone())),
            Some(Field::Integer(id)) => Some(id.clone()),
            _ => None,
        };
        let invalid = |why: &str| JsonRpcError::Invalid { id: usable_id.clone(), why: why.to_owned() };
        if self.jsonrpc != Some(Field::String("2.0".to_owned())) {
            return Err(invalid("`jsonrpc` must be \"2.0\""));
        }
        match self.method {
            Some(Field::String(method)) => {
                if self.result.is_some() || self.error.is_some() {
                    return Err(invalid("a request carries no `result` or `error`"));
                }
                if !matches!(self.params, None | Some(Field::Null | Field::Object | Field::Array)) {
                    return Err(invalid("`params` must be an object or an array"));
                }
                match (self.id, usable_id.clone()) {
                    (None, _) => Ok(Shape::Notification { method }),
                    (Some(_), Some(id)) => Ok(Shape::Request { method, id }),
                    (Some(_), None) => Err(invalid("`id` must be a string or an integer")),
                }
            }
            Some(_) => Err(invalid("`method` must be a string")),
            None => {
                if self.result.is_some() == self.error.is_some() {
                    return Err(invalid(
                        "a message needs a string `method`, or exactly one of `result` and `error`",
                    ));
                }
                match self.id {
                    Some(Field::String(_) | Field::Integer(_)) => Ok(Shape::Response),
                    // JSON-RPC answers a request whose id could not be read with `"id": null`.
                    Some(Field::Null) if self.error.is_some() => Ok(Shape::Response),
                    _ => Err(invalid("a response needs the `id` of the request it answers")),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn shape(body: &str) -> Result<Shape, JsonRpcError> {
        validate(body.as_bytes())
    }

    #[test]
    fn valid_messages_have_a_shape() {
        assert_eq!(
            shape(r#"{"jsonrpc":"2.0","id":1,"method":"tools/list"}"#),
            Ok(Shape::Request { method: "tools/list".into(), id: json!(1) })
        );
        assert_eq!(
            shape(r#" {"jsonrpc":"2.0","id":"a","method":"x","params":{"k":[1,{"d":2}]}}"#),
            Ok(Shape::Request { method: "x".into(), id: json!("a") })
        );
        assert_eq!(
            shape(r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#),
            Ok(Shape::Notification { method: "notifications/initialized".into() })
        );
        assert_eq!(shape(r#"{"jsonrpc":"2.0","id":1,"result":{}}"#), Ok(Shape::Response));
        assert_eq!(shape(r#"{"jsonrpc":"2.0","id":null,"error":{"code":1}}"#), Ok(Shape::Response));
        assert_eq!(
            shape(r#"[{"jsonrpc":"2.0","id":1,"method":"ping"},{"jsonrpc":"2.0","method":"n"}]"#),
            Ok(Shape::Batch)
        );
    }

    #[test]
    fn malformed_bodies_are_refused_with_their_kind() {
        for body in ["", "{", "[", "not json", "{\"jsonrpc\":\"2.0\",}"] {
            assert!(matches!(shape(body), Err(JsonRpcError::Parse(_))), "{body}");
        }
        for body in [
            "42",
            "null",
            "[]",
            r#"{"jsonrpc":"2.0","id":1,"method":5}"#,
            r#"{"jsonrpc":"2.0","id":1,"method":null}"#,
            r#"{"jsonrpc":"2.0","id":1,"method":["x"]}"#,
            r#"{"jsonrpc":"1.0","id":1,"method":"ping"}"#,
            r#"{"jsonrpc":2.0,"id":1,"method":"ping"}"#,
            r#"{"id":1,"method":"ping"}"#,
            r#"{"jsonrpc":"2.0","id":{},"method":"ping"}"#,
            r#"{"jsonrpc":"2.0","id":1.5,"method":"ping"}"#,
            r#"{"jsonrpc":"2.0","id":null,"method":"ping"}"#,
            r#"{"jsonrpc":"2.0","id":true,"method":"ping"}"#,
            r#"{"jsonrpc":"2.0","id":1,"method":"ping","params":"x"}"#,
            r#"{"jsonrpc":"2.0","id":1,"method":"ping","result":{}}"#,
            r#"{"jsonrpc":"2.0","id":1}"#,
            r#"{"jsonrpc":"2.0","id":1,"result":{},"error":{}}"#,
            r#"{"jsonrpc":"2.0","result":{}}"#,
            r#"{"jsonrpc":"2.0","id":null,"result":{}}"#,
            r#"{"jsonrpc":"2.0","id":1,"id":2,"method":"ping"}"#,
            r#"{"jsonrpc":"2.0","method":"a","method":"b"}"#,
            r#"[{"jsonrpc":"2.0","id":1,"method":"ping"},{"jsonrpc":"2.0","id":1,"method":5}]"#,
            r#"[1]"#,
        ] {
            assert!(matches!(shape(body), Err(JsonRpcError::Invalid { .. })), "{body}");
        }
    }

    #[test]
    fn a_parse_error_says_where_in_few_words() {
        let Err(JsonRpcError::Parse(why)) = shape(&format!("{{\"a\": {}", "[".repeat(50))) else {
            panic!("a parse error");
        };
        assert!(why.contains("line 1"), "{why}");
        assert!(why.chars().count() <= QUOTE_LIMIT);
        let Err(JsonRpcError::Invalid { why, .. }) = shape("42") else { panic!("invalid") };
        assert!(why.contains("invalid type"), "{why}");
    }

    #[test]
    fn an_invalid_message_keeps_its_id_for_the_answer() {
        assert_eq!(
            shape(r#"{"jsonrpc":"2.0","id":7,"method":5}"#),
            Err(JsonRpcError::Invalid { id: Some(json!(7)), why: "`method` must be a string".into() })
        );
        let long = "x".repeat(KEPT_STRING + 1);
        let body = format!(r#"{{"jsonrpc":"2.0","id":"{long}","method":"ping"}}"#);
        assert!(matches!(shape(&body), Err(JsonRpcError::Invalid { id: None, .. })));
    }
}
