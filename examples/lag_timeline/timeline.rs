//! The simulation and the drawing behind `docs/lag_timeline.svg`, shared by
//! the example (`main.rs`) and `tests/lag_timeline.rs`.
//!
//! Three regions on a [`ChannelNetwork`] under tokio's paused clock write
//! steadily for a minute of virtual time; one region is cut off from
//! [`PARTITION_START`] to [`PARTITION_END`]. Every write's (seq, time) is
//! recorded at its origin, and every [`SAMPLE_EVERY`] the lag of each peer
//! behind each origin is measured from the outside: the age of the oldest
//! write of the origin not yet in the peer's `applied()` vector (zero when
//! it holds them all). Everything is drawn from [`SEED`] and the paused
//! clock, so the picture is the same bytes on every run.

use std::time::Duration;

use archipelago::clock::{PhysicalClock, ReplicaId};
use archipelago::crdt::GCounter;
use archipelago::region::{Region, RegionConfig, RegionError, Table};
use archipelago::transport::{ChannelNetwork, LinkFaults};
use plotters::prelude::*;

/// The network's seed: its jitter and losses.
pub const SEED: u64 = 12;
/// The regions, in drawing order.
pub const REGIONS: [&str; 3] = ["ap-northeast", "eu-central", "us-east"];
/// The region cut off from the others during the partition.
pub const ISOLATED: &str = "us-east";
/// Virtual time simulated.
pub const RUN: Duration = Duration::from_secs(60);
/// Every region writes once per this period, all at the same instant.
pub const WRITE_EVERY: Duration = Duration::from_millis(200);
/// How often lag is measured: the step of the picture.
pub const SAMPLE_EVERY: Duration = Duration::from_millis(100);
/// When [`ISOLATED`] is cut off.
pub const PARTITION_START: Duration = Duration::from_secs(20);
/// When the partition heals.
pub const PARTITION_END: Duration = Duration::from_secs(40);
/// Per-frame jitter on every link.
pub const JITTER: Duration = Duration::from_millis(10);
/// Probability that a link loses a frame.
pub const LOSS: f64 = 0.01;
/// Picture size in pixels.
pub const SIZE_PX: (u32, u32) = (960, 480);

/// One-way latency of each pair of regions.
const LATENCY_MS: [(&str, &str, u64); 3] = [
    ("ap-northeast", "eu-central", 110),
    ("ap-northeast", "us-east", 75),
    ("eu-central", "us-east", 45),
];

/// What one run measured.
#[derive(Clone, Debug, PartialEq)]
pub struct Timeline {
    /// One line per (origin, peer): label and (seconds, lag in seconds) per sample.
    pub lines: Vec<(String, Vec<(f64, f64)>)>,
    /// First sample instant after the heal (seconds) at which every applied
    /// vector equals every other and every lag is zero.
    pub converged_at: Option<f64>,
}

impl Timeline {
    /// The largest lag of any peer behind any origin, in seconds.
    pub fn lag_max(&self) -> f64 {
        self.lines
            .iter()
            .flat_map(|(_, points)| points.iter().map(|&(_, lag)| lag))
            .fold(0.0, f64::max)
    }
}

/// Wall-clock milliseconds that follow tokio's (paused) clock, so every
/// stamp is the same on every run.
struct PausedClock {
    start: tokio::time::Instant,
}

impl PhysicalClock for PausedClock {
    fn now_ms(&self) -> u64 {
        1_764_000_000_000 + self.start.elapsed().as_millis() as u64
    }
}

/// Runs the minute of writes, partition and heal; measures the lags.
pub fn simulate() -> Result<Timeline, RegionError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .map_err(|_| RegionError::NoRuntime)?;
    runtime.block_on(run())
}

