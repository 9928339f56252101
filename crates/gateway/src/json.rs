//! The HTTP API's JSON, mapped to and from protobuf messages by their
//! descriptors (any public RPC's request and response, no code per
//! message). It is proto3's JSON mapping with the choices tenx's HTTP API
//! has always made, so no client breaks:
//!
//! - a field's name is its proto name (`next_page_token`), or the
//!   `json_name` its proto gives it explicitly;
//! - every field is written, scalars at their default too; an unset
//!   message, an unset `optional` scalar and an unspecified enum are
//!   `null`;
//! - an enum is its value's name without the enum's prefix, in lower case
//!   (`SUBSCRIPTION_STATUS_PAST_DUE` → `"past_due"`);
//! - 64-bit integers are JSON numbers (amounts in minor units stay far
//!   below 2^53); bytes are base64;
//! - `google.protobuf.Timestamp` is an RFC 3339 string.
//!
//! Reading is strict: an unknown field, a wrong type, an unknown enum
//! name or a number out of range is refused, naming the field
//! (`lines[2].quantity`), and nothing is sent upstream.

use std::str::FromStr;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use prost_reflect::{
    DynamicMessage, EnumDescriptor, FieldDescriptor, Kind, MessageDescriptor, ReflectMessage, Value as Pb,
};
use serde_json::{Map, Value};

const TIMESTAMP: &str = "google.protobuf.Timestamp";

/// A value that does not fit its field: which field (a path from the
/// message's top), and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Misfit {
    pub field: String,
    pub reason: String,
}

impl Misfit {
    fn new(field: &str, reason: impl Into<String>) -> Self {
        Self { field: field.to_owned(), reason: reason.into() }
    }
}

/// The name a field has in JSON: its `json_name` when the proto sets one
/// (protoc fills in lowerCamelCase otherwise, which tenx does not use).
/// Asked for every field of every answer, so it compares, not allocates.
pub fn name_of(field: &FieldDescriptor) -> &str {
    let (name, json) = (field.name(), field.json_name());
    let mut upper = false;
    let protocs = name.chars().filter_map(|c| {
        if c == '_' {
            upper = true;
            None
        } else {
            Some(if std::mem::take(&mut upper) { c.to_ascii_uppercase() } else { c })
        }
    });
    if protocs.eq(json.chars()) { name } else { json }
}

/// Whether a field can be given as text (a query parameter): a scalar,
/// an enum or a timestamp, or a list of them.
pub fn textual(field: &FieldDescriptor) -> bool {
    !field.is_map()
        && match field.kind() {
            Kind::Message(desc) => desc.full_name() == TIMESTAMP,
            _ => true,
        }
}

/// The field whose JSON name is `name`.
pub fn field_named(desc: &MessageDescriptor, name: &str) -> Option<FieldDescriptor> {
    desc.fields().find(|f| name_of(f) == name)
}

/// The prefix every value of an enum starts with: `SUBSCRIPTION_STATUS_`
/// for `SubscriptionStatus`.
fn enum_prefix(desc: &EnumDescriptor) -> String {
    let mut prefix = String::new();
    for (i, c) in desc.name().chars().enumerate() {
        if c.is_ascii_uppercase() && i > 0 {
            prefix.push('_');
        }
        prefix.push(c.to_ascii_uppercase());
    }
    prefix.push('_');
    prefix
}

/// `"past_due"` for SUBSCRIPTION_STATUS_PAST_DUE; `None` for the zero
/// (unspecified) value and numbers the enum does not know.
pub fn enum_name(desc: &EnumDescriptor, number: i32) -> Option<String> {
    if number == 0 {
        return None;
    }
    let value = desc.get_value(number)?;
    let prefix = enum_prefix(desc);
    Some(value.name().strip_prefix(&prefix).unwrap_or(value.name()).to_ascii_lowercase())
}

/// The number of `"past_due"`; the unspecified value is never accepted
/// by name (leave the field out, or send null).
pub fn enum_number(desc: &EnumDescriptor, name: &str) -> Option<i32> {
    if name.is_empty() || !name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_') {
        return None;
    }
    let full = format!("{}{}", enum_prefix(desc), name.to_ascii_uppercase());
    desc.get_value_by_name(&full).map(|v| v.number()).filter(|n| *n != 0)
}

// ------------------------------------------------------------- writing

/// The JSON of a message.
pub fn to_json(message: &DynamicMessage) -> Value {
    let desc = message.descriptor();
    if desc.full_name() == TIMESTAMP {
        return timestamp_to_json(message);
    }
    let mut object = Map::new();
    for field in desc.fields() {
        let value = if field.supports_presence() && !message.has_field(&field) {
            Value::Null
        } else {
            field_to_json(&field, &message.get_field(&field))
        };
        object.insert(name_of(&field).to_owned(), value);
    }
    Value::Object(object)
}

