//! Reads every RPC's `(tenx.options.v1.route)` and `(google.api.http)`
//! options out of the compiled descriptor set ([`crate::descriptor`]) and
//! writes `tenx_proto::edge::PUBLIC`: the RPCs the gateway serves, with
//! their HTTP binding and edge policy.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::Path;

use crate::descriptor::{Descriptor, FileSet, HttpRule, Route};

/// `FieldDescriptorProto.Type` of string, message and bytes fields.
const STRING: i32 = 9;
const MESSAGE: i32 = 11;
const BYTES: i32 = 12;
const REPEATED: i32 = 3;

/// One HTTP binding, checked.
struct Binding {
    method: &'static str,
    /// axum's syntax: `{field}` segments; a `{field=literal}` segment of the
    /// template is the literal here, and fills `field` with it.
    path: String,
    body: String,
    /// The answer's bytes field that is the HTTP body, if any.
    response_body: String,
    fixed: Vec<(String, String)>,
    headers: Vec<(String, String)>,
}

fn lower_snake(s: &str) -> bool {
    s.bytes().next().is_some_and(|b| b.is_ascii_lowercase())
        && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

fn literal(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-_.".contains(&b))
}

/// Checks one `google.api.http` rule, and the headers the route reads,
/// against the request message.
fn binding(
    rule: &HttpRule,
    route: &Route,
    input: &Descriptor,
    output: Option<&Descriptor>,
) -> Result<Binding, String> {
    let patterns = [
        ("GET", &rule.get),
        ("PUT", &rule.put),
        ("POST", &rule.post),
        ("DELETE", &rule.delete),
        ("PATCH", &rule.patch),
    ];
    let mut set = patterns.iter().filter_map(|(m, p)| p.as_ref().map(|p| (*m, p.clone())));
    let (method, template) = match (set.next(), set.next(), &rule.custom) {
        (Some(one), None, None) => one,
        _ => return Err("needs exactly one of get, put, post, delete, patch".into()),
    };
    if !rule.additional_bindings.is_empty() {
        return Err("additional_bindings are not supported".into());
    }
    match (rule.response_body.as_str(), route.media_type.is_empty()) {
        ("", true) => {}
        ("", false) => return Err("media_type is for a response_body".into()),
        (_, true) => return Err("a response_body needs the route's media_type".into()),
        (name, false) => match output.and_then(|o| o.field.iter().find(|f| f.name == name)) {
            Some(f) if f.r#type == BYTES && f.label != REPEATED && method == "GET" => {}
            _ => return Err(format!("response_body {name:?} must be a bytes field of the answer of a GET")),
        },
    }
    let field = |name: &str| input.field.iter().find(|f| f.name == name);
    let Some(rest) = template.strip_prefix("/v1/") else {
        return Err(format!("path {template:?} must start with /v1/"));
    };
    let mut path = String::from("/v1");
    let mut fixed = Vec::new();
    let mut in_path = BTreeSet::new();
    for segment in rest.split('/') {
        path.push('/');
        if let Some(var) = segment.strip_prefix('{').and_then(|s| s.strip_suffix('}')) {
            let (name, value) = match var.split_once('=') {
                Some((name, value)) if literal(value) => (name, Some(value)),
                Some(_) => return Err(format!("{{{var}}}: only a literal may follow `=`")),
                None => (var, None),
            };
            match field(name) {
                Some(f) if f.r#type == STRING && f.label != REPEATED => {}
                _ => return Err(format!("{{{name}}} is not a string field of {}", input.name)),
            }
            if !in_path.insert(name.to_owned()) {
                return Err(format!("{{{name}}} appears twice"));
            }
            match value {
                Some(value) => {
                    path.push_str(value);
                    fixed.push((name.to_owned(), value.to_owned()));
                }
                None => write!(path, "{{{name}}}").map_err(|e| e.to_string())?,
            }
        } else if literal(segment) {
            path.push_str(segment);
        } else {
            return Err(format!("path segment {segment:?} is neither a literal nor {{field}}"));
        }
    }
    match (method, rule.body.as_str()) {
        ("GET" | "DELETE", "") | (_, "*") => {}
        ("GET" | "DELETE", _) => return Err(format!("{method} takes no body")),
        (_, "") => return Err(format!("{method} needs a body (`*` or a field)")),
        (_, name) => match field(name) {
            // A message (its JSON), or bytes (the raw body, e.g. a
            // webhook whose signature covers the bytes as sent).
            Some(f)
                if f.label != REPEATED && !in_path.contains(name) && matches!(f.r#type, MESSAGE | BYTES) => {}
            _ => return Err(format!("body {name:?} is not a field of {} outside the path", input.name)),
        },
    }
    let mut headers = Vec::new();
    for h in &route.headers {
        let lower = h.header.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        match field(&h.field) {
            Some(f) if lower && !h.header.is_empty() && f.r#type == STRING && f.label != REPEATED => {
                headers.push((h.header.clone(), h.field.clone()));
            }
            _ => {
                return Err(format!(
                    "header {:?} → {:?}: a lower-case header and a string field",
                    h.header, h.field
                ));
            }
        }
    }
    if route.creates && method != "POST" {
        return Err("only a POST creates".into());
    }
    if route.max_body_bytes > 0 && rule.body.is_empty() {
        return Err("max_body_bytes on a binding without a body".into());
    }
    Ok(Binding {
        method,
        path,
        body: rule.body.clone(),
        response_body: rule.response_body.clone(),
        fixed,
        headers,
    })
}

/// Writes `PUBLIC`, sorted by gRPC path; fails the build for a route that
/// makes no sense: no operation id, one used twice, a public RPC only
/// operators or services may call, an HTTP binding without a route, two
/// bindings of one method and path, a path naming no request field.
pub fn write_table(descriptor: &Path, out: &Path) -> Result<(), Box<dyn std::error::Error>> {
    let set = FileSet::read(descriptor)?;
    let messages: BTreeMap<String, &Descriptor> = set
        .file
        .iter()
        .flat_map(|f| f.message_type.iter().map(move |m| (format!(".{}.{}", f.package, m.name), m)))
        .collect();
    let mut rows = Vec::new();
    let mut problems = Vec::new();
    let (mut ops, mut bound) = (BTreeSet::new(), BTreeSet::new());
    for file in set.file.iter().filter(|f| f.package.starts_with("tenx.")) {
        let area = file.package.split('.').nth(1).unwrap_or_default();
        for service in &file.service {
            for method in &service.method {
                let path = format!("/{}.{}/{}", file.package, service.name, method.name);
                let options = method.options.clone().unwrap_or_default();
                let Some(route): Option<Route> = options.route else {
                    if options.http.is_some() {
                        problems.push(format!("{path}: an HTTP binding needs (tenx.options.v1.route)"));
                    }
                    continue;
                };
                let caller = options.access.as_ref().map_or(0, |a| a.caller);
                // CALLER_ANYONE = 1, CALLER_USER = 2, CALLER_SESSION = 3.
                if !(1..=3).contains(&caller) {
                    problems
                        .push(format!("{path}: only user-facing RPCs (anyone, user, session) are public"));
                }
                if !lower_snake(&route.operation_id) || !ops.insert(route.operation_id.clone()) {
                    problems.push(format!(
                        "{path}: operation_id {:?} must be lower_snake_case and unique",
                        route.operation_id
                    ));
                }
                if route.idempotency_key && !route.idempotent {
                    problems.push(format!("{path}: a call with an idempotency key is idempotent"));
                }
                let http = match (&options.http, messages.get(&method.input_type)) {
                    (None, _)
                        if route.creates
                            || !route.headers.is_empty()
                            || route.max_body_bytes > 0
                            || !route.media_type.is_empty()
                            || !route.cache_control.is_empty() =>
                    {
                        problems.push(format!(
                            "{path}: creates, headers, max_body_bytes, media_type and cache_control need an HTTP binding"
                        ));
                        None
                    }
                    (None, _) => None,
                    (Some(_), None) => {
                        problems.push(format!("{path}: request type {} not found", method.input_type));
                        None
                    }
                    (Some(rule), Some(input)) => {
                        match binding(rule, &route, input, messages.get(&method.output_type).copied()) {
                            Ok(b) if !bound.insert((b.method, b.path.clone())) => {
                                problems.push(format!("{path}: {} {} is bound twice", b.method, b.path));
                                None
                            }
                            Ok(b) => Some(b),
                            Err(e) => {
                                problems.push(format!("{path}: (google.api.http): {e}"));
                                None
                            }
                        }
                    }
                };
                rows.push((path, area.to_owned(), route, caller == 1, http));
            }
        }
    }
    if !problems.is_empty() {
        return Err(format!("routes in proto/:\n  {}", problems.join("\n  ")).into());
    }
    rows.sort_by(|a, b| a.0.cmp(&b.0));
    let mut code = String::from("/// Every public RPC, sorted by gRPC path (generated by build.rs).\n");
    code.push_str("pub static PUBLIC: &[PublicRpc] = &[\n");
    for (path, service, r, anonymous, http) in rows {
        let http = match http {
            None => "None".to_owned(),
            Some(b) => format!(
                "Some(Http {{ method: {:?}, path: {:?}, body: {:?}, response_body: {:?}, fixed: &{:?}, \
                 headers: &{:?}, creates: {}, max_body_bytes: {}, media_type: {:?}, cache_control: {:?} }})",
                b.method,
                b.path,
                b.body,
                b.response_body,
                b.fixed,
                b.headers,
                r.creates,
                r.max_body_bytes,
                r.media_type,
                r.cache_control
            ),
        };
        writeln!(
            code,
            "    PublicRpc {{ path: {path:?}, service: {service:?}, operation_id: {:?}, anonymous: {anonymous}, \
             idempotent: {}, waits_on_provider: {}, vouches_for_client: {}, idempotency_key: {}, http: {http} }},",
            r.operation_id, r.idempotent, r.waits_on_provider, r.vouches_for_client, r.idempotency_key,
        )?;
    }
    code.push_str("];\n");
    std::fs::write(out, code)?;
    Ok(())
}
