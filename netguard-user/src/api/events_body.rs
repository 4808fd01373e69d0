//! Reading the body of `POST /api/v1/events` without letting its size decide our memory.
//!
//! A 16 MiB body of `[0,0,0,...]` holds 8 million JSON values: parsed into a `serde_json::Value`
//! first and counted afterwards, it costs about half a gigabyte per request. Here the array is
//! walked by a visitor that stops with 413 at item `max_batch + 1`, and every value inside the
//! items is charged to a budget ([`NODES_PER_ITEM`] per allowed item), so that neither a long array
//! nor one item holding a huge nested array can allocate more than a few tens of megabytes. The
//! items that pass are ordinary `Value`s, checked item by item exactly as before.

use std::{cell::Cell, fmt};

use axum::{
    body::Bytes,
    extract::{FromRequest, Request},
    http::{StatusCode, header},
};
use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};

use super::{
    ApiState,
    error::{ApiError, is_json},
};

/// JSON values (objects, strings, numbers ... each counts one) allowed per allowed item, shared
/// across the batch. An event has about eight; the rest is room for agents' extra keys.
pub const NODES_PER_ITEM: usize = 32;

/// The parsed body: one event object, the items of an array, or the kind of anything else (400).
#[derive(Debug)]
pub enum EventsBody {
    One(Value),
    Many(Vec<Value>),
    Other(&'static str),
}

/// Why the parse stopped early.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Over {
    Items,
    Nodes,
}

/// The request body of `POST /events`, read within the limits (415, 400, 413 as [`super::error::ApiJson`]).
pub struct EventsJson(pub EventsBody);

impl FromRequest<ApiState> for EventsJson {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &ApiState) -> Result<Self, Self::Rejection> {
        if !is_json(req.headers().get(header::CONTENT_TYPE)) {
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "expected a JSON body with `Content-Type: application/json`",
            ));
        }
        let max = state.events.max_batch();
        let bytes = Bytes::from_request(req, state)
            .await
            .map_err(|r| ApiError::new(r.status(), r.body_text()))?;
        parse(&bytes, max).map(EventsJson)
    }
}

/// Parses `bytes`, refusing (413) more than `max_batch` items or more than
/// `max_batch * NODES_PER_ITEM` values before allocating them.
pub fn parse(bytes: &[u8], max_batch: usize) -> Result<EventsBody, ApiError> {
    let over = Cell::new(None);
    let budget = Cell::new(max_batch.saturating_mul(NODES_PER_ITEM));
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let result = Top {
        max_batch,
        budget: &budget,
        over: &over,
    }
    .deserialize(&mut de)
    .and_then(|body| de.end().map(|()| body));
    match (result, over.get()) {
        (_, Some(Over::Items)) => Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("more than {max_batch} events in one request, the limit; split the batch"),
        )
        .with_field("items")),
        (_, Some(Over::Nodes)) => Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "the events hold more than {} JSON values in all ({NODES_PER_ITEM} per allowed event); \
                 send smaller events or fewer per request",
                max_batch.saturating_mul(NODES_PER_ITEM)
            ),
        )),
        (Ok(body), None) => Ok(body),
        (Err(e), None) => Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("malformed JSON: {e}"),
        )),
    }
}

/// The top level: an object (one event), an array (counted), or any other JSON value (named).
struct Top<'a> {
    max_batch: usize,
    budget: &'a Cell<usize>,
    over: &'a Cell<Option<Over>>,
}