fn field_to_json(field: &FieldDescriptor, value: &Pb) -> Value {
    match value {
        Pb::List(items) => Value::Array(items.iter().map(|v| scalar_to_json(&field.kind(), v)).collect()),
        Pb::Map(entries) => {
            let value_kind = match field.kind() {
                Kind::Message(entry) => entry.map_entry_value_field().kind(),
                other => other,
            };
            let mut object = Map::new();
            for (key, v) in entries {
                let key = match key {
                    prost_reflect::MapKey::Bool(b) => b.to_string(),
                    prost_reflect::MapKey::I32(n) => n.to_string(),
                    prost_reflect::MapKey::I64(n) => n.to_string(),
                    prost_reflect::MapKey::U32(n) => n.to_string(),
                    prost_reflect::MapKey::U64(n) => n.to_string(),
                    prost_reflect::MapKey::String(s) => s.clone(),
                };
                object.insert(key, scalar_to_json(&value_kind, v));
            }
            Value::Object(object)
        }
        other => scalar_to_json(&field.kind(), other),
    }
}

fn scalar_to_json(kind: &Kind, value: &Pb) -> Value {
    match (kind, value) {
        (_, Pb::Bool(b)) => Value::Bool(*b),
        (_, Pb::I32(n)) => Value::from(*n),
        (_, Pb::I64(n)) => Value::from(*n),
        (_, Pb::U32(n)) => Value::from(*n),
        (_, Pb::U64(n)) => Value::from(*n),
        (_, Pb::F32(n)) => serde_json::Number::from_f64(f64::from(*n)).map_or(Value::Null, Value::Number),
        (_, Pb::F64(n)) => serde_json::Number::from_f64(*n).map_or(Value::Null, Value::Number),
        (_, Pb::String(s)) => Value::String(s.clone()),
        (_, Pb::Bytes(b)) => Value::String(BASE64.encode(b)),
        (Kind::Enum(desc), Pb::EnumNumber(n)) => enum_name(desc, *n).map_or(Value::Null, Value::String),
        (_, Pb::EnumNumber(n)) => Value::from(*n),
        (_, Pb::Message(m)) => to_json(m),
        (_, Pb::List(_) | Pb::Map(_)) => Value::Null,
    }
}

fn timestamp_to_json(message: &DynamicMessage) -> Value {
    let seconds = message.get_field_by_name("seconds").and_then(|v| v.as_i64()).unwrap_or_default();
    let nanos = message.get_field_by_name("nanos").and_then(|v| v.as_i32()).unwrap_or_default();
    Value::String(prost_types::Timestamp { seconds, nanos }.to_string())
}

// ------------------------------------------------------------- reading

/// Reads a message from its JSON (an object; `null` is the empty message).
pub fn from_json(desc: &MessageDescriptor, json: &Value, at: &str) -> Result<DynamicMessage, Misfit> {
    let mut message = DynamicMessage::new(desc.clone());
    merge_json(&mut message, json, at)?;
    Ok(message)
}

/// Sets the fields `json` names on `message`.
pub fn merge_json(message: &mut DynamicMessage, json: &Value, at: &str) -> Result<(), Misfit> {
    let desc = message.descriptor();
    if desc.full_name() == TIMESTAMP {
        return Err(Misfit::new(at, "a timestamp is an RFC 3339 string"));
    }
    let object = match json {
        Value::Object(object) => object,
        Value::Null => return Ok(()),
        _ => return Err(Misfit::new(if at.is_empty() { "body" } else { at }, "must be a JSON object")),
    };
    for (name, value) in object {
        let path = if at.is_empty() { name.clone() } else { format!("{at}.{name}") };
        let field =
            field_named(&desc, name).ok_or_else(|| Misfit::new(&path, "is not a field of this request"))?;
        if value.is_null() {
            continue;
        }
        let parsed = field_from_json(&field, value, &path)?;
        message.set_field(&field, parsed);
    }
    Ok(())
}

