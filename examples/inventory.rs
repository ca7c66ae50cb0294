//! Tokyo, Frankfurt and Virginia sell the same 100 units of stock.
//! Tokyo restocks, so it holds every unit's rights at first; the engine
//! moves rights to the regions where customers are. Virginia is cut off
//! for a while: it sells what it holds, and refuses the rest at once
//! instead of overselling. After the heal the stock sells out, and no
//! region ever reads below zero.
//!
//! Run: `cargo run --release --example inventory`

use std::time::Duration;

use archipelago::region::{BoundedTable, Region, RegionConfig, RegionError};
use archipelago::transport::ChannelNetwork;

const NAMES: [&str; 3] = ["ap-northeast", "eu-central", "us-east"];
const SKU: &str = "matcha";
const UNITS: u64 = 100;
/// Customers per round at each region: most are away from Tokyo.
const DEMAND: [u64; 3] = [1, 2, 2];
/// One round of customers.
const ROUND: Duration = Duration::from_millis(100);

struct Shop {
    region: Region,
    stock: BoundedTable<String>,
    sold: u64,
    refused: u64,
}

impl Shop {
    /// One round: `DEMAND` customers each buy one unit, if they can.
    async fn serve(&mut self, customers: u64) -> Result<(), RegionError> {
        for _ in 0..customers {
            match self.stock.try_dec(SKU, 1).await {
                Ok(_) => self.sold += 1,
                Err(RegionError::Rights(_)) => self.refused += 1,
                Err(other) => return Err(other),
            }
        }
        Ok(())
    }
}

fn report(phase: &str, shops: &[Shop]) -> Result<(), RegionError> {
    println!("-- {phase}");
    for shop in shops {
        let stats = shop.region.stats();
        println!(
            "{:<12} sold {:>3}  refused {:>3}  rights held {:>3}  reads {:>3}  \
             asked {:>2}x  granted {:>3} units",
            shop.region.name(),
            shop.sold,
            shop.refused,
            shop.stock.rights(SKU)?,
            shop.stock.value(SKU)?.unwrap_or(0),
            stats.rights_requested,
            stats.rights_granted,
        );
    }
    Ok(())
}

async fn rounds(shops: &mut [Shop], n: usize) -> Result<(), RegionError> {
    for _ in 0..n {
        for (shop, customers) in shops.iter_mut().zip(DEMAND) {
            shop.serve(customers).await?;
        }
        tokio::time::sleep(ROUND).await;
    }
    Ok(())
}

#[tokio::main]
async fn main() -> Result<(), RegionError> {
    let net = ChannelNetwork::new(1);
    let mut shops = Vec::new();
    for name in NAMES {
        let region = Region::builder(name)
            .transport(net.endpoint(name))
            .config(RegionConfig::default())
            .build()?;
        let stock = region.bounded_table::<String, 0>("stock")?;
        shops.push(Shop {
            region,
            stock,
            sold: 0,
            refused: 0,
        });
    }
    tokio::time::sleep(ROUND).await;
    shops[0].stock.inc(SKU, UNITS).await?;
    tokio::time::sleep(ROUND).await;
    report("Tokyo restocked 100 units", &shops)?;

    rounds(&mut shops, 8).await?;
    report("8 rounds of sales, all connected", &shops)?;

    net.isolate(NAMES[2]);
    rounds(&mut shops, 8).await?;
    report("8 rounds with Virginia cut off", &shops)?;

    net.heal_all();
    let mut round = 0;
    while shops.iter().any(|s| s.stock.rights(SKU).unwrap_or(0) > 0) || round < 30 {
        rounds(&mut shops, 1).await?;
        round += 1;
        if round > 300 {
            break;
        }
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    report("healed; sold out", &shops)?;

    let sold: u64 = shops.iter().map(|s| s.sold).sum();
    let lowest = shops
        .iter()
        .map(|s| s.stock.value(SKU).map(|v| v.unwrap_or(0)))
        .collect::<Result<Vec<_>, _>>()?;
    println!("sold {sold} of {UNITS}; every region reads {lowest:?}");
    assert!(sold <= UNITS, "never oversold");
    assert!(lowest.iter().all(|&v| v >= 0), "never below zero");
    for shop in &shops {
        shop.region.shutdown().await;
    }
    Ok(())
}
