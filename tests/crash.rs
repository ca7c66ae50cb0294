//! Crashes for real: a child process (this test binary, re-executed)
//! writes with `AckLevel::Local` on a redb store and prints each
//! acknowledged write; the parent kills it with SIGKILL at random moments,
//! checks that every acknowledged write is on disk and that the store holds
//! nothing but the model, and starts it again on the same directory. At the
//! end the region converges with a peer that kept writing meanwhile.
//!
//! 20 kills by default; `CRASH_KILLS=200` for a deep run, `CRASH_SEED=n`
//! to replay one schedule.

#![cfg(feature = "redb")]

mod common;

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use archipelago::crdt::GCounter;
use archipelago::region::{AckLevel, Region};
use archipelago::transport::ChannelNetwork;

/// Concurrent writers in the child: their writes share commits.
const WRITERS: u64 = 4;
/// Keys each child run may use: run `r` writes keys from `r * RUN_KEYS`.
const RUN_KEYS: u64 = 1_000_000;

/// The child: writes until killed. Does nothing unless the parent set
/// `CRASH_CHILD_DIR`.
#[test]
fn crash_child() {
    let Ok(dir) = std::env::var("CRASH_CHILD_DIR") else {
        return;
    };
    let from: u64 = std::env::var("CRASH_CHILD_FROM").unwrap().parse().unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async move {
        // A transport with no peer: the outbox keeps every write, and is
        // stored and restored across the kills.
        let net = ChannelNetwork::new(1);
        let region = Region::builder("crashy")
            .transport(net.endpoint("crashy"))
            .data_dir(&dir)
            .ack_level(AckLevel::Local)
            .build()
            .unwrap();
        let table = region.table::<GCounter>("t").unwrap();
        let mut writers = Vec::new();
        for w in 0..WRITERS {
            let table = table.clone();
            writers.push(tokio::spawn(async move {
                for i in 0.. {
                    let key = from + i * WRITERS + w;
                    table
                        .update(&key, |c, ctx| c.apply(|c| c.inc(ctx.replica(), 1)))
                        .await
                        .unwrap();
                    println!("ack {key}");
                }
            }));
        }
        for w in writers {
            w.await.unwrap();
        }
    });
}

struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

/// Every key of table `t` and its value, through a region opened on `dir`.
fn stored(dir: &std::path::Path) -> Vec<(u64, u64)> {
    common::paused_runtime().block_on(async {
        let region = Region::builder("crashy").data_dir(dir).build().unwrap();
        let table = region.table::<GCounter>("t").unwrap();
        let mut out = Vec::new();
        // Keys are known only through the model: probe the ranges used.
        for key in region_keys(&region).await {
            if let Some(c) = table.read(&key).await.unwrap() {
                out.push((key, c.value()));
            }
        }
        region.shutdown().await;
        out
    })
}

/// Keys of table `t`, from the region's own count and the ranges the runs
/// used (a GCounter table has no key listing; probing is enough here).
async fn region_keys(region: &Region) -> Vec<u64> {
    let table = region.table::<GCounter>("t").unwrap();
    let want = table.len();
    let mut keys = Vec::new();
    let mut run = 0;
    while keys.len() < want && run < 10_000 {
        let mut misses = 0;
        let mut i = 0;
        while misses < 64 {
            let key = run * RUN_KEYS + i;
            if table.read(&key).await.unwrap().is_some() {
                keys.push(key);
                misses = 0;
            } else {
                misses += 1;
            }
            i += 1;
        }
        run += 1;
    }
    keys
}

