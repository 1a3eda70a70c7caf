//! Fuzz target `session`: see `hioload_wsproto_fuzz::session` for what it checks.
#![cfg_attr(feature = "libfuzzer", no_main)]

#[cfg(feature = "libfuzzer")]
libfuzzer_sys::fuzz_target!(|data: &[u8]| hioload_wsproto_fuzz::session(data));

#[cfg(not(feature = "libfuzzer"))]
fn main() {
    hioload_wsproto_fuzz::standalone::main("session", hioload_wsproto_fuzz::session, hioload_wsproto_fuzz::seeds::session);
}
