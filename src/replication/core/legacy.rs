//! Sending to peers of an older protocol: states in the layout they read.
//!
//! Since protocol 5 the user values inside version sets are delimited (see
//! [`Versioned`](crate::resolve::Versioned)). A peer that agreed on
//! protocol 4 or older reads only the older layout, so the entries of the
//! batches and state transfers sent to it are re-encoded in that layout
//! just before they leave: decoded as the table's type, encoded again.
//! Entries of tables this region has not declared, and those whose bytes
//! are the same in both layouts, leave as they are.

use super::{Core, Outgoing};
use crate::replication::message::{self, Entries, Message};

/// The first protocol whose states carry delimited values.
pub(crate) const DELIMITED_PROTOCOL: u16 = 5;

impl Core {
    /// Rewrites, in `out`, the entries of batches and state transfers to
    /// peers speaking a protocol older than [`DELIMITED_PROTOCOL`].
    pub(crate) fn downgrade_for_old_peers(&self, out: &mut Outgoing) {
        for (peer, message) in out.iter_mut() {
            let old = self
                .peers
                .get(peer)
                .is_some_and(|p| p.protocol < DELIMITED_PROTOCOL);
            if !old {
                continue;
            }
            let (Message::Batch {
                tables, entries, ..
            }
            | Message::SyncStates {
                tables, entries, ..
            }) = message
            else {
                continue;
            };
            if let Some(legacy) = self.legacy_entries(tables, &entries.0) {
                entries.0 = legacy;
            }
        }
    }

    /// `packed` with every value in the older layout, or `None` when no
    /// value changes.
    fn legacy_entries(&self, tables: &[String], packed: &[u8]) -> Option<Vec<u8>> {
        let stores: Vec<_> = tables
            .iter()
            .map(|t| self.slot_of(t).map(|slot| &self.tables[slot].store))
            .collect();
        let mut changed = false;
        let mut out = Vec::with_capacity(packed.len());
        for entry in Entries::new(packed, tables.len()) {
            // Our own bytes: only a bug could make them unreadable.
            let (table, key, value) = entry.ok()?;
            let legacy = stores[table].and_then(|store| store.legacy_layout(value));
            changed |= legacy.is_some();
            message::push_entry(&mut out, table, key, legacy.as_deref().unwrap_or(value));
        }
        changed.then_some(out)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use crate::clock::{Hlc, ManualClock, ReplicaId};
    use crate::crdt::{Crdt, GCounter};
    use crate::replication::store::{CrdtStore, TableStore};
    use crate::resolve::{VersionSet, Versioned};
    use crate::wire;

    /// The older layout of a version set never deleted is a list of
    /// versions, each its value then its vector and stamp: what a build of
    /// protocol 4 decodes.
    #[test]
    fn version_sets_go_to_old_peers_in_the_older_layout() {
        let hlc = Hlc::with_clock(ReplicaId::new(1), ManualClock::new(1_000));
        let mut set = VersionSet::new();
        set.write(hlc.stamp(), "Aiko".to_string());
        let mut delimited = Vec::new();
        wire::encode_bare_into(&set, &mut delimited).unwrap();
        assert!(wire::decode_bare::<Vec<Versioned<String>>>(&delimited).is_err());

        let store = CrdtStore::<VersionSet<String>>::new(Arc::new(|m, t, _, _| m.merge(t)));
        let legacy = store.legacy_layout(&delimited).expect("another layout");
        let old: Vec<Versioned<String>> = wire::decode_bare(&legacy).unwrap();
        assert_eq!(old, set.versions());
        assert_eq!(
            legacy.len() + 3,
            delimited.len(),
            "header 2 bytes more, a length 1"
        );

        // A counter's bytes are the same in both layouts: left as they are.
        let store = CrdtStore::<GCounter>::new(Arc::new(|m, t, _, _| m.merge(t)));
        let mut counter = GCounter::new();
        counter.inc(ReplicaId::new(1), 3);
        let mut bytes = Vec::new();
        wire::encode_bare_into(&counter, &mut bytes).unwrap();
        assert_eq!(store.legacy_layout(&bytes), None);
    }
}
