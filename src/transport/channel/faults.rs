//! What a simulated link does to the frames it carries: the fault model
//! ([`LinkFaults`]) and the per-link generator that draws the faults from
//! the network's seed, so that a schedule replays exactly.

use std::time::Duration;

use super::ChannelNetwork;

/// The faults one directed link applies to every frame it carries.
///
/// The default is a perfect link: no delay, no loss, no duplication, no
/// reordering. Probabilities outside `0.0..=1.0` act as the nearest bound
/// (NaN as `0.0`); the builder methods reject them.
///
/// ```
/// use std::time::Duration;
///
/// use archipelago::transport::LinkFaults;
///
/// let transatlantic = LinkFaults::new()
///     .latency(Duration::from_millis(80))
///     .jitter(Duration::from_millis(10))
///     .loss(0.01);
/// assert_eq!(transatlantic.duplicate, 0.0);
/// ```
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LinkFaults {
    /// Fixed one-way delay of every frame (a duration; zero = delivered as
    /// soon as the receiver asks).
    pub latency: Duration,
    /// Extra delay drawn uniformly from `0..=jitter` for each frame (a
    /// duration). Jitter alone can reorder frames sent close together.
    pub jitter: Duration,
    /// Probability in `0.0..=1.0` that a frame is dropped.
    pub loss: f64,
    /// Probability in `0.0..=1.0` that a frame (not lost) is delivered
    /// twice; each copy gets its own delay.
    pub duplicate: f64,
    /// Probability in `0.0..=1.0` that a frame is held back by an extra
    /// delay drawn uniformly from `0..=2 × (latency + jitter) + 1 ms`, so
    /// that frames sent after it overtake it.
    pub reorder: f64,
}

impl LinkFaults {
    /// A perfect link, to refine with the builder methods.
    pub const fn new() -> Self {
        LinkFaults {
            latency: Duration::ZERO,
            jitter: Duration::ZERO,
            loss: 0.0,
            duplicate: 0.0,
            reorder: 0.0,
        }
    }

    /// Sets the fixed one-way delay.
    pub const fn latency(mut self, latency: Duration) -> Self {
        self.latency = latency;
        self
    }

    /// Sets the maximum extra delay, drawn uniformly per frame.
    pub const fn jitter(mut self, jitter: Duration) -> Self {
        self.jitter = jitter;
        self
    }

    /// Sets the probability that a frame is dropped.
    ///
    /// # Panics
    /// If `probability` is not within `0.0..=1.0`.
    pub fn loss(mut self, probability: f64) -> Self {
        self.loss = checked_probability("loss", probability);
        self
    }

    /// Sets the probability that a frame is delivered twice.
    ///
    /// # Panics
    /// If `probability` is not within `0.0..=1.0`.
    pub fn duplicate(mut self, probability: f64) -> Self {
        self.duplicate = checked_probability("duplicate", probability);
        self
    }

    /// Sets the probability that a frame is held back for later frames to
    /// overtake.
    ///
    /// # Panics
    /// If `probability` is not within `0.0..=1.0`.
    pub fn reorder(mut self, probability: f64) -> Self {
        self.reorder = checked_probability("reorder", probability);
        self
    }
}

fn checked_probability(what: &str, probability: f64) -> f64 {
    assert!(
        (0.0..=1.0).contains(&probability),
        "LinkFaults::{what}: probability {probability} is not within 0.0..=1.0"
    );
    probability
}

/// SplitMix64 (Steele, Lea, Flood 2014): tiny, fast, and good enough to
/// draw faults; not for cryptography.
pub(super) struct SplitMix64 {
    state: u64,
}

impl SplitMix64 {
    /// The generator of the link `from` → `to`: the network's seed mixed
    /// with a stable hash (FNV-1a) of the link's names.
    pub(super) fn for_link(seed: u64, from: &str, to: &str) -> Self {
        let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
        let separator = [0xff_u8]; // never in UTF-8, so ("ab","c") ≠ ("a","bc")
        for byte in from.bytes().chain(separator).chain(to.bytes()) {
            hash ^= u64::from(byte);
            hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
        }
        let mut mixer = SplitMix64 { state: seed ^ hash };
        SplitMix64 {
            state: mixer.next_u64(),
        }
    }

    fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0.0..1.0`.
    fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1_u64 << 53) as f64
    }

    /// True with `probability`; draws nothing when it is zero (or NaN).
    pub(super) fn chance(&mut self, probability: f64) -> bool {
        probability > 0.0 && self.next_f64() < probability
    }

    /// Uniform in `0..=max`, to the nanosecond.
    fn up_to(&mut self, max: Duration) -> Duration {
        if max.is_zero() {
            return Duration::ZERO;
        }
        let max_nanos = u64::try_from(max.as_nanos()).unwrap_or(u64::MAX);
        let nanos = match max_nanos.checked_add(1) {
            Some(span) => self.next_u64() % span,
            None => self.next_u64(),
        };
        Duration::from_nanos(nanos)
    }

    /// The delay of one frame over a link with `faults`.
    pub(super) fn delay(&mut self, faults: &LinkFaults) -> Duration {
        let mut delay = faults.latency.saturating_add(self.up_to(faults.jitter));
        if self.chance(faults.reorder) {
            let hold_max = faults
                .latency
                .saturating_add(faults.jitter)
                .saturating_mul(2)
                .saturating_add(Duration::from_millis(1));
            delay = delay.saturating_add(self.up_to(hold_max));
        }
        delay.min(ChannelNetwork::FRAME_DELAY_MAX)
    }
}