impl<'de> DeserializeSeed<'de> for Top<'_> {
    type Value = EventsBody;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<EventsBody, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Top<'_> {
    type Value = EventsBody;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an event object or an array of them")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<EventsBody, A::Error> {
        // The hint is the client's word, not a count: never reserve more than the limit.
        let mut items =
            Vec::with_capacity(seq.size_hint().unwrap_or(0).min(self.max_batch).min(1024));
        loop {
            if items.len() == self.max_batch {
                // One more element (of any kind, read without keeping it) makes the batch too big.
                return match seq.next_element::<de::IgnoredAny>()? {
                    None => Ok(EventsBody::Many(items)),
                    Some(_) => {
                        self.over.set(Some(Over::Items));
                        Err(de::Error::custom("too many events"))
                    }
                };
            }
            match seq.next_element_seed(Node { top: &self })? {
                Some(v) => items.push(v),
                None => return Ok(EventsBody::Many(items)),
            }
        }
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<EventsBody, A::Error> {
        Node { top: &self }.visit_map(map).map(EventsBody::One)
    }

    fn visit_unit<E: de::Error>(self) -> Result<EventsBody, E> {
        Ok(EventsBody::Other("null"))
    }
    fn visit_bool<E: de::Error>(self, _: bool) -> Result<EventsBody, E> {
        Ok(EventsBody::Other("a boolean"))
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<EventsBody, E> {
        Ok(EventsBody::Other("a number"))
    }
    fn visit_u64<E: de::Error>(self, _: u64) -> Result<EventsBody, E> {
        Ok(EventsBody::Other("a number"))
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<EventsBody, E> {
        Ok(EventsBody::Other("a number"))
    }
    fn visit_str<E: de::Error>(self, _: &str) -> Result<EventsBody, E> {
        Ok(EventsBody::Other("a string"))
    }
}

/// One JSON value inside the body, built as `serde_json::Value` while charging the budget.
struct Node<'a, 'b> {
    top: &'a Top<'b>,
}

impl Node<'_, '_> {
    fn charge<E: de::Error>(&self) -> Result<(), E> {
        match self.top.budget.get().checked_sub(1) {
            Some(left) => {
                self.top.budget.set(left);
                Ok(())
            }
            None => {
                self.top.over.set(Some(Over::Nodes));
                Err(E::custom("too many JSON values"))
            }
        }
    }
}

impl<'de> DeserializeSeed<'de> for Node<'_, '_> {
    type Value = Value;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Node<'_, '_> {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_unit<E: de::Error>(self) -> Result<Value, E> {
        self.charge()?;
        Ok(Value::Null)
    }
    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Value, E> {
        self.charge()?;
        Ok(Value::Bool(v))
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Value, E> {
        self.charge()?;
        Ok(Value::from(v))
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Value, E> {
        self.charge()?;
        Ok(Value::from(v))
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Value, E> {
        self.charge()?;
        Ok(Value::from(v))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Value, E> {
        self.charge()?;
        Ok(Value::String(v.to_owned()))
    }
    fn visit_string<E: de::Error>(self, v: String) -> Result<Value, E> {
        self.charge()?;
        Ok(Value::String(v))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        self.charge()?;
        let mut out = Vec::new();
        while let Some(v) = seq.next_element_seed(Node { top: self.top })? {
            out.push(v);
        }
        Ok(Value::Array(out))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        self.charge()?;
        let mut out = Map::new();
        while let Some(k) = map.next_key::<String>()? {
            let v = map.next_value_seed(Node { top: self.top })?;
            out.insert(k, v);
        }
        Ok(Value::Object(out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shapes_are_as_before() {
        match parse(br#"{"src_ip": "10.0.0.1", "x": [1, {"y": null}]}"#, 10).unwrap() {
            EventsBody::One(v) => assert_eq!(v["x"][1]["y"], Value::Null),
            other => panic!("{other:?}"),
        }
        match parse(br#"[{"a": 1}, 5, "s"]"#, 3).unwrap() {
            EventsBody::Many(v) => {
                assert_eq!(v, vec![serde_json::json!({"a": 1}), 5.into(), "s".into()])
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            parse(b"\"4625\"", 3).unwrap(),
            EventsBody::Other("a string")
        ));
        assert!(matches!(parse(b"[]", 3).unwrap(), EventsBody::Many(v) if v.is_empty()));
        let e = parse(b"[1, 2", 3).unwrap_err();
        assert_eq!(e.status, StatusCode::BAD_REQUEST);
        assert!(
            e.body.error.starts_with("malformed JSON"),
            "{}",
            e.body.error
        );
        let e = parse(b"{} x", 3).unwrap_err();
        assert_eq!(e.status, StatusCode::BAD_REQUEST);
    }

    #[test]
    fn an_over_limit_batch_stops_at_the_first_extra_item() {
        assert!(matches!(parse(b"[0, 0, 0]", 3).unwrap(), EventsBody::Many(v) if v.len() == 3));
        // Malformed after the extra item: the parse never got there.
        let e = parse(b"[0, 0, 0, 0, oops", 3).unwrap_err();
        assert_eq!(
            (e.status, e.body.field.as_deref()),
            (StatusCode::PAYLOAD_TOO_LARGE, Some("items"))
        );
    }

    #[test]
    fn one_item_cannot_spend_the_whole_batch_s_memory() {
        let mut body = String::from(r#"[{"src_ip": "10.0.0.1", "x": ["#);
        body.push_str(&vec!["0"; 3 * NODES_PER_ITEM].join(","));
        body.push_str("]}]");
        let e = parse(body.as_bytes(), 2).unwrap_err();
        assert_eq!(e.status, StatusCode::PAYLOAD_TOO_LARGE);
        assert!(parse(body.as_bytes(), 4).is_ok());
    }
}
