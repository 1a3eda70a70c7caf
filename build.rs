//! Records which data paths this build of the facade carries, so that binaries
//! can say it in `--version` and in their refusal messages.
fn main() {
    let dpdk = std::env::var_os("CARGO_FEATURE_DPDK").is_some();
    println!(
        "cargo:rustc-env=HIOLOAD_BUILD_PATHS={}",
        if dpdk { "dpdk+kernel" } else { "kernel" }
    );
    println!("cargo:rerun-if-changed=build.rs");
}
