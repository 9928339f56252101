//! `google.protobuf.Struct` ⇄ JSON, for template data.

use prost_types::value::Kind;
use prost_types::{ListValue, Struct, Value};
use serde_json::{Map, Number, Value as Json};

pub fn to_json(s: &Struct) -> Json {
    Json::Object(s.fields.iter().map(|(k, v)| (k.clone(), value_to_json(v))).collect::<Map<_, _>>())
}

fn value_to_json(v: &Value) -> Json {
    match &v.kind {
        None | Some(Kind::NullValue(_)) => Json::Null,
        Some(Kind::BoolValue(b)) => Json::Bool(*b),
        Some(Kind::NumberValue(n)) => {
            if n.fract() == 0.0 && n.abs() < 9.0e15 {
                Json::Number(Number::from(*n as i64))
            } else {
                Number::from_f64(*n).map_or(Json::Null, Json::Number)
            }
        }
        Some(Kind::StringValue(s)) => Json::String(s.clone()),
        Some(Kind::StructValue(s)) => to_json(s),
        Some(Kind::ListValue(ListValue { values })) => {
            Json::Array(values.iter().map(value_to_json).collect())
        }
    }
}

/// Bytes of the struct's JSON form, to bound request size.
pub fn json_len(s: &Struct) -> usize {
    to_json(s).to_string().len()
}
