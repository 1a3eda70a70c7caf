//! Fuzz target `handshake`: see `hioload_wsproto_fuzz::handshake` for what it checks.
#![cfg_attr(feature = "libfuzzer", no_main)]

#[cfg(feature = "libfuzzer")]
libfuzzer_sys::fuzz_target!(|data: &[u8]| hioload_wsproto_fuzz::handshake(data));

#[cfg(not(feature = "libfuzzer"))]
fn main() {
    hioload_wsproto_fuzz::standalone::main("handshake", hioload_wsproto_fuzz::handshake, hioload_wsproto_fuzz::seeds::handshake);
}
