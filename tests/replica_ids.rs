//! Replica ids are 64 bits: regions whose ids need all 64 replicate and
//! serve sessions as 32-bit ones do, and what the width costs on the wire
//! and in session tokens is measured here (printed with `--nocapture`,
//! bounded by asserts). Default `RegionConfig`.

use crate::common;

use std::time::Duration;

use archipelago::clock::ReplicaId;
use archipelago::region::{Region, RegionConfig};
use archipelago::session::{Session, SessionToken};
use archipelago::transport::ChannelNetwork;

/// Ids as a 32-bit random draw gives them (all above 2²⁴, 5-byte varints).
const NARROW: [u64; 3] = [0x9e37_79b9, 0x7f4a_7c15, 0xf39c_c060];
/// Ids as a 64-bit random draw gives them (9-byte varints).
const WIDE: [u64; 3] = [
    0x9e37_79b9_7f4a_7c15,
    0xf39c_c060_5ced_c834,
    0x1082_276b_f3a2_7251,
];

/// Updates the measured batch carries.
const UPDATES: u64 = 100;

fn region(net: &ChannelNetwork, name: &str, id: u64, protocol: u16) -> Region {
    Region::builder(name)
        .replica_id(ReplicaId::new(id))
        .transport(net.endpoint(name))
        .clock(common::TokioClock::new(0))
        .config(RegionConfig {
            protocol_version_max: protocol,
            ..RegionConfig::default()
        })
        .build()
        .unwrap()
}

struct Cost {
    /// Bytes a sent b (batches) per update, over the `UPDATES` writes.
    batch_bytes_per_update: f64,
    /// Bytes b sent a (acknowledgements) over the same writes.
    ack_bytes: u64,
    /// The session token of a read at a of every region's writes.
    token: SessionToken,
}

