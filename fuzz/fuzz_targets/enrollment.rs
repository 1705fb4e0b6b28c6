//! The node agent's enrollment socket. What is checked: `weft_fuzz_targets`
//! (tests/fuzz-targets).
#![no_main]

libfuzzer_sys::fuzz_target!(|input: &[u8]| {
    weft_fuzz_targets::target("enrollment").expect("a known target")(input)
});
