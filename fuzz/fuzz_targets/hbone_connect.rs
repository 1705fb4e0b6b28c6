//! The HBONE server's reading of a CONNECT request, and per-source admission. What is checked: `weft_fuzz_targets`
//! (tests/fuzz-targets).
#![no_main]

libfuzzer_sys::fuzz_target!(|input: &[u8]| {
    weft_fuzz_targets::target("hbone_connect").expect("a known target")(input)
});
