use std::fmt;

use serde::{Deserialize, Serialize};

use super::SnowflakeError;

/// Bits of a Snowflake id that carry information. The 64th, the sign bit of
/// an `i64`, is always 0, so every id is a positive `i64`.
pub const SNOWFLAKE_BITS: u32 = 63;
/// Default width of the timestamp field: 2^41 ms, about 69.7 years.
pub const TIMESTAMP_BITS_DEFAULT: u32 = 41;
/// Default width of the region field: 32 regions.
pub const REGION_BITS_DEFAULT: u32 = 5;
/// Default width of the machine field: 32 generators per region.
pub const MACHINE_BITS_DEFAULT: u32 = 5;
/// Default width of the sequence field: 4,096 ids per millisecond per generator.
pub const SEQUENCE_BITS_DEFAULT: u32 = 12;
/// Default custom epoch: 2024-01-01T00:00:00Z, in ms since the Unix epoch.
/// With 41 timestamp bits, ids run out in September 2093.
pub const EPOCH_MS_DEFAULT: u64 = 1_704_067_200_000;
/// Widest timestamp field: 63 bits less the one bit a sequence needs.
pub const TIMESTAMP_BITS_MAX: u32 = SNOWFLAKE_BITS - 1;
/// Widest region, machine or sequence field: their values are `u32`.
pub const FIELD_BITS_MAX: u32 = 32;

/// Why a [`SnowflakeLayout`] was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum LayoutError {
    /// The four fields must fill exactly the 63 low bits of the id.
    #[error(
        "layout bits sum to {total}, not {SNOWFLAKE_BITS}: timestamp {timestamp_bits} + region {region_bits} + machine {machine_bits} + sequence {sequence_bits}"
    )]
    BitsSum {
        /// Width asked for the timestamp field.
        timestamp_bits: u32,
        /// Width asked for the region field.
        region_bits: u32,
        /// Width asked for the machine field.
        machine_bits: u32,
        /// Width asked for the sequence field.
        sequence_bits: u32,
        /// Their sum.
        total: u32,
    },
    /// The timestamp and sequence fields need at least one bit each.
    #[error("the {field} field needs at least one bit")]
    ZeroWidth {
        /// `"timestamp"` or `"sequence"`.
        field: &'static str,
    },
    /// A field is wider than its value type or the id allows.
    #[error("the {field} field is {bits} bits wide, past the {bits_max}-bit maximum")]
    TooWide {
        /// `"timestamp"`, `"region"`, `"machine"` or `"sequence"`.
        field: &'static str,
        /// Width asked for.
        bits: u32,
        /// The maximum for that field.
        bits_max: u32,
    },
    /// The epoch is so late that the layout's last timestamp does not fit in
    /// a `u64` of Unix milliseconds.
    #[error("epoch {epoch_ms} ms plus the largest timestamp ({timestamp_max_ms} ms) overflows u64")]
    EpochTooLate {
        /// The epoch asked for, in ms since the Unix epoch.
        epoch_ms: u64,
        /// The largest value of the timestamp field, in ms.
        timestamp_max_ms: u64,
    },
}

/// How the 63 bits of a Snowflake id are split, and the epoch its timestamp
/// counts from.
///
/// From the most significant bit down: a 0 sign bit, milliseconds since the
/// epoch, the region, the machine, the sequence within the millisecond.
/// Ordering ids orders them by time first. The default is 41/5/5/12 from
/// 2024-01-01 ([`SnowflakeLayout::DEFAULT`]).
///
/// ```
/// use archipelago::id::{LayoutError, SnowflakeLayout};
///
/// // 8 regions of 64 machines, 1,024 ids per ms each.
/// let layout = SnowflakeLayout::builder()
///     .timestamp_bits(44)
///     .region_bits(3)
///     .machine_bits(6)
///     .sequence_bits(10)
///     .build()?;
/// assert_eq!((layout.region_max(), layout.machine_max(), layout.ids_per_ms()), (7, 63, 1_024));
///
/// // Bits that do not add up to 63 are refused.
/// let err = SnowflakeLayout::builder().region_bits(4).build().unwrap_err();
/// assert!(matches!(err, LayoutError::BitsSum { total: 62, .. }));
/// # Ok::<(), LayoutError>(())
/// ```
///
/// Deserialising checks the layout as [`build`](SnowflakeLayoutBuilder::build)
/// does.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "LayoutFields", into = "LayoutFields")]
pub struct SnowflakeLayout {
    timestamp_bits: u32,
    region_bits: u32,
    machine_bits: u32,
    sequence_bits: u32,
    epoch_ms: u64,
}

