//! The CNI plugin's environment, stdin and pod. What is checked: `weft_fuzz_targets`
//! (tests/fuzz-targets).
#![no_main]

libfuzzer_sys::fuzz_target!(|input: &[u8]| {
    weft_fuzz_targets::target("cni_plugin").expect("a known target")(input)
});
