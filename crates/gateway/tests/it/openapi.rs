//! The served OpenAPI document and the routes cannot drift apart.

use std::collections::BTreeSet;

use crate::support::{Platform, send};

#[tokio::test]
async fn the_openapi_document_lists_exactly_the_served_routes() -> anyhow::Result<()> {
    let platform = Platform::start().await?;
    let gw = platform.gateway().await?;
    let doc = send(gw.http_addr, "GET", "/openapi.json", &[], None).await?;
    assert_eq!(doc.status, 200);
    assert_eq!(doc.json["openapi"], "3.0.3");

    let mut documented = BTreeSet::new();
    for (path, item) in doc.json["paths"].as_object().into_iter().flatten() {
        for (method, operation) in item.as_object().into_iter().flatten() {
            let op = operation["operationId"].as_str().unwrap_or_default().to_owned();
            documented.insert((method.to_uppercase(), path.clone(), op));
        }
    }
    let routed: BTreeSet<_> = tenx_proto::edge::http()
        .map(|(r, h)| (h.method.to_owned(), h.path.to_owned(), r.operation_id.to_owned()))
        .collect();
    assert_eq!(documented, routed, "document and the protos' HTTP bindings differ");

    // Each documented route is served (a refusal by policy or input, never
    // an unknown route or method).
    for (method, path, _) in &documented {
        let reply = send(gw.http_addr, method, path, &[], Some("{}")).await?;
        assert!(reply.status != 405, "{method} {path} not routed");
        assert!(reply.json["error"]["message"] != "no such route", "{method} {path} not routed");
    }
    Ok(())
}