impl SnowflakeLayout {
    /// 41 bits of ms since 2024-01-01, 5 of region, 5 of machine, 12 of sequence.
    pub const DEFAULT: SnowflakeLayout = SnowflakeLayout {
        timestamp_bits: TIMESTAMP_BITS_DEFAULT,
        region_bits: REGION_BITS_DEFAULT,
        machine_bits: MACHINE_BITS_DEFAULT,
        sequence_bits: SEQUENCE_BITS_DEFAULT,
        epoch_ms: EPOCH_MS_DEFAULT,
    };

    /// A builder starting from the default layout.
    pub fn builder() -> SnowflakeLayoutBuilder {
        SnowflakeLayoutBuilder {
            layout: Self::DEFAULT,
        }
    }

    /// Width of the timestamp field.
    pub const fn timestamp_bits(&self) -> u32 {
        self.timestamp_bits
    }

    /// Width of the region field.
    pub const fn region_bits(&self) -> u32 {
        self.region_bits
    }

    /// Width of the machine field.
    pub const fn machine_bits(&self) -> u32 {
        self.machine_bits
    }

    /// Width of the sequence field.
    pub const fn sequence_bits(&self) -> u32 {
        self.sequence_bits
    }

    /// The custom epoch, in ms since the Unix epoch.
    pub const fn epoch_ms(&self) -> u64 {
        self.epoch_ms
    }

    /// The largest region number this layout holds.
    pub const fn region_max(&self) -> u32 {
        mask(self.region_bits) as u32
    }

    /// The largest machine number this layout holds.
    pub const fn machine_max(&self) -> u32 {
        mask(self.machine_bits) as u32
    }

    /// The largest sequence number within one millisecond.
    pub const fn sequence_max(&self) -> u32 {
        mask(self.sequence_bits) as u32
    }

    /// Ids one generator can issue per millisecond: its throughput limit.
    pub const fn ids_per_ms(&self) -> u64 {
        1 << self.sequence_bits
    }

    /// The largest timestamp field, in ms since the custom epoch.
    pub const fn timestamp_max_ms(&self) -> u64 {
        mask(self.timestamp_bits)
    }

    /// The last millisecond, since the Unix epoch, an id can carry.
    pub const fn last_unix_ms(&self) -> u64 {
        // Checked when the layout was built.
        self.epoch_ms + self.timestamp_max_ms()
    }

    /// Splits an id made with this layout into its fields.
    ///
    /// An id made with another layout splits into meaningless fields: the
    /// layout is not recorded in the id.
    pub const fn parse(&self, id: SnowflakeId) -> SnowflakeParts {
        let id = id.0;
        let since_epoch_ms = id >> self.node_shift();
        SnowflakeParts {
            unix_ms: self.epoch_ms + since_epoch_ms,
            since_epoch_ms,
            region: ((id >> (self.machine_bits + self.sequence_bits)) & mask(self.region_bits))
                as u32,
            machine: ((id >> self.sequence_bits) & mask(self.machine_bits)) as u32,
            sequence: (id & mask(self.sequence_bits)) as u32,
        }
    }

    /// Bits below the timestamp field.
    pub(super) const fn node_shift(&self) -> u32 {
        self.region_bits + self.machine_bits + self.sequence_bits
    }

    /// Region and machine in their places, ready to be or-ed into an id.
    pub(super) const fn node(&self, region: u32, machine: u32) -> u64 {
        ((region as u64) << (self.machine_bits + self.sequence_bits))
            | ((machine as u64) << self.sequence_bits)
    }

