//! Field rules declared in the contracts as `buf.validate` annotations
//! (protovalidate's vocabulary), turned into plain Rust: a static
//! `FieldRules` per annotated field and an `impl Checked` per message that
//! checks them (see `tenx_proto::rules`). Only the rules tenx uses are
//! understood; any other one fails the build rather than being ignored.

use std::collections::{BTreeMap, HashSet};
use std::fmt::Write as _;
use std::path::Path;

use prost_reflect::{
    Cardinality, DescriptorPool, DynamicMessage, ExtensionDescriptor, FieldDescriptor, Kind,
    MessageDescriptor, Value,
};

type BuildResult<T> = Result<T, Box<dyn std::error::Error>>;

/// One field's rules, as read from `(buf.validate.field)`.
#[derive(Debug, Default)]
struct Rules {
    required: bool,
    ignore_empty: bool,
    min_len: Option<u64>,
    max_len: Option<u64>,
    pattern: Option<String>,
    uuid: bool,
    one_of: Vec<String>,
    min: Option<u64>,
    max: Option<u64>,
    defined_only: bool,
    not_in: Vec<i32>,
    min_items: Option<u64>,
    max_items: Option<u64>,
    items: Option<Box<Rules>>,
}

pub fn write(descriptor: &Path, out: &Path) -> BuildResult<()> {
    let pool = DescriptorPool::decode(std::fs::read(descriptor)?.as_slice())?;
    let Some(extension) = pool.get_extension_by_name("buf.validate.field") else {
        return Err("proto/buf/validate/validate.proto is missing from the descriptor set".into());
    };
    let requests: HashSet<String> = pool
        .services()
        .flat_map(|s| s.methods().map(|m| m.input().full_name().to_owned()).collect::<Vec<_>>())
        .collect();
    let messages: Vec<MessageDescriptor> =
        pool.all_messages().filter(|m| m.package_name().starts_with("tenx.")).collect();

    // Every annotated field's rules, by message.
    let mut rules: BTreeMap<String, Vec<(FieldDescriptor, Rules)>> = BTreeMap::new();
    for message in &messages {
        if message.parent_message().is_some() {
            return Err(format!(
                "{}: nested messages are not supported by the rules codegen",
                message.full_name()
            )
            .into());
        }
        for field in message.fields() {
            if let Some(r) = read_field(&field, &extension)? {
                rules.entry(message.full_name().to_owned()).or_default().push((field, r));
            }
        }
    }
    // A message checks something when it or a message it holds has rules.
    let mut checks: HashSet<String> = rules.keys().cloned().collect();
    loop {
        let before = checks.len();
        for message in &messages {
            let holds = message
                .fields()
                .any(|f| matches!(f.kind(), Kind::Message(m) if checks.contains(m.full_name())));
            if holds {
                checks.insert(message.full_name().to_owned());
            }
        }
        if checks.len() == before {
            break;
        }
    }

    let mut code = String::new();
    let mut table = String::new();
    let mut n = 0usize;
    for message in &messages {
        let full = message.full_name();
        let path = rust_path(message);
        if !checks.contains(full) {
            writeln!(code, "impl crate::rules::Checked for {path} {{}}")?;
            continue;
        }
        let mut body = String::new();
        let own = rules.get(full).map(Vec::as_slice).unwrap_or_default();
        for field in message.fields() {
            let name = field.name();
            let member = member(name);
            if let Some((_, r)) = own.iter().find(|(f, _)| f.name() == name) {
                let id = format!("R{n}");
                n += 1;
                let items = match &r.items {
                    Some(items) => {
                        writeln!(
                            code,
                            "static {id}_ITEMS: crate::rules::FieldRules = {};",
                            literal(items, &field, None)?
                        )?;
                        Some(format!("{id}_ITEMS"))
                    }
                    None => None,
                };
                writeln!(code, "static {id}: crate::rules::FieldRules = {};", literal(r, &field, items)?)?;
                writeln!(table, "        ({full:?}, {name:?}) => Some(&{id}),")?;
                writeln!(body, "        {}", check_call(&id, &field, &member, r)?)?;
            }
            if let Kind::Message(inner) = field.kind()
                && checks.contains(inner.full_name())
            {
                if field.is_list() {
                    writeln!(
                        body,
                        "        for (i, item) in self.{member}.iter().enumerate() {{ item.check_into(v, &at.item({name:?}, i)); }}"
                    )?;
                } else {
                    writeln!(
                        body,
                        "        if let Some(inner) = &self.{member} {{ inner.check_into(v, &at.field({name:?})); }}"
                    )?;
                }
            }
        }
        let request = requests.contains(full);
        writeln!(
            code,
            "impl crate::rules::Checked for {path} {{\n    const REQUEST: bool = {request};\n    fn check_into(&self, v: &mut crate::rules::Violations, at: &crate::rules::Path<'_>) {{\n{body}    }}\n}}"
        )?;
    }
    writeln!(
        code,
        "/// The rules of `field` of the message named `message` (full proto name).\npub fn field_rules(message: &str, field: &str) -> Option<&'static crate::rules::FieldRules> {{\n    match (message, field) {{\n{table}        _ => None,\n    }}\n}}"
    )?;
    std::fs::write(out, code)?;
    Ok(())
}

