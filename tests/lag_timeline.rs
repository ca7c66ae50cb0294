//! The picture of convergence (`docs/lag_timeline.svg`): deterministic from
//! its seed, up to date with the code that draws it, and showing what it
//! claims (lag grows through the partition, converges soon after the heal).

#[path = "../examples/lag_timeline/timeline.rs"]
mod timeline;

use std::path::PathBuf;

/// How soon after the heal the regions must have converged, in seconds:
/// the default `ack_timeout` (500 ms) resends what the partition dropped.
const CONVERGE_AFTER_HEAL_S_MAX: f64 = 3.0;

fn render_to(path: &PathBuf) -> timeline::Timeline {
    let measured = timeline::simulate().expect("simulation");
    let svg = timeline::render(&measured).expect("render");
    std::fs::write(path, svg).expect("write svg");
    measured
}

#[test]
fn renders_the_same_bytes_twice_and_matches_the_committed_picture() {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    let (first, second) = (
        dir.join("lag_timeline_1.svg"),
        dir.join("lag_timeline_2.svg"),
    );
    let a = render_to(&first);
    let b = render_to(&second);
    assert_eq!(a, b, "two runs measured different lags");
    let (first, second) = (
        std::fs::read(first).unwrap(),
        std::fs::read(second).unwrap(),
    );
    assert!(first == second, "two renders gave different SVG bytes");

    let committed = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("docs/lag_timeline.svg");
    let committed = std::fs::read(committed).expect("docs/lag_timeline.svg is committed");
    assert!(
        committed == first,
        "docs/lag_timeline.svg is stale: run `cargo run --release --example lag_timeline` and commit it"
    );
}

#[test]
fn lag_grows_through_the_partition_and_converges_after_the_heal() {
    let measured = timeline::simulate().expect("simulation");
    let cut = timeline::PARTITION_START.as_secs_f64();
    let heal = timeline::PARTITION_END.as_secs_f64();
    let partition_s = heal - cut;
    for (label, points) in &measured.lines {
        let involves_isolated = label.contains(timeline::ISOLATED);
        let worst = points.iter().map(|&(_, lag)| lag).fold(0.0, f64::max);
        if involves_isolated {
            // The cut-off side misses every write of the partition.
            assert!(
                worst >= partition_s - 1.0,
                "{label}: lag peaked at {worst} s"
            );
        } else {
            assert!(worst < 1.0, "{label}: lag {worst} s on a link never cut");
        }
        let after: Vec<_> = points.iter().filter(|&&(t, _)| t > heal + 5.0).collect();
        assert!(
            after.iter().all(|&&(_, lag)| lag < 1.0),
            "{label}: still behind after the heal"
        );
    }
    let at = measured.converged_at.expect("converged after the heal");
    assert!(
        at > heal && at - heal <= CONVERGE_AFTER_HEAL_S_MAX,
        "converged at {at} s, heal at {heal} s"
    );
}
