//! Two replicas write the same profile at the same time, once under each
//! resolution strategy, and print what the conflict audit feed recorded.
//!
//! Run: `cargo run --example conflict_audit`

use archipelago::clock::{Hlc, ManualClock, ReplicaId};
use archipelago::resolve::{
    ConflictFeed, FirstWriteWins, LastWriteWins, Merge, Resolution, Resolver, Siblings, VersionSet,
};
use serde_json::{Value, json};

fn show(resolution: &Resolution<Value>) -> String {
    match resolution {
        Resolution::Value(v) => v.value.to_string(),
        Resolution::Siblings(s) => {
            let all: Vec<String> = s.iter().map(|v| v.value.to_string()).collect();
            format!("siblings [{}]", all.join(", "))
        }
    }
}

fn region(id: ReplicaId) -> &'static str {
    if id == ReplicaId::from_name("ap-northeast") {
        "ap-northeast"
    } else {
        "eu-central"
    }
}

fn main() {
    let wall = ManualClock::new(1_764_000_000_000);
    let tokyo = Hlc::with_clock(ReplicaId::from_name("ap-northeast"), wall.clone());
    let frankfurt = Hlc::with_clock(ReplicaId::from_name("eu-central"), wall.clone());
    let feed = ConflictFeed::with_clock("profiles", tokyo.replica(), wall.clone());
    let audit = feed.subscribe(16);

    let strategies: [(&str, &dyn Resolver<Value>); 4] = [
        ("last-write-wins", &LastWriteWins),
        ("first-write-wins", &FirstWriteWins),
        ("deep merge", &Merge::<fn(&Value, &Value) -> Value>::deep()),
        ("siblings", &Siblings),
    ];
    for (name, resolver) in strategies {
        // Both start from the same profile...
        let mut at_tokyo = VersionSet::new();
        let created = at_tokyo.write(tokyo.stamp(), json!({"name": "Aiko", "plan": "free"}));
        let mut at_frankfurt = VersionSet::new();
        archipelago::crdt::Crdt::merge(&mut at_frankfurt, &created);

        // ...then edit it concurrently, Frankfurt 40 ms later.
        wall.advance(10);
        let from_tokyo = at_tokyo.write(
            tokyo.stamp(),
            json!({"name": "Aiko", "plan": "free", "lang": "ja"}),
        );
        wall.advance(40);
        let from_frankfurt = at_frankfurt.write(
            frankfurt.stamp(),
            json!({"name": "Aiko Tanaka", "plan": "pro"}),
        );

        // Each side merges the other's write; Tokyo's merge is audited.
        at_tokyo.merge_audited(&from_frankfurt, resolver, &feed, &"user:42", tokyo.now());
        archipelago::crdt::Crdt::merge(&mut at_frankfurt, &from_tokyo);

        let read_tokyo = at_tokyo.resolve(resolver).expect("written");
        let read_frankfurt = at_frankfurt.resolve(resolver).expect("written");
        assert_eq!(read_tokyo, read_frankfurt, "replicas must agree");
        println!("{name:<17} both read {}", show(&read_tokyo));
    }

    println!("\naudit feed of table 'profiles' at ap-northeast:");
    for record in audit.drain() {
        let winner = record
            .winner
            .as_ref()
            .map_or("(kept as siblings)".to_string(), |w| {
                format!("{} ({})", w.value, region(w.origin()))
            });
        let losers: Vec<String> = record
            .losers
            .iter()
            .map(|l| format!("{} ({}, t={})", l.value, region(l.origin()), l.stamp.time))
            .collect();
        println!(
            "  {:<16} key={} winner={}\n{:<20}losers=[{}]",
            record.strategy.to_string(),
            record.key,
            winner,
            "",
            losers.join("; ")
        );
    }
    let stats = feed.stats();
    println!(
        "\nconflicts: {} total, {:.2}/s over the last minute, {} dropped",
        stats.total, stats.recent_per_sec, stats.dropped
    );
}