fn field_from_json(field: &FieldDescriptor, json: &Value, at: &str) -> Result<Pb, Misfit> {
    let kind = field.kind();
    if field.is_map() {
        let Kind::Message(entry) = &kind else { return Err(Misfit::new(at, "unsupported map")) };
        let (key_field, value_field) = (entry.map_entry_key_field(), entry.map_entry_value_field());
        let Value::Object(object) = json else { return Err(Misfit::new(at, "must be a JSON object")) };
        let mut map = std::collections::HashMap::new();
        for (k, v) in object {
            let path = format!("{at}.{k}");
            let key = match scalar_from_text(&key_field.kind(), k, &path)? {
                Pb::Bool(b) => prost_reflect::MapKey::Bool(b),
                Pb::I32(n) => prost_reflect::MapKey::I32(n),
                Pb::I64(n) => prost_reflect::MapKey::I64(n),
                Pb::U32(n) => prost_reflect::MapKey::U32(n),
                Pb::U64(n) => prost_reflect::MapKey::U64(n),
                Pb::String(s) => prost_reflect::MapKey::String(s),
                _ => return Err(Misfit::new(&path, "unsupported map key")),
            };
            map.insert(key, scalar_from_json(&value_field.kind(), v, &path)?);
        }
        return Ok(Pb::Map(map));
    }
    if field.is_list() {
        let Value::Array(items) = json else { return Err(Misfit::new(at, "must be a JSON array")) };
        return items
            .iter()
            .enumerate()
            .map(|(i, item)| scalar_from_json(&kind, item, &format!("{at}[{i}]")))
            .collect::<Result<Vec<_>, _>>()
            .map(Pb::List);
    }
    scalar_from_json(&kind, json, at)
}

fn scalar_from_json(kind: &Kind, json: &Value, at: &str) -> Result<Pb, Misfit> {
    match (kind, json) {
        (Kind::Message(desc), Value::String(s)) if desc.full_name() == TIMESTAMP => timestamp(desc, s, at),
        (Kind::Message(desc), _) => Ok(Pb::Message(from_json(desc, json, at)?)),
        (Kind::Bool, Value::Bool(b)) => Ok(Pb::Bool(*b)),
        (Kind::String, Value::String(s)) => Ok(Pb::String(s.clone())),
        (Kind::Enum(_), Value::String(s)) => scalar_from_text(kind, s, at),
        (Kind::Bytes, Value::String(s)) => {
            BASE64.decode(s).map(|b| Pb::Bytes(b.into())).map_err(|_| Misfit::new(at, "must be base64"))
        }
        // Numbers: a JSON number, or its decimal text.
        (_, Value::Number(n)) if number_kind(kind) => scalar_from_text(kind, &n.to_string(), at),
        (_, Value::String(s)) if number_kind(kind) => scalar_from_text(kind, s, at),
        _ => Err(Misfit::new(at, format!("must be {}", expected(kind)))),
    }
}

fn number_kind(kind: &Kind) -> bool {
    !matches!(kind, Kind::Bool | Kind::String | Kind::Bytes | Kind::Enum(_) | Kind::Message(_))
}

fn expected(kind: &Kind) -> &'static str {
    match kind {
        Kind::Bool => "true or false",
        Kind::String => "a string",
        Kind::Bytes => "a base64 string",
        Kind::Enum(_) => "one of the documented names",
        Kind::Message(_) => "a JSON object",
        Kind::Double | Kind::Float => "a number",
        _ => "an integer",
    }
}

fn parse<T: FromStr>(text: &str, at: &str, what: &str) -> Result<T, Misfit> {
    text.parse().map_err(|_| Misfit::new(at, format!("must be {what}")))
}

/// A scalar from text: a path segment, a query parameter, a map key.
pub fn scalar_from_text(kind: &Kind, text: &str, at: &str) -> Result<Pb, Misfit> {
    const INT: &str = "an integer in range";
    Ok(match kind {
        Kind::String => Pb::String(text.to_owned()),
        Kind::Bool => match text {
            "true" => Pb::Bool(true),
            "false" => Pb::Bool(false),
            _ => return Err(Misfit::new(at, "must be true or false")),
        },
        Kind::Int32 | Kind::Sint32 | Kind::Sfixed32 => Pb::I32(parse(text, at, INT)?),
        Kind::Int64 | Kind::Sint64 | Kind::Sfixed64 => Pb::I64(parse(text, at, INT)?),
        Kind::Uint32 | Kind::Fixed32 => Pb::U32(parse(text, at, INT)?),
        Kind::Uint64 | Kind::Fixed64 => Pb::U64(parse(text, at, INT)?),
        Kind::Float => Pb::F32(parse(text, at, "a number")?),
        Kind::Double => Pb::F64(parse(text, at, "a number")?),
        Kind::Enum(desc) => match enum_number(desc, text) {
            Some(n) => Pb::EnumNumber(n),
            None => {
                let names: Vec<String> = desc.values().filter_map(|v| enum_name(desc, v.number())).collect();
                return Err(Misfit::new(
                    at,
                    format!("unknown value `{text}` (one of: {})", names.join(", ")),
                ));
            }
        },
        Kind::Bytes => Pb::Bytes(BASE64.decode(text).map_err(|_| Misfit::new(at, "must be base64"))?.into()),
        Kind::Message(desc) if desc.full_name() == TIMESTAMP => return timestamp(desc, text, at),
        Kind::Message(_) => return Err(Misfit::new(at, "cannot be given as text")),
    })
}

