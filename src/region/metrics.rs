//! Operator metrics (feature `metrics`): what the engine publishes through
//! the [`metrics`] facade. The table of metrics is in the `region` module
//! page, section "Metrics".

use std::time::Duration;

use metrics::{counter, gauge, histogram};

use crate::region::RejectReason;
use crate::replication::core::{Core, PeerState};

/// How often the engine publishes its gauges and counters (at most): on
/// its tick, once this long has passed since the last time.
pub(crate) const METRICS_PUBLISH_INTERVAL: Duration = Duration::from_secs(1);

/// A peer's status gauge: 0 in sync, 1 syncing, 2 disconnected.
///
/// In sync: connected, every write of ours acknowledged, no repair by
/// anti-entropy pending, and none of its writes we know of unapplied.
fn peer_status(connected: bool, unacknowledged: u64, repair: bool, behind: u64) -> f64 {
    if !connected {
        2.0
    } else if unacknowledged == 0 && !repair && behind == 0 {
        0.0
    } else {
        1.0
    }
}

/// Publishes the region's gauges and counters (absolute values of what the
/// engine counts). Called by the engine under the state's lock it already
/// holds on its tick.
pub(crate) fn publish(core: &Core) {
    let region = core.name.clone();
    for (name, peer) in &core.peers {
        publish_peer(core, &region, name, peer);
    }
    publish_region(core, &region);
    publish_rejections_and_conflicts(core, &region);
}

/// The gauges and counters of one peer of the region.
fn publish_peer(core: &Core, region: &str, name: &str, peer: &PeerState) {
    let labels = [("region", region.to_owned()), ("peer", name.to_owned())];
    let unacknowledged = core.seq.saturating_sub(peer.acked);
    let behind = peer
        .replica
        .map_or(0, |r| peer.its_seq_seen.saturating_sub(core.applied.get(r)));
    gauge!("archipelago_replication_lag_seconds", &labels).set(core.lag_of(peer).as_secs_f64());
    gauge!("archipelago_replication_lag_updates", &labels).set(unacknowledged as f64);
    gauge!("archipelago_peer_status", &labels).set(peer_status(
        peer.connected,
        unacknowledged,
        peer.needs_sync,
        behind,
    ));
    for (name, value) in [
        ("archipelago_peer_bytes_sent_total", peer.bytes_sent),
        ("archipelago_peer_bytes_received_total", peer.bytes_received),
        (
            "archipelago_anti_entropy_bytes_sent_total",
            peer.sync_bytes_sent,
        ),
        (
            "archipelago_anti_entropy_bytes_received_total",
            peer.sync_bytes_received,
        ),
    ] {
        counter!(name, &labels).absolute(value);
    }
    if let Some(offset_ms) = peer.clock_offset_ms {
        gauge!("archipelago_clock_offset_seconds", &labels).set(offset_ms as f64 / 1000.0);
    }
}

/// The region's own gauges (outbox, causal buffer) and counters.
fn publish_region(core: &Core, region: &str) {
    let labels = [("region", region.to_owned())];
    gauge!("archipelago_outbox_len", &labels).set(core.outbox.len() as f64);
    gauge!("archipelago_outbox_bytes", &labels).set(core.outbox.bytes() as f64);
    gauge!("archipelago_causal_buffer_len", &labels).set(core.buffer.len() as f64);
    let c = &core.counters;
    for (name, value) in [
        ("archipelago_batches_sent_total", c.batches_sent),
        ("archipelago_batches_applied_total", c.batches_applied),
        ("archipelago_batches_dropped_total", c.batches_dropped),
        ("archipelago_outbox_overflows_total", c.outbox_overflows),
        ("archipelago_anti_entropy_rounds_total", c.syncs_completed),
        (
            "archipelago_anti_entropy_states_received_total",
            c.sync_states_received,
        ),
        ("archipelago_refused_handshakes_total", c.refused_handshakes),
        ("archipelago_values_ahead_total", c.values_ahead),
        (
            "archipelago_undeclared_values_dropped_total",
            c.undeclared_values_dropped,
        ),
        ("archipelago_rights_requested_total", c.rights_requested),
        ("archipelago_rights_granted_units_total", c.rights_granted),
        ("archipelago_rights_refused_total", c.rights_refused),
        ("archipelago_homed_forwarded_total", c.homed_forwarded),
        ("archipelago_homed_served_total", c.homed_served),
        ("archipelago_homed_duplicates_total", c.homed_duplicates),
        ("archipelago_homed_refused_total", c.homed_refused),
        ("archipelago_homed_moves_total", c.homed_moves),
        ("archipelago_homed_fenced_total", c.homed_fenced),
        ("archipelago_homed_redirects_total", c.homed_redirects),
        (
            "archipelago_hlc_remote_rejects_total",
            core.hlc.remote_rejects(),
        ),
        ("archipelago_commits_total", c.commits),
        ("archipelago_commit_failures_total", c.commit_failures),
    ] {
        counter!(name, &labels).absolute(value);
    }
}

/// Rejected frames by reason, and conflicts by table.
fn publish_rejections_and_conflicts(core: &Core, region: &str) {
    let c = &core.counters;
    for reason in RejectReason::ALL {
        let labels = [
            ("region", region.to_owned()),
            ("reason", reason.as_str().to_owned()),
        ];
        counter!("archipelago_rejected_frames_total", &labels)
            .absolute(c.rejected_by_reason[reason.index()]);
    }
    for slot in &core.tables {
        if let Some(count) = &slot.conflicts {
            let labels = [
                ("region", region.to_owned()),
                ("table", slot.name.to_string()),
                ("strategy", count.strategy.to_owned()),
            ];
            counter!("archipelago_conflicts_total", &labels).absolute((count.total)());
        }
    }
}

/// Records how long a session read or write waited for this region to
/// catch up.
pub(crate) fn session_wait(region: &str, waited: Duration) {
    histogram!("archipelago_session_wait_seconds", "region" => region.to_owned())
        .record(waited.as_secs_f64());
}

/// Records how long a commit to storage took.
pub(crate) fn commit_latency(region: &str, took: Duration) {
    histogram!("archipelago_commit_seconds", "region" => region.to_owned())
        .record(took.as_secs_f64());
}
