//! YAML through the controller's validation and translation. What is checked: `weft_fuzz_targets`
//! (tests/fuzz-targets).
#![no_main]

libfuzzer_sys::fuzz_target!(|input: &[u8]| {
    weft_fuzz_targets::target("controller_yaml").expect("a known target")(input)
});
