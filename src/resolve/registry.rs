use std::any::{Any, TypeId, type_name};
use std::collections::HashMap;
use std::sync::Arc;

use super::{LastWriteWins, Resolver};

/// Why a resolver could not be looked up.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RegistryError {
    /// The table has a resolver registered, for values of another type.
    #[error("table {table:?} has a resolver for another value type than {requested}")]
    TypeMismatch {
        /// The table.
        table: String,
        /// The value type asked for.
        requested: &'static str,
    },
}

/// Which resolver settles conflicts where: per table, per value type, and
/// [`LastWriteWins`] when nothing more specific is registered.
///
/// ```
/// use archipelago::resolve::{FirstWriteWins, Merge, ResolverRegistry, Strategy};
///
/// let mut registry = ResolverRegistry::new();
/// registry.for_type::<serde_json::Value>(Merge::deep());
/// registry.for_table::<String>("usernames", FirstWriteWins);
///
/// assert_eq!(registry.resolver::<String>("usernames")?.strategy(), Strategy::FirstWriteWins);
/// assert_eq!(registry.resolver::<serde_json::Value>("profiles")?.strategy(), Strategy::Merge);
/// assert_eq!(registry.resolver::<u64>("anything")?.strategy(), Strategy::LastWriteWins);
/// # Ok::<(), archipelago::resolve::RegistryError>(())
/// ```
#[derive(Default)]
pub struct ResolverRegistry {
    by_table: HashMap<String, Box<dyn Any + Send + Sync>>,
    by_type: HashMap<TypeId, Box<dyn Any + Send + Sync>>,
}

impl ResolverRegistry {
    /// An empty registry: everything resolves last-writer-wins.
    pub fn new() -> Self {
        Self::default()
    }

    /// Settles conflicts in `table` with `resolver`; replaces any earlier
    /// registration for the table.
    pub fn for_table<T: 'static>(&mut self, table: &str, resolver: impl Resolver<T> + 'static) {
        let resolver: Arc<dyn Resolver<T>> = Arc::new(resolver);
        self.by_table.insert(table.to_owned(), Box::new(resolver));
    }

    /// Settles conflicts between values of type `T` with `resolver`, in
    /// tables without a registration of their own.
    pub fn for_type<T: 'static>(&mut self, resolver: impl Resolver<T> + 'static) {
        let resolver: Arc<dyn Resolver<T>> = Arc::new(resolver);
        self.by_type.insert(TypeId::of::<T>(), Box::new(resolver));
    }

    /// The resolver for values of type `T` in `table`.
    ///
    /// # Errors
    /// [`RegistryError::TypeMismatch`] when the table's resolver is for
    /// another type.
    pub fn resolver<T: Clone + 'static>(
        &self,
        table: &str,
    ) -> Result<Arc<dyn Resolver<T>>, RegistryError> {
        if let Some(entry) = self.by_table.get(table) {
            return entry
                .downcast_ref::<Arc<dyn Resolver<T>>>()
                .cloned()
                .ok_or_else(|| RegistryError::TypeMismatch {
                    table: table.to_owned(),
                    requested: type_name::<T>(),
                });
        }
        if let Some(entry) = self.by_type.get(&TypeId::of::<T>())
            && let Some(resolver) = entry.downcast_ref::<Arc<dyn Resolver<T>>>()
        {
            return Ok(Arc::clone(resolver));
        }
        Ok(Arc::new(LastWriteWins))
    }
}

impl std::fmt::Debug for ResolverRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResolverRegistry")
            .field("tables", &self.by_table.keys().collect::<Vec<_>>())
            .field("types", &self.by_type.len())
            .finish()
    }
}
