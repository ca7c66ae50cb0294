//! Sending to peers of an older protocol: states in the layout they read.
//!
//! Since protocol 5 the user values inside version sets are delimited (see
//! [`Versioned`](crate::resolve::Versioned)); since protocol 6 those inside
//! [`LwwRegister`](crate::crdt::LwwRegister), [`LwwMap`](crate::crdt::LwwMap),
//! [`MvRegister`](crate::crdt::MvRegister) and homed tables'
//! states too (see *Schema evolution* on
//! [`HomedValue`](crate::region::HomedValue)). A peer that agreed on
//! an older protocol reads only the layout of its protocol, so the entries
//! of the batches and state transfers sent to it are re-encoded in that
//! layout just before they leave: decoded as the table's type, encoded
//! again. Entries of tables this region has not declared, and those whose
//! bytes are the same in both layouts, leave as they are. Unknown bytes a
//! value kept (fields of a newer build) cannot travel in a positional
//! layout: such a peer gets the fields this build knows.

use super::{Core, Outgoing};
use crate::replication::message::{self, Entries, Message, ORIGIN_CONTEXT_PROTOCOL};
pub(crate) use crate::wire::{DELIMITED_CRDT_PROTOCOL, DELIMITED_PROTOCOL};

// The latest layout change is the one peers below it are downgraded from.
const _: () = assert!(DELIMITED_PROTOCOL < DELIMITED_CRDT_PROTOCOL);

impl Core {
    /// Rewrites, in `out`, the entries of batches and state transfers to
    /// peers speaking a protocol older than [`DELIMITED_CRDT_PROTOCOL`]
    /// (the latest layout change), in the layout of their protocol.
    pub(crate) fn downgrade_for_old_peers(&self, out: &mut Outgoing) {
        for (peer, message) in out.iter_mut() {
            let Some(protocol) = self
                .peers
                .get(peer)
                .map(|p| p.protocol)
                .filter(|p| *p < DELIMITED_CRDT_PROTOCOL)
            else {
                continue;
            };
            let (Message::Batch {
                tables, entries, ..
            }
            | Message::SyncStates {
                tables, entries, ..
            }) = message
            else {
                continue;
            };
            if let Some(legacy) = self.legacy_entries(tables, &entries.0, protocol) {
                entries.0 = legacy;
            }
        }
    }

    /// For each message of `out`, in order: whether it is a batch to a peer
    /// of [`ORIGIN_CONTEXT_PROTOCOL`] or later, which takes it as a
    /// [`CompactBatch`](Message::CompactBatch) (compacted by the engine
    /// outside the lock: [`message::compact_batches`]).
    pub(crate) fn compact_batch_peers(&self, out: &Outgoing) -> Vec<bool> {
        out.iter()
            .map(|(peer, message)| {
                matches!(message, Message::Batch { .. })
                    && self
                        .peers
                        .get(peer)
                        .is_some_and(|p| p.protocol >= ORIGIN_CONTEXT_PROTOCOL)
            })
            .collect()
    }

    /// `packed` with every value in the layout of `protocol`, or `None`
    /// when no value changes.
    fn legacy_entries(&self, tables: &[String], packed: &[u8], protocol: u16) -> Option<Vec<u8>> {
        let stores: Vec<_> = tables
            .iter()
            .map(|t| self.slot_of(t).map(|slot| &self.tables[slot].store))
            .collect();
        let mut changed = false;
        let mut out = Vec::with_capacity(packed.len());
        for entry in Entries::new(packed, tables.len()) {
            // Our own bytes: only a bug could make them unreadable.
            let (table, key, value) = entry.ok()?;
            let legacy = stores[table].and_then(|store| store.legacy_layout(value, protocol));
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
        let legacy = store.legacy_layout(&delimited, 4).expect("another layout");
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
        assert_eq!(store.legacy_layout(&bytes, 4), None);
    }

    /// A register goes to a protocol-5 peer with its value positional (the
    /// stamp then the value, tag 1), what a build of protocol 5 decodes,
    /// and to a protocol-4 peer the same; a version set goes to a
    /// protocol-5 peer as it is (delimited since 5).
    #[test]
    fn registers_go_to_protocol_5_peers_with_positional_values() {
        use crate::clock::Stamp;
        use crate::crdt::{LwwMap, LwwRegister, MvRegister};

        #[derive(serde::Serialize, serde::Deserialize)]
        #[serde(rename = "LwwRegister")]
        struct Protocol5Register {
            entry: Option<(Stamp, String)>,
        }

        let hlc = Hlc::with_clock(ReplicaId::new(1), ManualClock::new(1_000));
        let mut reg = LwwRegister::new();
        reg.set(hlc.stamp(), "Aiko".to_string());
        let mut delimited = Vec::new();
        wire::encode_bare_into(&reg, &mut delimited).unwrap();
        assert!(wire::decode_bare::<Protocol5Register>(&delimited).is_err());
        let store = CrdtStore::<LwwRegister<String>>::new(Arc::new(|m, t, _, _| m.merge(t)));
        for protocol in [4, 5] {
            let legacy = store
                .legacy_layout(&delimited, protocol)
                .expect("another layout");
            let old: Protocol5Register = wire::decode_bare(&legacy).unwrap();
            assert_eq!(old.entry, Some((reg.stamp().unwrap(), "Aiko".to_string())));
            assert_eq!(legacy.len() + 1, delimited.len(), "a 1-byte length");
        }
        assert_eq!(store.legacy_layout(&delimited, 6), None, "a peer of 6");

        let mut map = LwwMap::new();
        map.insert(hlc.stamp(), 1u64, "Aiko".to_string());
        let mut delimited = Vec::new();
        wire::encode_bare_into(&map, &mut delimited).unwrap();
        let store = CrdtStore::<LwwMap<u64, String>>::new(Arc::new(|m, t, _, _| m.merge(t)));
        let legacy = store.legacy_layout(&delimited, 5).expect("another layout");
        let old: Vec<(u64, Stamp, Option<String>)> = wire::decode_bare(&legacy).unwrap();
        assert_eq!(old, [(1, map.stamp(&1).unwrap(), Some("Aiko".to_string()))]);

        let mut mv = MvRegister::new();
        mv.write(ReplicaId::new(1), "Aiko".to_string());
        let mut delimited = Vec::new();
        wire::encode_bare_into(&mv, &mut delimited).unwrap();
        assert_eq!(delimited[0], wire::DELIMITED_LEN_TAG);
        let store = CrdtStore::<MvRegister<String>>::new(Arc::new(|m, t, _, _| m.merge(t)));
        let legacy = store.legacy_layout(&delimited, 5).expect("another layout");
        assert_eq!(legacy[0], 1, "the older layout starts with its count");
        assert_eq!(
            wire::decode_bare::<MvRegister<String>>(&legacy).unwrap(),
            mv
        );

        let mut set = VersionSet::new();
        set.write(hlc.stamp(), "Aiko".to_string());
        let mut bytes = Vec::new();
        wire::encode_bare_into(&set, &mut bytes).unwrap();
        let store = CrdtStore::<VersionSet<String>>::new(Arc::new(|m, t, _, _| m.merge(t)));
        assert_eq!(store.legacy_layout(&bytes, 5), None, "delimited since 5");
    }
}
