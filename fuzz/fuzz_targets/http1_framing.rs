//! The waypoint's HTTP/1.1 framing guard on any byte stream. What is checked: `weft_fuzz_targets`
//! (tests/fuzz-targets).
#![no_main]

libfuzzer_sys::fuzz_target!(|input: &[u8]| {
    weft_fuzz_targets::target("http1_framing").expect("a known target")(input)
});
