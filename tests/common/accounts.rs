//! What the homed-table tests share: an account that never goes below
//! zero, and the three regions they run on.

use archipelago::region::{HomedValue, Region};
use serde::{Deserialize, Serialize};

/// The three regions of the homed tests.
pub const NAMES: [&str; 3] = ["ap-northeast", "eu-central", "us-east"];

/// An account: a balance that never goes below zero.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Account {
    pub balance: u64,
}

/// An operation on an [`Account`].
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum Entry {
    Deposit(u64),
    Withdraw(u64),
}

/// Why a withdrawal was refused.
#[derive(Debug, PartialEq, Serialize, Deserialize)]
pub struct InsufficientFunds {
    pub balance: u64,
    pub wanted: u64,
}

impl HomedValue for Account {
    type Op = Entry;
    type Rejection = InsufficientFunds;
    fn apply(&mut self, op: Entry) -> Result<(), InsufficientFunds> {
        match op {
            Entry::Deposit(n) => self.balance += n,
            Entry::Withdraw(n) if n > self.balance => {
                return Err(InsufficientFunds {
                    balance: self.balance,
                    wanted: n,
                });
            }
            Entry::Withdraw(n) => self.balance -= n,
        }
        Ok(())
    }
}

/// No region refused a frame: nothing was repaired behind the test's back.
pub fn assert_nothing_rejected(regions: &[Region]) {
    for r in regions {
        assert_eq!(r.stats().rejected_frames, 0, "{}", r.name());
    }
}

/// Shuts every region down.
pub async fn shutdown(regions: &[Region]) {
    for r in regions {
        r.shutdown().await;
    }
}
