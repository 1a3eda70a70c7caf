//! Fuzz target `frame_header`: see `hioload_wsproto_fuzz::frame_header` for what it checks.
#![cfg_attr(feature = "libfuzzer", no_main)]

#[cfg(feature = "libfuzzer")]
libfuzzer_sys::fuzz_target!(|data: &[u8]| hioload_wsproto_fuzz::frame_header(data));

#[cfg(not(feature = "libfuzzer"))]
fn main() {
    hioload_wsproto_fuzz::standalone::main("frame_header", hioload_wsproto_fuzz::frame_header, hioload_wsproto_fuzz::seeds::frame_header);
}