fn timestamp(desc: &MessageDescriptor, text: &str, at: &str) -> Result<Pb, Misfit> {
    let t = prost_types::Timestamp::from_str(text)
        .map_err(|_| Misfit::new(at, "must be an RFC 3339 time, e.g. 2026-03-01T00:00:00Z"))?;
    let mut message = DynamicMessage::new(desc.clone());
    message.set_field_by_name("seconds", Pb::I64(t.seconds));
    message.set_field_by_name("nanos", Pb::I32(t.nanos));
    Ok(Pb::Message(message))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool() -> prost_reflect::DescriptorPool {
        prost_reflect::DescriptorPool::decode(tenx_proto::FILE_DESCRIPTOR_SET).expect("descriptor set")
    }

    fn message(name: &str) -> MessageDescriptor {
        pool().get_message_by_name(name).unwrap_or_else(|| panic!("{name}"))
    }

    #[test]
    fn enums_are_lower_case_names_without_their_prefix_and_unspecified_is_null() {
        let desc = message("tenx.billing.v1.Subscription");
        let Kind::Enum(status) = desc.get_field_by_name("status").map(|f| f.kind()).expect("status") else {
            panic!("an enum")
        };
        assert_eq!(enum_name(&status, 0), None);
        let past_due = enum_number(&status, "past_due").expect("known");
        assert_eq!(enum_name(&status, past_due).as_deref(), Some("past_due"));
        assert_eq!(enum_number(&status, "PAST_DUE"), None, "lower case only");
        assert_eq!(enum_number(&status, "unspecified"), None, "never by name");
        assert_eq!(enum_number(&status, "SUBSCRIPTION_STATUS_PAST_DUE"), None);
    }

    #[test]
    fn every_tenx_enum_value_carries_its_enums_prefix() {
        for desc in pool().all_enums().filter(|e| e.full_name().starts_with("tenx.")) {
            let prefix = enum_prefix(&desc);
            for value in desc.values() {
                assert!(
                    value.name().starts_with(&prefix),
                    "{}: {} lacks {prefix}",
                    desc.full_name(),
                    value.name()
                );
            }
        }
    }

    #[test]
    fn a_message_round_trips_with_every_field_written_and_nulls_for_unset_ones() -> Result<(), Misfit> {
        let desc = message("tenx.billing.v1.CreateSubscriptionRequest");
        let request = from_json(&desc, &serde_json::json!({ "price_id": "p1", "trial_days": 7 }), "")?;
        let json = to_json(&request);
        assert_eq!(json["price_id"], "p1");
        assert_eq!(json["trial_days"], 7, "an optional scalar that is set");
        assert_eq!(json["payment_method_id"], "", "a default scalar is written");
        let empty = to_json(&from_json(&desc, &serde_json::json!({}), "")?);
        assert_eq!(empty["trial_days"], Value::Null, "an unset optional scalar is null");
        Ok(())
    }

    #[test]
    fn bad_input_names_the_field() {
        let desc = message("tenx.billing.v1.ListInvoicesRequest");
        let misfit = |json| from_json(&desc, &json, "").expect_err("refused");
        assert_eq!(misfit(serde_json::json!({ "nope": 1 })).field, "nope");
        assert_eq!(misfit(serde_json::json!({ "page_size": "ten" })).field, "page_size");
        assert_eq!(misfit(serde_json::json!({ "page_size": -1 })).field, "page_size");
        assert_eq!(misfit(serde_json::json!({ "page_size": 1.5 })).field, "page_size");
        let status = misfit(serde_json::json!({ "status": ["paid", "bogus"] }));
        assert_eq!(status.field, "status[1]");
        assert!(status.reason.contains("paid"), "{}", status.reason);
        assert_eq!(misfit(serde_json::json!([1])).field, "body");
    }

    #[test]
    fn timestamps_are_rfc_3339_both_ways() -> Result<(), Misfit> {
        let desc = message("tenx.billing.v1.Invoice");
        let invoice = from_json(&desc, &serde_json::json!({ "paid_at": "2026-03-01T14:05:00Z" }), "")?;
        assert_eq!(to_json(&invoice)["paid_at"], "2026-03-01T14:05:00Z");
        assert_eq!(to_json(&invoice)["period_start"], Value::Null);
        let bad = from_json(&desc, &serde_json::json!({ "paid_at": "yesterday" }), "").expect_err("refused");
        assert_eq!(bad.field, "paid_at");
        Ok(())
    }
}