/// The generated type's path; tenx's message names are already prost's
/// UpperCamelCase (as `events.rs` relies on too).
fn rust_path(message: &MessageDescriptor) -> String {
    let module = message.package_name().trim_start_matches("tenx.").replace('.', "::");
    format!("crate::{module}::{}", message.name())
}

/// prost's field name (`type` → `r#type`).
fn member(name: &str) -> String {
    if matches!(name, "type" | "use" | "ref" | "match" | "move" | "in" | "fn" | "mod" | "self") {
        format!("r#{name}")
    } else {
        name.to_owned()
    }
}

/// The call that checks one field's own rules.
fn check_call(id: &str, field: &FieldDescriptor, member: &str, r: &Rules) -> BuildResult<String> {
    let name = field.name();
    if field.is_list() {
        let mut call = format!("{id}.list(v, &at.field({name:?}), self.{member}.len());");
        if r.items.is_some() {
            let each = match field.kind() {
                Kind::String => format!("text(v, &at.item({name:?}, i), item)"),
                Kind::Enum(e) => format!("enumeration(v, &at.item({name:?}, i), *item, &{:?})", numbers(&e)),
                other => return Err(format!("{}: item rules on {other:?} lists", field.full_name()).into()),
            };
            write!(
                call,
                " if let Some(items) = {id}.items {{ for (i, item) in self.{member}.iter().enumerate() {{ items.{each}; }} }}"
            )?;
        }
        return Ok(call);
    }
    let presence = field.supports_presence() && !matches!(field.kind(), Kind::Message(_));
    Ok(match field.kind() {
        Kind::String => format!("{id}.text(v, &at.field({name:?}), &self.{member});"),
        Kind::Bytes => format!("{id}.bytes(v, &at.field({name:?}), &self.{member});"),
        Kind::Uint32 | Kind::Uint64 if presence => {
            format!("{id}.number(v, &at.field({name:?}), self.{member}.map(u64::from));")
        }
        Kind::Uint32 | Kind::Uint64 => {
            format!("{id}.number(v, &at.field({name:?}), Some(u64::from(self.{member})));")
        }
        Kind::Enum(e) => {
            format!("{id}.enumeration(v, &at.field({name:?}), self.{member}, &{:?});", numbers(&e))
        }
        Kind::Message(_) if r.required => {
            format!("{id}.present(v, &at.field({name:?}), self.{member}.is_some());")
        }
        other => {
            return Err(format!("{}: rules on {other:?} fields are not supported", field.full_name()).into());
        }
    })
}

fn numbers(e: &prost_reflect::EnumDescriptor) -> Vec<i32> {
    e.values().map(|v| v.number()).collect()
}