#[test]
fn acknowledged_local_writes_survive_sigkill() {
    let kills: u64 = std::env::var("CRASH_KILLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20);
    let seed: u64 = std::env::var("CRASH_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
                | 1
        });
    let replay = format!("replay: CRASH_SEED={seed} CRASH_KILLS={kills} cargo test --test crash");
    let mut rng = Rng(seed);
    let dir = std::env::temp_dir().join(format!("archipelago-crash-{}-{seed}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let exe = std::env::current_exe().unwrap();
    let mut acked: BTreeSet<u64> = BTreeSet::new();
    let mut total_extra = 0;
    for run in 0..kills {
        let mut child = Command::new(&exe)
            .args(["crash_child", "--exact", "--nocapture", "--test-threads=1"])
            .env("CRASH_CHILD_DIR", &dir)
            .env("CRASH_CHILD_FROM", (run * RUN_KEYS).to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        // Kill after a random number of acknowledgements (0: while it opens
        // the store), or at the latest after 5 s.
        let target = rng.below(300);
        let stdout = child.stdout.take().unwrap();
        let (lines, got) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                // libtest prints "test crash_child ... " without a line
                // break before the child's first line.
                if let Some(at) = line.find("ack ")
                    && lines.send(line[at + 4..].parse::<u64>().unwrap()).is_err()
                {
                    break;
                }
            }
        });
        let mut seen = 0;
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while seen < target {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match got.recv_timeout(left) {
                Ok(key) => {
                    acked.insert(key);
                    seen += 1;
                }
                Err(_) => break,
            }
        }
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        // Acknowledgements already printed when it died count too.
        while let Ok(key) = got.recv_timeout(Duration::from_millis(50)) {
            acked.insert(key);
        }

        let held = stored(&dir);
        let keys: BTreeSet<u64> = held.iter().map(|(k, _)| *k).collect();
        for key in &acked {
            assert!(
                keys.contains(key),
                "acknowledged write {key} lost after kill {run}; {replay}"
            );
        }
        for (key, value) in &held {
            assert_eq!(*value, 1, "key {key} holds {value}, the model 1; {replay}");
        }
        // Committed but killed before printing: at most one per writer.
        let extra: Vec<u64> = keys.difference(&acked).copied().collect();
        assert!(
            extra.iter().filter(|k| **k / RUN_KEYS == run).count() as u64 <= WRITERS,
            "run {run} holds unacknowledged writes {extra:?}; {replay}"
        );
        acked.extend(extra.iter().copied());
        total_extra += extra.len();
    }
    assert!(
        acked.len() > kills as usize,
        "the children wrote: {} acks",
        acked.len()
    );

    // The region converges with a peer that kept writing.
    common::paused_runtime().block_on(async {
        let net = ChannelNetwork::new(seed);
        let peer = Region::builder("peer")
            .transport(net.endpoint("peer"))
            .build()
            .unwrap();
        let peer_table = peer.table::<GCounter>("t").unwrap();
        for key in 0..100u64 {
            peer_table
                .update(&(u64::MAX - key), |c, ctx| {
                    c.apply(|c| c.inc(ctx.replica(), 1))
                })
                .await
                .unwrap();
        }
        let crashy = Region::builder("crashy")
            .transport(net.endpoint("crashy"))
            .data_dir(&dir)
            .build()
            .unwrap();
        let table = crashy.table::<GCounter>("t").unwrap();
        let want = acked.len() + 100;
        for _ in 0..2_000 {
            if table.len() == want && peer_table.len() == want {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(table.len(), want, "crashy has the peer's writes; {replay}");
        assert_eq!(
            peer_table.len(),
            want,
            "the peer has every acknowledged write; {replay}"
        );
        for key in acked.iter().take(50) {
            assert_eq!(
                peer_table.read(key).await.unwrap().map(|c| c.value()),
                Some(1),
                "{replay}"
            );
        }
        assert_eq!(
            crashy.stats().rejected_frames + peer.stats().rejected_frames,
            0
        );
        crashy.shutdown().await;
        peer.shutdown().await;
    });
    eprintln!(
        "{kills} kills, {} acknowledged writes, {total_extra} committed unacknowledged; seed {seed}",
        acked.len()
    );
    std::fs::remove_dir_all(&dir).unwrap();
}