/// Three regions with `ids` speaking engine protocol `protocol`, each
/// writes once (so a's batches depend on a three-entry vector), then a
/// makes `UPDATES` increments of distinct keys.
fn measure(ids: [u64; 3], protocol: u16) -> Cost {
    common::paused_runtime().block_on(async {
        let net = ChannelNetwork::new(3);
        let a = region(&net, "a", ids[0], protocol);
        let b = region(&net, "b", ids[1], protocol);
        let c = region(&net, "c", ids[2], protocol);
        for (i, r) in [&a, &b, &c].into_iter().enumerate() {
            common::add(r, "likes", 1_000 + i as u64, 1).await;
        }
        // First contacts' exchanges and batches settle.
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert_eq!(a.stats().applied.len(), 3, "a applied all three regions");
        let (sent, acked) = (net.link_stats("a", "b"), net.link_stats("b", "a"));
        let syncs = a.stats().syncs_completed + b.stats().syncs_completed;
        for key in 0..UPDATES {
            common::add(&a, "likes", key, 1).await;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(common::counter(&b, "likes", UPDATES - 1).await, Some(1));
        let (sent_after, acked_after) = (net.link_stats("a", "b"), net.link_stats("b", "a"));
        assert_eq!(
            a.stats().syncs_completed + b.stats().syncs_completed,
            syncs,
            "no anti-entropy in the measured window"
        );
        for r in [&a, &b, &c] {
            assert_eq!(r.stats().rejected_frames, 0, "{}", r.name());
        }
        let token = SessionToken::from_vector(a.stats().applied.clone());
        Cost {
            batch_bytes_per_update: (sent_after.bytes_delivered - sent.bytes_delivered) as f64
                / UPDATES as f64,
            ack_bytes: acked_after.bytes_delivered - acked.bytes_delivered,
            token,
        }
    })
}

/// A 64-bit id costs 4 bytes more than a 32-bit one wherever it is
/// written: in batches of protocol 6, in each `GCounter` delta (the
/// origin's entry), and once per batch in its origin and each deps entry;
/// in batches of protocol 7 only in the header, the deltas naming the
/// origin by a 1-byte reference. Session tokens move from the v1 layout
/// (12 bytes per replica) to v2 (16).
#[test]
fn a_64_bit_id_costs_4_bytes_per_id_written() {
    let narrow = measure(NARROW, 6);
    let wide = measure(WIDE, 6);
    let extra = wide.batch_bytes_per_update - narrow.batch_bytes_per_update;
    let (narrow_text, wide_text) = (narrow.token.to_string(), wide.token.to_string());
    println!(
        "batch bytes per update ({UPDATES} GCounter updates, 3-entry deps): \
         32-bit ids {:.2} B, 64-bit ids {:.2} B (+{extra:.2} B); \
         acknowledgements {} B and {} B",
        narrow.batch_bytes_per_update,
        wide.batch_bytes_per_update,
        narrow.ack_bytes,
        wide.ack_bytes
    );
    println!(
        "session token for 3 regions: 32-bit ids {} bytes ({} text chars: {narrow_text}), \
         64-bit ids {} bytes ({} text chars: {wide_text})",
        narrow.token.encoded_len(),
        narrow_text.len(),
        wide.token.encoded_len(),
        wide_text.len()
    );
    // 4 bytes in each update's delta, and 4 × (origin + 3 deps) per batch
    // (a few batches at most): between 4 and 4.5 bytes per update.
    assert!(
        (4.0..=4.5).contains(&extra),
        "64-bit ids cost {extra:.2} B per update"
    );
    let (narrow, wide) = (
        measure(NARROW, archipelago::region::PROTOCOL_VERSION),
        measure(WIDE, archipelago::region::PROTOCOL_VERSION),
    );
    let extra = wide.batch_bytes_per_update - narrow.batch_bytes_per_update;
    println!(
        "protocol 7: batch bytes per update: 32-bit ids {:.2} B, 64-bit ids {:.2} B (+{extra:.2} B)",
        narrow.batch_bytes_per_update, wide.batch_bytes_per_update,
    );
    assert!(
        (0.0..=0.5).contains(&extra),
        "64-bit ids cost {extra:.2} B per update in protocol 7's batches"
    );
    assert_eq!(narrow.token.encoded_len(), 4 + 12 * 3);
    assert_eq!(wide.token.encoded_len(), 4 + 16 * 3);
    assert_eq!((narrow_text.len(), wide_text.len()), (57, 73));
    assert!(narrow_text.starts_with("v1.") && wide_text.starts_with("v2."));
}

/// Regions drawing their own ids (64 random bits) replicate and serve a
/// session read that waits for another region's write, through a token
/// carried as text.
#[test]
fn regions_with_random_64_bit_ids_replicate_and_serve_sessions() {
    common::paused_runtime().block_on(async {
        let net = ChannelNetwork::new(4);
        let a = common::region_on(&net, "a", None, RegionConfig::default());
        let b = common::region_on(&net, "b", None, RegionConfig::default());
        // Drawn from 64 random bits: both fit in 32 bits with odds 2⁻³¹.
        assert!(
            !(a.replica().is_narrow() && b.replica().is_narrow()),
            "ids drawn from 64 bits: {} {}",
            a.replica(),
            b.replica()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
        let token = common::add(&a, "likes", 7, 2).await;
        let text = token.to_string();
        let wide = !a.replica().is_narrow();
        assert_eq!(text.starts_with("v2."), wide, "{text}");
        let carried: SessionToken = text.parse().unwrap();
        let mut session = Session::from_token(&carried);
        let read = b
            .table::<u64, archipelago::crdt::GCounter>("likes")
            .unwrap()
            .read_session(&7, &mut session)
            .await
            .unwrap();
        assert_eq!(read.map(|c| c.value()), Some(2));
        let (sa, sb) = (a.stats(), b.stats());
        assert_eq!((sa.rejected_frames, sb.rejected_frames), (0, 0));
        assert_eq!(sb.applied.get(a.replica()), 1);
    });
}