    /// The id for a slot `(since_epoch_ms << sequence_bits) | sequence` of
    /// the generator whose [`node`](Self::node) is `node`.
    pub(super) const fn compose(&self, slot: u64, node: u64) -> SnowflakeId {
        let sequence = slot & mask(self.sequence_bits);
        let ms = slot >> self.sequence_bits;
        debug_assert!(ms <= self.timestamp_max_ms());
        SnowflakeId((ms << self.node_shift()) | node | sequence)
    }

    fn validate(self) -> Result<Self, LayoutError> {
        let widths = [
            ("timestamp", self.timestamp_bits, TIMESTAMP_BITS_MAX),
            ("region", self.region_bits, FIELD_BITS_MAX),
            ("machine", self.machine_bits, FIELD_BITS_MAX),
            ("sequence", self.sequence_bits, FIELD_BITS_MAX),
        ];
        for (field, bits, bits_max) in widths {
            if bits > bits_max {
                return Err(LayoutError::TooWide {
                    field,
                    bits,
                    bits_max,
                });
            }
        }
        for (field, bits) in [
            ("timestamp", self.timestamp_bits),
            ("sequence", self.sequence_bits),
        ] {
            if bits == 0 {
                return Err(LayoutError::ZeroWidth { field });
            }
        }
        let total = self.timestamp_bits + self.region_bits + self.machine_bits + self.sequence_bits;
        if total != SNOWFLAKE_BITS {
            return Err(LayoutError::BitsSum {
                timestamp_bits: self.timestamp_bits,
                region_bits: self.region_bits,
                machine_bits: self.machine_bits,
                sequence_bits: self.sequence_bits,
                total,
            });
        }
        if self.epoch_ms.checked_add(self.timestamp_max_ms()).is_none() {
            return Err(LayoutError::EpochTooLate {
                epoch_ms: self.epoch_ms,
                timestamp_max_ms: self.timestamp_max_ms(),
            });
        }
        Ok(self)
    }
}

/// The serialised form of a [`SnowflakeLayout`], checked on the way in.
#[derive(Clone, Copy, Serialize, Deserialize)]
struct LayoutFields {
    timestamp_bits: u32,
    region_bits: u32,
    machine_bits: u32,
    sequence_bits: u32,
    epoch_ms: u64,
}

impl TryFrom<LayoutFields> for SnowflakeLayout {
    type Error = LayoutError;

    fn try_from(f: LayoutFields) -> Result<Self, LayoutError> {
        SnowflakeLayout {
            timestamp_bits: f.timestamp_bits,
            region_bits: f.region_bits,
            machine_bits: f.machine_bits,
            sequence_bits: f.sequence_bits,
            epoch_ms: f.epoch_ms,
        }
        .validate()
    }
}

impl From<SnowflakeLayout> for LayoutFields {
    fn from(l: SnowflakeLayout) -> Self {
        LayoutFields {
            timestamp_bits: l.timestamp_bits,
            region_bits: l.region_bits,
            machine_bits: l.machine_bits,
            sequence_bits: l.sequence_bits,
            epoch_ms: l.epoch_ms,
        }
    }
}

impl Default for SnowflakeLayout {
    fn default() -> Self {
        Self::DEFAULT
    }
}

impl fmt::Debug for SnowflakeLayout {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "SnowflakeLayout({}/{}/{}/{} from {} ms)",
            self.timestamp_bits,
            self.region_bits,
            self.machine_bits,
            self.sequence_bits,
            self.epoch_ms
        )
    }
}

/// Builds a [`SnowflakeLayout`]; every field starts at its default.
#[derive(Clone, Copy, Debug)]
#[must_use = "a builder does nothing until `build` is called"]
pub struct SnowflakeLayoutBuilder {
    layout: SnowflakeLayout,
}

impl SnowflakeLayoutBuilder {
    /// Width of the timestamp field (default 41).
    pub fn timestamp_bits(mut self, bits: u32) -> Self {
        self.layout.timestamp_bits = bits;
        self
    }

