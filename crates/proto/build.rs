//! Generates Rust code for every `.proto` under the workspace's `proto/`
//! folder, once, for all services. `protoc` comes vendored, so building
//! needs no system package; `PROTOC` in the environment still wins.

use std::path::{Path, PathBuf};

#[path = "build/access.rs"]
mod access;
#[path = "build/descriptor.rs"]
mod descriptor;
#[path = "build/edge.rs"]
mod edge;
#[path = "build/events.rs"]
mod events;
#[path = "build/rules.rs"]
mod rules;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // Cargo's runtime value, not `env!`: a build script binary can be reused
    // from a shared target dir built from another checkout of this crate.
    let root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?).join("../../proto");
    let mut files = Vec::new();
    collect_protos(&root, &mut files)?;
    files.sort();
    // `buf/validate` declares the rule options; imported, never generated.
    let compiled: Vec<PathBuf> = files.iter().filter(|f| !f.starts_with(root.join("buf"))).cloned().collect();

    let mut config = tonic_prost_build::Config::new();
    // `prost::Name` on every message: the outbox records payload types by it.
    config.enable_type_names();
    if std::env::var_os("PROTOC").is_none() {
        config.protoc_executable(protoc_bin_vendored::protoc_bin_path()?);
    }

    let descriptor = PathBuf::from(std::env::var("OUT_DIR")?).join("tenx_descriptor.bin");
    // Every server decodes requests through `rules::CheckedCodec`, which
    // refuses one that breaks its contract's `buf.validate` rules.
    tonic_prost_build::configure()
        .file_descriptor_set_path(&descriptor)
        .codec_path("crate::rules::CheckedCodec")
        .compile_with_config(config, &compiled, std::slice::from_ref(&root))?;

    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    rules::write(&descriptor, &out.join("rules_impl.rs"))?;
    access::write_table(&descriptor, &out.join("access_table.rs"))?;
    events::write_events(&descriptor, &out.join("event_types.rs"))?;
    edge::write_table(&descriptor, &out.join("edge_table.rs"))?;

    println!("cargo:rerun-if-changed={}", root.display());
    for file in &files {
        println!("cargo:rerun-if-changed={}", file.display());
    }
    Ok(())
}

fn collect_protos(dir: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            collect_protos(&path, out)?;
        } else if path.extension().is_some_and(|e| e == "proto") {
            out.push(path);
        }
    }
    Ok(())
}
