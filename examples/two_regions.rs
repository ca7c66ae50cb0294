//! Two regions, Tokyo and Frankfurt, sell the same stock and edit the same
//! cart and profile at the same time. Each keeps serving its own writes and
//! ships the deltas to the other over a tokio channel, encoded by `wire`
//! exactly as they would cross a network. Both end in the same state.
//!
//! (This wiring is by hand; the region engine will replace it.)
//!
//! Run: `cargo run --release --example two_regions`

use archipelago::clock::{Hlc, ReplicaId};
use archipelago::crdt::{Crdt, LwwMap, OrSet, PnCounter};
use archipelago::wire;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

/// One delta on the wire, tagged with what it belongs to.
#[derive(Serialize, Deserialize)]
enum Delta {
    Stock(PnCounter),
    Cart(OrSet<String>),
    Profile(LwwMap<String, String>),
}

#[derive(Clone, Default, PartialEq, Debug)]
struct State {
    stock: PnCounter,
    cart: OrSet<String>,
    profile: LwwMap<String, String>,
}

impl State {
    fn apply(&mut self, delta: &Delta) {
        match delta {
            Delta::Stock(d) => self.stock.merge(d),
            Delta::Cart(d) => self.cart.merge(d),
            Delta::Profile(d) => self.profile.merge(d),
        }
    }

    fn summary(&self) -> String {
        let mut cart: Vec<&str> = self.cart.iter().map(String::as_str).collect();
        cart.sort_unstable();
        let mut profile: Vec<String> = self
            .profile
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        profile.sort_unstable();
        format!(
            "stock {:>3} | cart {:?} | profile {{{}}}",
            self.stock.value(),
            cart,
            profile.join(", ")
        )
    }
}

/// A write a region makes locally.
enum Write {
    Restock(u64),
    Sell(u64),
    AddToCart(&'static str),
    RemoveFromCart(&'static str),
    SetProfile(&'static str, &'static str),
}

/// One region: applies its writes locally at once, ships each delta, then
/// merges whatever the other region sent until that channel closes.
async fn region(
    name: &'static str,
    mut state: State,
    writes: Vec<Write>,
    outbox: mpsc::Sender<Vec<u8>>,
    mut inbox: mpsc::Receiver<Vec<u8>>,
) -> Result<State, Box<dyn std::error::Error + Send + Sync>> {
    let replica = ReplicaId::from_name(name);
    let hlc = Hlc::new(replica);
    for write in writes {
        let delta = match write {
            Write::Restock(n) => Delta::Stock(state.stock.inc(replica, n)),
            Write::Sell(n) => Delta::Stock(state.stock.dec(replica, n)),
            Write::AddToCart(sku) => Delta::Cart(state.cart.insert(replica, sku.to_string())),
            Write::RemoveFromCart(sku) => Delta::Cart(state.cart.remove(sku)),
            Write::SetProfile(k, v) => Delta::Profile(state.profile.insert(
                hlc.stamp(),
                k.to_string(),
                v.to_string(),
            )),
        };
        outbox.send(wire::encode(&delta)?).await?;
        tokio::task::yield_now().await; // let the other region interleave
    }
    drop(outbox);
    let mut received = 0;
    while let Some(frame) = inbox.recv().await {
        state.apply(&wire::decode::<Delta>(&frame)?);
        received += 1;
    }
    println!("{name:<12} merged {received} deltas from its peer");
    Ok(state)
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    // Both regions start from the same state: 20 in stock, tea in the cart.
    let tokyo_id = ReplicaId::from_name("ap-northeast");
    let mut start = State::default();
    start.stock.inc(tokyo_id, 20);
    start.cart.insert(tokyo_id, "tea".to_string());
    println!("start     {}", start.summary());

    let tokyo_writes = vec![
        Write::Sell(3),
        Write::AddToCart("matcha"),
        Write::RemoveFromCart("tea"),
        Write::SetProfile("name", "Aiko"),
        Write::SetProfile("city", "Tokyo"),
    ];
    let frankfurt_writes = vec![
        Write::Restock(10),
        Write::Sell(1),
        Write::AddToCart("tea"), // concurrent with Tokyo's removal: the add wins
        Write::AddToCart("pretzel"),
        Write::SetProfile("city", "Frankfurt"),
    ];

    let (to_frankfurt, from_tokyo) = mpsc::channel(64);
    let (to_tokyo, from_frankfurt) = mpsc::channel(64);
    let tokyo = tokio::spawn(region(
        "ap-northeast",
        start.clone(),
        tokyo_writes,
        to_frankfurt,
        from_frankfurt,
    ));
    let frankfurt = tokio::spawn(region(
        "eu-central",
        start,
        frankfurt_writes,
        to_tokyo,
        from_tokyo,
    ));
    let (tokyo, frankfurt) = (tokyo.await??, frankfurt.await??);

    println!("tokyo     {}", tokyo.summary());
    println!("frankfurt {}", frankfurt.summary());
    if tokyo == frankfurt {
        println!("converged: both regions hold the same state");
        Ok(())
    } else {
        Err("regions diverged".into())
    }
}
