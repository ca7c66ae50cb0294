//! The wire codec: the one place that turns values into bytes and back.
//!
//! Every byte the crate sends or stores goes through [`encode`] and
//! [`decode`]; nothing else names the codec (bincode 2, compact variable-
//! length integers), so it can be swapped here alone. Each frame opens with
//! a version byte, [`WIRE_VERSION`], so a future codec can be told apart.
//!
//! Decoding treats its input as hostile: it never panics, refuses frames
//! longer than [`FRAME_BYTES_MAX`] before reading them, caps every
//! allocation a length prefix asks for at that same limit, and reports a
//! typed [`WireError`].
//!
//! ```
//! use archipelago::crdt::GCounter;
//! use archipelago::clock::ReplicaId;
//! use archipelago::wire;
//!
//! let mut hits = GCounter::new();
//! hits.inc(ReplicaId::new(1), 3);
//! let bytes = wire::encode(&hits)?;
//! let back: GCounter = wire::decode(&bytes)?;
//! assert_eq!(back, hits);
//!
//! assert!(wire::decode::<GCounter>(&[0xff, 1, 2]).is_err()); // unknown version
//! # Ok::<(), wire::WireError>(())
//! ```

use serde::Serialize;
use serde::de::DeserializeOwned;

/// The version byte every frame starts with.
pub const WIRE_VERSION: u8 = 1;

/// The largest frame [`encode`] produces and [`decode`] accepts, in bytes.
pub const FRAME_BYTES_MAX: usize = 64 * 1024 * 1024;

type Config = bincode::config::Configuration<
    bincode::config::LittleEndian,
    bincode::config::Varint,
    bincode::config::Limit<FRAME_BYTES_MAX>,
>;

const fn config() -> Config {
    bincode::config::standard().with_limit::<FRAME_BYTES_MAX>()
}

/// Why a value could not be encoded or a frame decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    /// The frame is empty: not even a version byte.
    #[error("empty frame")]
    Empty,
    /// The frame was written by a codec version we do not speak.
    #[error("unsupported wire version {found} (this build speaks {WIRE_VERSION})")]
    UnsupportedVersion {
        /// The version byte found.
        found: u8,
    },
    /// The frame is longer than [`FRAME_BYTES_MAX`].
    #[error("frame of {len} bytes exceeds the {FRAME_BYTES_MAX}-byte limit")]
    TooLarge {
        /// Its length.
        len: usize,
    },
    /// The body does not decode as the expected type (truncated, corrupt,
    /// or failing the type's own validation).
    #[error("malformed frame: {0}")]
    Malformed(String),
    /// The body decoded but bytes were left over.
    #[error("{extra} unexpected bytes after the value")]
    TrailingBytes {
        /// How many.
        extra: usize,
    },
    /// The value could not be encoded.
    #[error("cannot encode: {0}")]
    Encode(String),
}

/// Encodes `value` into a frame: the version byte, then the body.
///
/// # Errors
/// [`WireError::Encode`] when serde reports an error for the value, and
/// [`WireError::TooLarge`] when the frame would exceed [`FRAME_BYTES_MAX`].
pub fn encode<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, WireError> {
    let mut frame = Vec::with_capacity(64);
    frame.push(WIRE_VERSION);
    encode_into(value, &mut frame)?;
    Ok(frame)
}

/// Appends the body of `value` (no version byte) to `out`.
fn encode_into<T: Serialize + ?Sized>(value: &T, out: &mut Vec<u8>) -> Result<(), WireError> {
    bincode::serde::encode_into_std_write(value, out, config())
        .map_err(|e| WireError::Encode(e.to_string()))?;
    if out.len() > FRAME_BYTES_MAX {
        return Err(WireError::TooLarge { len: out.len() });
    }
    Ok(())
}

/// Decodes a frame made by [`encode`].
///
/// # Errors
/// A [`WireError`] naming what is wrong with the frame; never panics.
pub fn decode<T: DeserializeOwned>(frame: &[u8]) -> Result<T, WireError> {
    let (&version, body) = frame.split_first().ok_or(WireError::Empty)?;
    if version != WIRE_VERSION {
        return Err(WireError::UnsupportedVersion { found: version });
    }
    if frame.len() > FRAME_BYTES_MAX {
        return Err(WireError::TooLarge { len: frame.len() });
    }
    let (value, read) = bincode::serde::decode_from_slice::<T, _>(body, config())
        .map_err(|e| WireError::Malformed(e.to_string()))?;
    if read != body.len() {
        return Err(WireError::TrailingBytes {
            extra: body.len() - read,
        });
    }
    Ok(value)
}

/// The encoded size of `value` in bytes, version byte included.
///
/// # Errors
/// As [`encode`].
pub fn encoded_len<T: Serialize + ?Sized>(value: &T) -> Result<usize, WireError> {
    encode(value).map(|frame| frame.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_empty_unknown_version_truncated_and_trailing() {
        assert_eq!(decode::<u64>(&[]), Err(WireError::Empty));
        assert_eq!(
            decode::<u64>(&[9, 1]),
            Err(WireError::UnsupportedVersion { found: 9 })
        );
        let frame = encode(&(1u64, 70_000u64)).unwrap();
        assert!(matches!(
            decode::<(u64, u64)>(&frame[..frame.len() - 1]),
            Err(WireError::Malformed(_))
        ));
        let mut long = frame.clone();
        long.push(0);
        assert_eq!(
            decode::<(u64, u64)>(&long),
            Err(WireError::TrailingBytes { extra: 1 })
        );
    }

    #[test]
    fn huge_length_prefix_is_refused_without_allocating() {
        // A vector claiming u64::MAX elements.
        let frame = [WIRE_VERSION, 255, 255, 255, 255, 255, 255, 255, 255, 255];
        assert!(matches!(
            decode::<Vec<u64>>(&frame),
            Err(WireError::Malformed(_))
        ));
    }
}
