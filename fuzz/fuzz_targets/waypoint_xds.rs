//! A push to the waypoint (its WaypointConfig) off the wire. What is checked: `weft_fuzz_targets`
//! (tests/fuzz-targets).
#![no_main]

libfuzzer_sys::fuzz_target!(|input: &[u8]| {
    weft_fuzz_targets::target("waypoint_xds").expect("a known target")(input)
});