fn literal(r: &Rules, field: &FieldDescriptor, items: Option<String>) -> BuildResult<String> {
    if let Some(p) = &r.pattern {
        regex::Regex::new(p).map_err(|e| format!("{}: pattern does not compile: {e}", field.full_name()))?;
    }
    let opt = |v: Option<u64>| v.map_or("None".to_owned(), |n| format!("Some({n})"));
    let items = items.map_or("None".to_owned(), |name| format!("Some(&{name})"));
    Ok(format!(
        "crate::rules::FieldRules {{ required: {}, ignore_empty: {}, min_len: {}, max_len: {}, pattern: {}, uuid: {}, one_of: &{:?}, min: {}, max: {}, defined_only: {}, not_in: &{:?}, min_items: {}, max_items: {}, items: {} }}",
        r.required,
        r.ignore_empty,
        opt(r.min_len),
        opt(r.max_len),
        r.pattern.as_ref().map_or("None".to_owned(), |p| format!("Some(crate::rules::Pattern::new({p:?}))")),
        r.uuid,
        r.one_of,
        opt(r.min),
        opt(r.max),
        r.defined_only,
        r.not_in,
        opt(r.min_items),
        opt(r.max_items),
        items,
    ))
}

fn read_field(field: &FieldDescriptor, extension: &ExtensionDescriptor) -> BuildResult<Option<Rules>> {
    let options = field.options();
    if !options.has_extension(extension) {
        return Ok(None);
    }
    let value = options.get_extension(extension);
    let message = value.as_message().ok_or("buf.validate.field is not a message")?;
    let rules = read_rules(message, field.full_name())?;
    if field.cardinality() == Cardinality::Repeated && (rules.min_len.is_some() || rules.pattern.is_some()) {
        return Err(format!("{}: put a list's item rules under `repeated.items`", field.full_name()).into());
    }
    Ok(Some(rules))
}

fn read_rules(message: &DynamicMessage, at: &str) -> BuildResult<Rules> {
    let mut r = Rules::default();
    for (f, value) in message.fields() {
        match f.name() {
            "required" => r.required = value.as_bool().unwrap_or_default(),
            "ignore" => match value.as_enum_number() {
                Some(1) => r.ignore_empty = true,
                Some(0) => {}
                other => return Err(format!("{at}: ignore {other:?} is not supported").into()),
            },
            "string" | "bytes" => read_text(value, &mut r, at)?,
            "uint32" | "uint64" => read_number(value, &mut r, at)?,
            "enum" => {
                for (g, v) in sub(value, at)?.fields() {
                    match g.name() {
                        "defined_only" => r.defined_only = v.as_bool().unwrap_or_default(),
                        "not_in" => r.not_in = list(v).iter().filter_map(Value::as_i32).collect(),
                        other => return Err(format!("{at}: enum.{other} is not supported").into()),
                    }
                }
            }
            "repeated" => {
                for (g, v) in sub(value, at)?.fields() {
                    match g.name() {
                        "min_items" => r.min_items = v.as_u64(),
                        "max_items" => r.max_items = v.as_u64(),
                        "items" => r.items = Some(Box::new(read_rules(sub(v, at)?, at)?)),
                        other => return Err(format!("{at}: repeated.{other} is not supported").into()),
                    }
                }
            }
            other => {
                return Err(
                    format!("{at}: the rule `{other}` is not supported by tenx's rules codegen").into()
                );
            }
        }
    }
    Ok(r)
}

fn sub<'a>(value: &'a Value, at: &str) -> BuildResult<&'a DynamicMessage> {
    value.as_message().ok_or_else(|| format!("{at}: expected a message of rules").into())
}

fn list(value: &Value) -> &[Value] {
    value.as_list().unwrap_or_default()
}

fn read_text(value: &Value, r: &mut Rules, at: &str) -> BuildResult<()> {
    for (g, v) in sub(value, at)?.fields() {
        match g.name() {
            "min_len" => r.min_len = v.as_u64(),
            "max_len" => r.max_len = v.as_u64(),
            "pattern" => r.pattern = v.as_str().map(str::to_owned),
            "uuid" => r.uuid = v.as_bool().unwrap_or_default(),
            "in" => r.one_of = list(v).iter().filter_map(|s| s.as_str().map(str::to_owned)).collect(),
            other => return Err(format!("{at}: string.{other} is not supported").into()),
        }
    }
    Ok(())
}

fn read_number(value: &Value, r: &mut Rules, at: &str) -> BuildResult<()> {
    for (g, v) in sub(value, at)?.fields() {
        let n = v.as_u32().map(u64::from).or_else(|| v.as_u64());
        match g.name() {
            "lte" => r.max = n,
            "gte" => r.min = n,
            other => return Err(format!("{at}: uint.{other} is not supported").into()),
        }
    }
    Ok(())
}
