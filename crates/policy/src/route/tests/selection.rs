//! Which route a request takes, and the weighted and percentage picks made among routes.

use super::*;

#[test]
fn route_selection_table() {
    let canary_then_default = vec![
        route(vec![headers(vec![KeyMatch::header(
            "end-user",
            exact("jason"),
        )])]),
        route(vec![]),
    ];
    let ored = vec![
        route(vec![uri(prefix("/a")), uri(prefix("/b"))]),
        route(vec![uri(prefix("/"))]),
    ];
    let specific_after_general = vec![
        route(vec![uri(prefix("/"))]),
        route(vec![uri(exact("/admin"))]),
    ];
    let no_catch_all = vec![route(vec![uri(prefix("/api"))])];
    let cases: Vec<SelectionCase<'_>> = vec![
        (
            "first route on header",
            &canary_then_default,
            get("/").header("end-user", "jason"),
            Some((0, Some(0))),
        ),
        (
            "falls through to catch-all",
            &canary_then_default,
            get("/"),
            Some((1, None)),
        ),
        (
            "second match of first route",
            &ored,
            get("/b/x"),
            Some((0, Some(1))),
        ),
        (
            "first match of first route",
            &ored,
            get("/a"),
            Some((0, Some(0))),
        ),
        (
            "falls to second route",
            &ored,
            get("/c"),
            Some((1, Some(0))),
        ),
        (
            "first wins even if less specific",
            &specific_after_general,
            get("/admin"),
            Some((0, Some(0))),
        ),
        ("no route matches", &no_catch_all, get("/web"), None),
    ];
    for (name, routes, req, want) in cases {
        let got = select_route(routes, &req.view()).map(|s| (s.route_index, s.match_index));
        assert_eq!(got, want, "case {name}");
    }
    assert_eq!(select_route(&[], &get("/").view()), None);
}

#[test]
fn weighted_pick_follows_relative_weights() {
    // A deterministic, well-spread sequence of rolls (a 32-bit LCG), as the waypoint's RNG
    // would feed in.
    let mut state: u32 = 12345;
    let mut counts = [0u32; 3];
    let rolls = 100_000;
    for _ in 0..rolls {
        state = state.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
        counts[pick_weighted(&[1, 3, 6], state).unwrap()] += 1;
    }
    // Weights 1:3:6 -> 10%, 30%, 60%, within half a percentage point.
    for (count, expected) in counts.iter().zip([0.1, 0.3, 0.6]) {
        let share = f64::from(*count) / f64::from(rolls);
        assert!((share - expected).abs() < 0.005, "{counts:?}");
    }
}

#[test]
fn weighted_pick_boundaries() {
    // Cumulative walk over roll % total: [0,25) -> 0, [25,100) -> 1.
    assert_eq!(pick_weighted(&[25, 75], 0), Some(0));
    assert_eq!(pick_weighted(&[25, 75], 24), Some(0));
    assert_eq!(pick_weighted(&[25, 75], 25), Some(1));
    assert_eq!(pick_weighted(&[25, 75], 99), Some(1));
    assert_eq!(pick_weighted(&[25, 75], 100), Some(0));
    // Zero weights are never chosen.
    for roll in 0..50 {
        assert_ne!(pick_weighted(&[0, 5, 0, 5], roll), Some(0));
        assert_ne!(pick_weighted(&[0, 5, 0, 5], roll), Some(2));
    }
    // Weights need not sum to 100.
    assert_eq!(pick_weighted(&[1, 1], 1), Some(1));
    assert_eq!(pick_weighted(&[u32::MAX, u32::MAX], u32::MAX), Some(1));
    // A sole destination gets everything, even at weight 0; no destinations, nothing.
    assert_eq!(pick_weighted(&[0], 7), Some(0));
    assert_eq!(pick_weighted(&[0, 0], 7), None);
    assert_eq!(pick_weighted(&[], 7), None);
}

#[test]
fn percentage_hit_per_million() {
    assert!(!percentage_hit(0.0, 0));
    assert!(percentage_hit(100.0, 999_999));
    assert!(percentage_hit(0.0001, 0));
    assert!(!percentage_hit(0.0001, 1));
    assert!(percentage_hit(50.0, 499_999));
    assert!(!percentage_hit(50.0, 500_000));
    assert!(
        percentage_hit(50.0, 1_000_000),
        "roll wraps modulo one million"
    );
    assert!(!percentage_hit(f64::NAN, 0));
    assert!(percentage_hit(250.0, 999_999), "clamped to 100");
    assert!(!percentage_hit(-3.0, 0), "clamped to 0");
    let hits = (0..1_000_000u32)
        .step_by(7)
        .filter(|r| percentage_hit(12.5, *r))
        .count();
    let total = (0..1_000_000u32).step_by(7).count();
    assert!(((hits as f64 / total as f64) - 0.125).abs() < 0.001);
}
