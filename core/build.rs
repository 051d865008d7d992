// `sqlx::migrate!` embeds the migrations at compile time; without this a new
// migration file is missed by an incremental build until core's sources change.
fn main() {
    println!("cargo:rerun-if-changed=../migrations");
}
