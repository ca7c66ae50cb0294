//! [`BoundedTable`]: a table of [`BoundedCounter`]s whose rights the
//! engine moves to where demand is (see "Bounded tables" on the
//! [region page](crate::region#bounded-tables-and-rights-movement)).

use std::borrow::Borrow;

use super::*;
use crate::crdt::{BoundedCounter, RightsError};

impl Region {
    /// The bounded table `name` of keys `K`: stock that never goes below
    /// `B` (a [`BoundedCounter<B>`] per key), declared on first use. Sales
    /// ([`BoundedTable::try_dec`]) spend rights held here and never wait on
    /// the network; the engine asks peers for rights when a sale is refused
    /// or the rights held here run low, and grants peers' requests.
    ///
    /// ```
    /// use archipelago::region::{Region, RegionError};
    /// use archipelago::crdt::RightsError;
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), RegionError> {
    /// let tokyo = Region::builder("ap-northeast").build()?;
    /// let stock = tokyo.bounded_table::<String, 0>("stock")?;
    /// stock.inc("matcha", 2).await?; // the rights to 2 units are Tokyo's
    /// stock.try_dec("matcha", 2).await?;
    /// let refused = stock.try_dec("matcha", 1).await.unwrap_err();
    /// assert!(matches!(refused, RegionError::Rights(RightsError::Insufficient { available_here: 0, .. })));
    /// assert_eq!(stock.value("matcha")?, Some(0));
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// As [`Region::table`] (the same name declared with another value or
    /// key type, or a resolver table).
    pub fn bounded_table<K, const B: i64>(
        &self,
        name: &str,
    ) -> Result<BoundedTable<K, B>, RegionError>
    where
        K: Serialize + DeserializeOwned + Send + Sync + 'static,
    {
        let table = self.table::<K, BoundedCounter<B>>(name)?;
        self.core()?.declare_bounded::<B>(table.slot);
        Ok(BoundedTable { table })
    }
}

/// A handle on a bounded table: keys `K`, each a [`BoundedCounter<B>`]
/// whose value never goes below `B`. Clones share it.
///
/// Every region may sell ([`try_dec`](BoundedTable::try_dec)) only what it
/// holds rights for; restocking ([`inc`](BoundedTable::inc)) gives the
/// rights to the region that restocks. A refused sale returns at once with
/// [`RegionError::Rights`]; meanwhile the engine asks the peer believed to
/// hold the most rights for some, so a later sale may succeed.
pub struct BoundedTable<K, const B: i64 = 0> {
    table: Table<K, BoundedCounter<B>>,
}

impl<K, const B: i64> Clone for BoundedTable<K, B> {
    fn clone(&self) -> Self {
        BoundedTable {
            table: self.table.clone(),
        }
    }
}

impl<K, const B: i64> Debug for BoundedTable<K, B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BoundedTable")
            .field("table", &self.table)
            .field("bound", &B)
            .finish()
    }
}

