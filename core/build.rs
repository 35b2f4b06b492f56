//! Rebuilds when a migration is added, renamed or removed: `sqlx::migrate!` embeds the
//! directory's files, and Cargo only watches the files it already knows.

fn main() {
    println!("cargo:rerun-if-changed=../migrations");
}
