//! Rebuilds the crate when a migration is added, changed or removed:
//! `refinery::embed_migrations!` embeds `migrations/` at compile time, but
//! cargo only learns of the files it read, so a new file would not be
//! embedded until something else changed (rust-db/refinery#309). A
//! directory here means every file beneath it.
fn main() {
    println!("cargo:rerun-if-changed=migrations");
}
