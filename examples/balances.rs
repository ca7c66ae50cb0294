//! Accounts homed in their region, and transfers between two regions as a
//! saga: debit at the payer's home, credit at the payee's home, and a
//! refund of the payer when the credit surely did not happen. Tokyo and
//! Frankfurt are cut apart in the middle; the total of all balances is the
//! same before, during and after.
//!
//! Each leg carries the transfer's id and the account remembers the legs it
//! applied, so a leg retried after an ambiguous failure (the request left,
//! the answer never came) applies at most once.
//!
//! Run: `cargo run --release --example balances`

use std::collections::BTreeSet;
use std::time::Duration;

use archipelago::region::{HomedError, HomedTable, HomedValue, Region, RegionConfig, RegionError};
use archipelago::transport::ChannelNetwork;
use serde::{Deserialize, Serialize};

const TOKYO: &str = "ap-northeast";
const FRANKFURT: &str = "eu-central";
const OPENING_BALANCE: u64 = 100;

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct Account {
    balance: u64,
    /// The saga legs applied here: `(transfer id, leg)`.
    applied: BTreeSet<(u64, Leg)>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
enum Leg {
    Debit,
    Credit,
    Refund,
}

#[derive(Debug, Serialize, Deserialize)]
enum Entry {
    Open(u64),
    Leg {
        transfer: u64,
        leg: Leg,
        amount: u64,
    },
}

#[derive(Debug, Serialize, Deserialize)]
struct InsufficientFunds {
    balance: u64,
    wanted: u64,
}

impl HomedValue for Account {
    type Op = Entry;
    type Rejection = InsufficientFunds;

    fn apply(&mut self, op: Entry) -> Result<(), InsufficientFunds> {
        match op {
            Entry::Open(amount) => self.balance = amount,
            Entry::Leg { transfer, leg, .. } if self.applied.contains(&(transfer, leg)) => {}
            Entry::Leg {
                transfer,
                leg,
                amount,
            } => {
                match leg {
                    Leg::Debit if amount > self.balance => {
                        return Err(InsufficientFunds {
                            balance: self.balance,
                            wanted: amount,
                        });
                    }
                    Leg::Debit => self.balance -= amount,
                    Leg::Credit | Leg::Refund => self.balance += amount,
                }
                self.applied.insert((transfer, leg));
            }
        }
        Ok(())
    }
}

/// Every account lives in the region its name starts with.
fn home(account: &str) -> String {
    if account.starts_with("jp-") {
        TOKYO.to_string()
    } else {
        FRANKFURT.to_string()
    }
}

/// How one leg went.
enum Done {
    Applied,
    Refused(InsufficientFunds),
    /// Not applied: the request never left this region.
    NotApplied,
    /// Maybe applied: the request left, no answer came.
    Unknown,
}

async fn leg(
    accounts: &HomedTable<String, Account>,
    account: &str,
    transfer: u64,
    leg: Leg,
    amount: u64,
) -> Result<Done, RegionError> {
    let entry = Entry::Leg {
        transfer,
        leg,
        amount,
    };
    match accounts.apply(account, entry).await {
        Ok(_) => Ok(Done::Applied),
        Err(HomedError::Rejected { rejection, .. }) => Ok(Done::Refused(rejection)),
        Err(HomedError::Region(RegionError::HomeUnreachable { maybe_applied, .. })) => {
            Ok(if maybe_applied {
                Done::Unknown
            } else {
                Done::NotApplied
            })
        }
        Err(HomedError::Region(other)) => Err(other),
    }
}

/// A leg to retry once its home is reachable again.
struct Pending {
    account: String,
    leg: Leg,
    transfer: u64,
    amount: u64,
}

/// One transfer, run from the region `accounts` belongs to. Returns the
/// legs still to retry once the homes are reachable again.
async fn transfer(
    accounts: &HomedTable<String, Account>,
    id: u64,
    from: &str,
    to: &str,
    amount: u64,
) -> Result<Vec<Pending>, RegionError> {
    let pending = |account: &str, leg| Pending {
        account: account.to_string(),
        leg,
        transfer: id,
        amount,
    };
    print!("transfer {id}: {amount} from {from} to {to}: ");
    match leg(accounts, from, id, Leg::Debit, amount).await? {
        Done::Applied => {}
        Done::Refused(why) => {
            println!("refused at the payer's home ({why:?}); nothing moved");
            return Ok(Vec::new());
        }
        Done::NotApplied => {
            println!("payer's home unreachable; nothing moved");
            return Ok(Vec::new());
        }
        Done::Unknown => {
            println!("payer's home did not answer; the debit is retried later");
            return Ok(vec![pending(from, Leg::Debit), pending(to, Leg::Credit)]);
        }
    }
    match leg(accounts, to, id, Leg::Credit, amount).await? {
        Done::Applied => {
            println!("debited and credited");
            Ok(Vec::new())
        }
        Done::Refused(_) => unreachable!("a credit is never refused"),
        Done::NotApplied => {
            // The credit surely did not happen: compensate.
            let refund = leg(accounts, from, id, Leg::Refund, amount).await?;
            assert!(matches!(refund, Done::Applied), "the payer's home is here");
            println!("payee's home unreachable; the payer was refunded");
            Ok(Vec::new())
        }
        Done::Unknown => {
            // It may have happened: refunding could create money. The
            // credit is retried (at most once applied, by its id) instead.
            println!("payee's home did not answer; the credit is retried later");
            Ok(vec![pending(to, Leg::Credit)])
        }
    }
}

async fn total(accounts: &HomedTable<String, Account>, names: &[&str]) -> Result<u64, RegionError> {
    let mut sum = 0;
    for name in names {
        let read = accounts.read_at_home(*name).await?;
        sum += read.value.map_or(0, |a| a.balance);
    }
    Ok(sum)
}

#[tokio::main(flavor = "current_thread", start_paused = true)]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let net = ChannelNetwork::new(3);
    let mut regions = Vec::new();
    let mut tables = Vec::new();
    for name in [TOKYO, FRANKFURT] {
        let region = Region::builder(name)
            .transport(net.endpoint(name))
            .config(RegionConfig::default())
            .build()?;
        tables.push(region.homed_table::<String, Account>("accounts", |a: &String| home(a))?);
        regions.push(region);
    }
    let (tokyo, frankfurt) = (&tables[0], &tables[1]);
    let names = ["jp-aiko", "de-ben"];
    tokio::time::sleep(Duration::from_millis(100)).await;
    tokyo.apply("jp-aiko", Entry::Open(OPENING_BALANCE)).await?;
    frankfurt
        .apply("de-ben", Entry::Open(OPENING_BALANCE))
        .await?;
    let before = total(tokyo, &names).await?;
    println!("opened: total {before}");

    let mut retry = transfer(tokyo, 1, "jp-aiko", "de-ben", 30).await?;
    retry.extend(transfer(frankfurt, 2, "de-ben", "jp-aiko", 500).await?);
    println!("total {}", total(tokyo, &names).await?);

    net.partition(TOKYO, FRANKFURT);
    println!("-- Tokyo and Frankfurt cut apart");
    retry.extend(transfer(tokyo, 3, "jp-aiko", "de-ben", 20).await?);
    let aiko = tokyo.read_at_home("jp-aiko").await?;
    println!(
        "jp-aiko at home: {:?}",
        aiko.value.map(|a| a.balance).unwrap_or(0)
    );

    net.heal_all();
    println!("-- healed");
    tokio::time::sleep(Duration::from_millis(500)).await;
    // A leg left pending is retried with its transfer's id: applied at
    // most once, whether or not the first try reached the home.
    for p in retry {
        let done = leg(tokyo, &p.account, p.transfer, p.leg, p.amount).await?;
        assert!(matches!(done, Done::Applied), "the homes are reachable");
        println!(
            "retried the {:?} of transfer {} at {}",
            p.leg, p.transfer, p.account
        );
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    for (table, region) in tables.iter().zip(&regions) {
        let mut line = String::new();
        for name in names {
            let local = table.read(name)?.map_or(0, |a| a.balance);
            line.push_str(&format!(" {name} {local}"));
        }
        println!("{:<12} reads locally:{line}", region.name());
    }
    let after = total(frankfurt, &names).await?;
    println!("total {after} (was {before})");
    assert_eq!(after, before, "money is neither made nor lost");
    for region in &regions {
        region.shutdown().await;
    }
    Ok(())
}