impl<K, const B: i64> BoundedTable<K, B>
where
    K: Serialize + DeserializeOwned + Send + Sync + 'static,
{
    /// The table's name.
    pub fn name(&self) -> &str {
        self.table.name()
    }

    /// This handle with writes acknowledged at `ack` (see [`AckLevel`]).
    #[must_use]
    pub fn with_ack(self, ack: AckLevel) -> Self {
        BoundedTable {
            table: self.table.with_ack(ack),
        }
    }

    /// The table as a plain CRDT table: reads, scans, change streams.
    pub fn table(&self) -> &Table<K, BoundedCounter<B>> {
        &self.table
    }

    /// Adds `n` units under `key` (restock); this region receives the
    /// rights to them. Returns the write's token (an empty one for `n` 0).
    ///
    /// # Errors
    /// As [`Table::update`].
    pub async fn inc<Q>(&self, key: &Q, n: u64) -> Result<SessionToken, RegionError>
    where
        K: Borrow<Q>,
        Q: Serialize + ?Sized,
    {
        self.table
            .update(key, |c, ctx| {
                if n > 0 {
                    c.apply(|c| c.inc(ctx.replica(), n));
                }
            })
            .await
    }

    /// Takes `n` units under `key` (a sale), spending rights this region
    /// holds. Returns the write's token, as durable as the handle's
    /// [`AckLevel`] asks (an empty one for `n` 0).
    ///
    /// Never waits on the network to decide: with too few rights here it
    /// fails at once, nothing changed, and the engine asks the peer
    /// believed to hold the most rights for some (one request per key
    /// outstanding, sent again after `rights_request_timeout`). A sale that
    /// leaves fewer than `rights_request_below_units` rights here asks too,
    /// before the next one is refused.
    ///
    /// # Errors
    /// [`RegionError::Rights`] ([`RightsError::Insufficient`]: what is held
    /// here and in total) when this region holds fewer than `n` rights; as
    /// [`Table::update`] otherwise.
    pub async fn try_dec<Q>(&self, key: &Q, n: u64) -> Result<SessionToken, RegionError>
    where
        K: Borrow<Q>,
        Q: Serialize + ?Sized,
    {
        let mut refused: Option<RightsError> = None;
        let mut left = 0;
        let written = self
            .table
            .update(key, |c, ctx| {
                let replica = ctx.replica();
                let here = c.rights(replica);
                if here < n {
                    refused = Some(RightsError::Insufficient {
                        replica,
                        requested: n,
                        available_here: here,
                        available_total: c.total_rights(),
                    });
                    return;
                }
                if n > 0 {
                    c.apply(|c| {
                        let delta = c.try_dec(replica, n);
                        debug_assert!(delta.is_ok(), "checked just above, under the same lock");
                        delta.unwrap_or_default()
                    });
                    left = here - n;
                }
            })
            .await;
        let threshold = self.table.region.inner.config.rights_request_below_units;
        let want = match (&written, refused) {
            (_, Some(error)) => Some((n.max(threshold), true, Err(error))),
            (Ok(_), None) if n > 0 && left < threshold => Some((threshold, false, Ok(()))),
            _ => None,
        };
        let Some((need, demand, outcome)) = want else {
            return written;
        };
        let slot = self.table.slot;
        wire::with_bare(key, |key| -> Result<(), RegionError> {
            let mut core = self.table.region.core()?;
            core.want_rights(slot, key, need, demand, Instant::now());
            Ok(())
        })??;
        outcome?;
        written
    }

    /// Hands `n` of this region's rights to `key` to the replica `to` (a
    /// manual move; the engine moves rights by itself on demand).
    ///
    /// # Errors
    /// [`RegionError::Rights`] when this region holds fewer than `n` rights
    /// or `to` is this region's replica; as [`Table::update`] otherwise.
    pub async fn transfer<Q>(
        &self,
        key: &Q,
        to: ReplicaId,
        n: u64,
    ) -> Result<SessionToken, RegionError>
    where
        K: Borrow<Q>,
        Q: Serialize + ?Sized,
    {
        let mut refused: Option<RightsError> = None;
        let written = self
            .table
            .update(key, |c, ctx| {
                let mut probe = c.value().clone();
                match probe.transfer(ctx.replica(), to, n) {
                    Err(error) => refused = Some(error),
                    Ok(_) if n == 0 => {}
                    Ok(_) => c.apply(|c| c.transfer(ctx.replica(), to, n).unwrap_or_default()),
                }
            })
            .await;
        if let Some(error) = refused {
            return Err(error.into());
        }
        written
    }

    /// The counter under `key` here, now: a copy (`None` when absent).
    ///
    /// # Errors
    /// As [`Table::read`].
    pub async fn read<Q>(&self, key: &Q) -> Result<Option<BoundedCounter<B>>, RegionError>
    where
        K: Borrow<Q>,
        Q: Serialize + ?Sized,
    {
        self.table.read(key).await
    }

    /// The value under `key` here, now (`None` when absent).
    ///
    /// # Errors
    /// As [`Table::read_with`].
    pub fn value<Q>(&self, key: &Q) -> Result<Option<i64>, RegionError>
    where
        K: Borrow<Q>,
        Q: Serialize + ?Sized,
    {
        self.table.read_with(key, BoundedCounter::value)
    }

    /// The rights to `key` this region holds: what it can sell now without
    /// asking (0 when absent).
    ///
    /// # Errors
    /// As [`Table::read_with`].
    pub fn rights<Q>(&self, key: &Q) -> Result<u64, RegionError>
    where
        K: Borrow<Q>,
        Q: Serialize + ?Sized,
    {
        let replica = self.table.region.replica();
        Ok(self
            .table
            .read_with(key, |c| c.rights(replica))?
            .unwrap_or(0))
    }
}