    /// Width of the region field (default 5; 0 for a single region).
    pub fn region_bits(mut self, bits: u32) -> Self {
        self.layout.region_bits = bits;
        self
    }

    /// Width of the machine field (default 5; 0 for one generator per region).
    pub fn machine_bits(mut self, bits: u32) -> Self {
        self.layout.machine_bits = bits;
        self
    }

    /// Width of the sequence field (default 12).
    pub fn sequence_bits(mut self, bits: u32) -> Self {
        self.layout.sequence_bits = bits;
        self
    }

    /// The custom epoch, in ms since the Unix epoch (default 2024-01-01).
    pub fn epoch_ms(mut self, epoch_ms: u64) -> Self {
        self.layout.epoch_ms = epoch_ms;
        self
    }

    /// The layout.
    ///
    /// # Errors
    /// A [`LayoutError`] when a field is too wide, the timestamp or sequence
    /// field is empty, the widths do not sum to 63, or the epoch is so late
    /// the last timestamp overflows.
    pub fn build(self) -> Result<SnowflakeLayout, LayoutError> {
        self.layout.validate()
    }
}

/// A 64-bit Snowflake id: a positive `i64`, ordered by time first.
///
/// Serialises as an `i64`; deserialising a negative number fails.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "i64", into = "i64")]
pub struct SnowflakeId(u64);

impl SnowflakeId {
    /// The id as a positive `i64`, for a `BIGINT` column.
    pub const fn as_i64(self) -> i64 {
        // The top bit is always 0.
        self.0 as i64
    }

    /// The id as a `u64` (below 2^63).
    pub const fn as_u64(self) -> u64 {
        self.0
    }
}

impl TryFrom<i64> for SnowflakeId {
    type Error = SnowflakeError;

    fn try_from(id: i64) -> Result<Self, SnowflakeError> {
        u64::try_from(id)
            .map(SnowflakeId)
            .map_err(|_| SnowflakeError::NegativeId { id })
    }
}

impl From<SnowflakeId> for i64 {
    fn from(id: SnowflakeId) -> i64 {
        id.as_i64()
    }
}

impl fmt::Debug for SnowflakeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SnowflakeId({})", self.0)
    }
}

impl fmt::Display for SnowflakeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

/// The fields of a Snowflake id, from [`SnowflakeLayout::parse`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SnowflakeParts {
    /// When the id was issued, in ms since the Unix epoch.
    pub unix_ms: u64,
    /// When the id was issued, in ms since the layout's epoch.
    pub since_epoch_ms: u64,
    /// The region number of the generator.
    pub region: u32,
    /// The machine number of the generator within its region.
    pub machine: u32,
    /// The id's place within its millisecond.
    pub sequence: u32,
}

/// The `bits` low bits set (`bits` ≤ 63).
const fn mask(bits: u32) -> u64 {
    (1 << bits) - 1
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layouts_round_trip_through_json_and_bad_ones_are_refused() {
        let json = serde_json::to_string(&SnowflakeLayout::DEFAULT).unwrap();
        let back: SnowflakeLayout = serde_json::from_str(&json).unwrap();
        assert_eq!(back, SnowflakeLayout::DEFAULT);
        let bad = json.replace("\"sequence_bits\":12", "\"sequence_bits\":0");
        assert_ne!(bad, json);
        assert!(serde_json::from_str::<SnowflakeLayout>(&bad).is_err());
    }

    #[test]
    fn parse_splits_the_fields() {
        let layout = SnowflakeLayout::DEFAULT;
        let id = layout.compose((1_234 << 12) | 56, layout.node(7, 9));
        let parts = layout.parse(id);
        assert_eq!(
            parts,
            SnowflakeParts {
                unix_ms: EPOCH_MS_DEFAULT + 1_234,
                since_epoch_ms: 1_234,
                region: 7,
                machine: 9,
                sequence: 56,
            }
        );
        assert_eq!(id.as_u64(), (1_234 << 22) | (7 << 17) | (9 << 12) | 56);
    }
}
