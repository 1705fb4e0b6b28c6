//! The waypoint's request conformance check on every head HTTP/1 parses. What is checked: `weft_fuzz_targets`
//! (tests/fuzz-targets).
#![no_main]

libfuzzer_sys::fuzz_target!(|input: &[u8]| {
    weft_fuzz_targets::target("http1_conformance").expect("a known target")(input)
});