async fn run() -> Result<Timeline, RegionError> {
    let net = ChannelNetwork::new(SEED);
    for (a, b, ms) in LATENCY_MS {
        let link = LinkFaults::new()
            .latency(Duration::from_millis(ms))
            .jitter(JITTER)
            .loss(LOSS);
        net.set_faults(a, b, link.clone());
        net.set_faults(b, a, link);
    }
    let regions = REGIONS
        .iter()
        .map(|&name| {
            Region::builder(name)
                .replica_id(ReplicaId::from_name(name))
                .transport(net.endpoint(name))
                .clock(PausedClock {
                    start: tokio::time::Instant::now(),
                })
                .config(RegionConfig::default())
                .build()
        })
        .collect::<Result<Vec<Region>, _>>()?;
    let hits = regions
        .iter()
        .map(|r| r.table::<String, GCounter>("hits"))
        .collect::<Result<Vec<Table<String, GCounter>>, _>>()?;

    let n = regions.len();
    // writes[o]: (seq, time) of every write of origin o, in seq order.
    let mut writes: Vec<Vec<(u64, Duration)>> = vec![Vec::new(); n];
    let mut lines: Vec<(String, Vec<(f64, f64)>)> = Vec::new();
    let mut pairs = Vec::new();
    for (o, origin) in REGIONS.iter().enumerate() {
        for (p, peer) in REGIONS.iter().enumerate().filter(|&(p, _)| p != o) {
            lines.push((format!("{origin} → {peer}"), Vec::new()));
            pairs.push((o, p));
        }
    }
    let mut converged_at = None;
    let (mut cut, mut healed) = (false, false);
    let start = tokio::time::Instant::now();
    let steps = (RUN.as_millis() / SAMPLE_EVERY.as_millis()) as u32;
    for step in 0..=steps {
        tokio::time::sleep_until(start + SAMPLE_EVERY * step).await;
        let now = start.elapsed();
        if !cut && now >= PARTITION_START {
            net.isolate(ISOLATED);
            cut = true;
        }
        if !healed && now >= PARTITION_END {
            net.heal_all();
            healed = true;
        }
        // Measure first, then write: a sample sees what the last round's
        // writes reached.
        let applied: Vec<_> = regions.iter().map(Region::applied).collect();
        let mut lag_total = Duration::ZERO;
        for (line, &(o, p)) in lines.iter_mut().zip(&pairs) {
            let held = applied[p].get(regions[o].replica());
            let oldest_missing = writes[o].iter().find(|&&(seq, _)| seq > held);
            let lag = oldest_missing.map_or(Duration::ZERO, |&(_, at)| now - at);
            lag_total += lag;
            line.1.push((now.as_secs_f64(), lag.as_secs_f64()));
        }
        let equal = applied.windows(2).all(|w| w[0] == w[1]);
        if healed && converged_at.is_none() && equal && lag_total.is_zero() {
            converged_at = Some(now.as_secs_f64());
        }
        if now < RUN && now.as_millis().is_multiple_of(WRITE_EVERY.as_millis()) {
            for (o, (region, table)) in regions.iter().zip(&hits).enumerate() {
                table
                    .update("hits", |c, ctx| c.apply(|c| c.inc(ctx.replica(), 1)))
                    .await?;
                writes[o].push((region.applied().get(region.replica()), now));
            }
        }
    }
    Ok(Timeline {
        lines,
        converged_at,
    })
}

const COLORS: [RGBColor; 6] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
];

/// Draws `timeline` as an SVG document.
pub fn render(timeline: &Timeline) -> Result<String, Box<dyn std::error::Error>> {
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, SIZE_PX).into_drawing_area();
        root.fill(&WHITE)?;
        let run_s = RUN.as_secs_f64();
        let y_max = (timeline.lag_max() * 1.1).max(1.0);
        let mut chart = ChartBuilder::on(&root)
            .caption(
                "Replication lag per peer: three regions, us-east cut off 0:20-0:40",
                ("sans-serif", 20),
            )
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(56)
            .build_cartesian_2d(0.0..run_s, 0.0..y_max)?;
        chart
            .configure_mesh()
            .x_desc("virtual time (s)")
            .y_desc("lag: age of oldest write not applied (s)")
            .x_labels(13)
            .x_label_formatter(&|x| format!("{x:.0}"))
            .y_label_formatter(&|y| format!("{y:.0}"))
            .draw()?;

        let (cut, heal) = (PARTITION_START.as_secs_f64(), PARTITION_END.as_secs_f64());
        chart
            .draw_series(std::iter::once(Rectangle::new(
                [(cut, 0.0), (heal, y_max)],
                RGBColor(128, 128, 128).mix(0.15).filled(),
            )))?
            .label("partition")
            .legend(|(x, y)| {
                Rectangle::new(
                    [(x, y - 5), (x + 20, y + 5)],
                    RGBColor(128, 128, 128).mix(0.3).filled(),
                )
            });

        for ((label, points), color) in timeline.lines.iter().zip(COLORS.iter().cycle()) {
            let color = *color;
            chart
                .draw_series(LineSeries::new(
                    points.iter().copied(),
                    color.stroke_width(2),
                ))?
                .label(label)
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
                });
        }

        if let Some(at) = timeline.converged_at {
            chart
                .draw_series(std::iter::once(PathElement::new(
                    vec![(at, 0.0), (at, y_max)],
                    BLACK.stroke_width(2),
                )))?
                .label(format!("converged at {at:.1} s"))
                .legend(|(x, y)| {
                    PathElement::new(vec![(x, y), (x + 20, y)], BLACK.stroke_width(2))
                });
        }

        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperRight)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .draw()?;
        root.present()?;
    }
    Ok(svg)
}
