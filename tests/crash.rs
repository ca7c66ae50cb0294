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

use crate::common;

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
        let table = region.table::<u64, GCounter>("t").unwrap();
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
        let table = region.table::<u64, GCounter>("t").unwrap();
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
    let table = region.table::<u64, GCounter>("t").unwrap();
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
    let replay =
        format!("replay: CRASH_SEED={seed} CRASH_KILLS={kills} cargo test --test suite crash::");
    let mut rng = Rng(seed);
    let dir = std::env::temp_dir().join(format!("archipelago-crash-{}-{seed}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let exe = std::env::current_exe().unwrap();
    let mut acked: BTreeSet<u64> = BTreeSet::new();
    let mut total_extra = 0;
    for run in 0..kills {
        let mut child = Command::new(&exe)
            .args([
                "crash::crash_child",
                "--exact",
                "--nocapture",
                "--test-threads=1",
            ])
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
        let peer_table = peer.table::<u64, GCounter>("t").unwrap();
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
        let table = crashy.table::<u64, GCounter>("t").unwrap();
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

// ----- lost unsynced writes, through redb's `StorageBackend` -------------

mod disk {
    //! A disk that forgets: writes since the last `sync_data` are each
    //! kept or lost at random when it crashes, and it can be made to die
    //! after a number of writes (a crash in the middle of a commit).

    use std::sync::{Arc, Mutex};

    use redb::StorageBackend;

    enum Op {
        Write(u64, Vec<u8>),
        SetLen(u64),
    }

    #[derive(Default)]
    struct State {
        /// What a crash keeps for sure.
        synced: Vec<u8>,
        /// What the process reads: `synced` and every write since.
        live: Vec<u8>,
        /// Writes since the last sync, in order.
        unsynced: Vec<Op>,
        /// Writes (and syncs) left before the process dies.
        fuel: Option<u64>,
        dead: bool,
    }

    #[derive(Clone, Default)]
    pub struct CrashDisk(Arc<Mutex<State>>);

    impl std::fmt::Debug for CrashDisk {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("CrashDisk")
        }
    }

    fn dead() -> std::io::Error {
        std::io::Error::other("the process is dead (injected)")
    }

    fn apply(image: &mut Vec<u8>, op: &Op) {
        match op {
            Op::Write(offset, data) => {
                let end = *offset as usize + data.len();
                if image.len() < end {
                    image.resize(end, 0);
                }
                image[*offset as usize..end].copy_from_slice(data);
            }
            Op::SetLen(len) => image.resize(*len as usize, 0),
        }
    }

    impl CrashDisk {
        /// The process dies after `writes` more writes or syncs.
        pub fn die_after(&self, writes: u64) {
            self.0.lock().unwrap().fuel = Some(writes);
        }

        /// Power lost: this disk is dead; the returned one holds what was
        /// synced and, of each write since, a coin toss (`keep`).
        pub fn crash(&self, mut keep: impl FnMut() -> bool) -> CrashDisk {
            let mut state = self.0.lock().unwrap();
            state.dead = true;
            let mut image = state.synced.clone();
            for op in &state.unsynced {
                if keep() {
                    apply(&mut image, op);
                }
            }
            CrashDisk(Arc::new(Mutex::new(State {
                synced: image.clone(),
                live: image,
                ..State::default()
            })))
        }

        fn spend(state: &mut State) -> Result<(), std::io::Error> {
            if state.dead {
                return Err(dead());
            }
            if let Some(fuel) = &mut state.fuel {
                if *fuel == 0 {
                    state.dead = true;
                    return Err(dead());
                }
                *fuel -= 1;
            }
            Ok(())
        }
    }

    impl StorageBackend for CrashDisk {
        fn len(&self) -> Result<u64, std::io::Error> {
            Ok(self.0.lock().unwrap().live.len() as u64)
        }

        fn read(&self, offset: u64, out: &mut [u8]) -> Result<(), std::io::Error> {
            let state = self.0.lock().unwrap();
            let end = offset as usize + out.len();
            if end > state.live.len() {
                return Err(std::io::Error::from(std::io::ErrorKind::UnexpectedEof));
            }
            out.copy_from_slice(&state.live[offset as usize..end]);
            Ok(())
        }

        fn set_len(&self, len: u64) -> Result<(), std::io::Error> {
            let mut state = self.0.lock().unwrap();
            CrashDisk::spend(&mut state)?;
            let op = Op::SetLen(len);
            apply(&mut state.live, &op);
            state.unsynced.push(op);
            Ok(())
        }

        fn sync_data(&self) -> Result<(), std::io::Error> {
            let mut state = self.0.lock().unwrap();
            CrashDisk::spend(&mut state)?;
            state.synced = state.live.clone();
            state.unsynced.clear();
            Ok(())
        }

        fn write(&self, offset: u64, data: &[u8]) -> Result<(), std::io::Error> {
            let mut state = self.0.lock().unwrap();
            CrashDisk::spend(&mut state)?;
            let op = Op::Write(offset, data.to_vec());
            apply(&mut state.live, &op);
            state.unsynced.push(op);
            Ok(())
        }
    }
}

/// What a store holds, comparable: identity, progress and retired peers
/// as text, then states (sorted), outbox and cursors.
type Image = (
    String,
    Vec<(String, Vec<u8>, Vec<u8>)>,
    Vec<(u64, Vec<u8>)>,
    Vec<(String, u64)>,
);

/// What a store holds, comparable: states sorted.
fn image(snapshot: archipelago::storage::Snapshot) -> Image {
    let mut states = snapshot.states;
    states.sort();
    let head = format!(
        "{:?} {:?} {:?}",
        snapshot.identity, snapshot.progress, snapshot.retired
    );
    (head, states, snapshot.outbox, snapshot.cursors)
}

/// A random commit: a few states, outbox segments above a start that
/// moves up, cursors, now and then an identity or the retired list.
fn random_commit(
    rng: &mut Rng,
    seq: &mut u64,
    keep_from: &mut u64,
) -> archipelago::storage::Commit {
    use archipelago::clock::ReplicaId;
    use archipelago::storage::{Commit, Identity, Progress};
    *seq += 1 + rng.below(40);
    if rng.below(4) == 0 {
        *keep_from += rng.below(30);
    }
    let mut commit = Commit {
        progress: Some(Progress {
            seq: *seq,
            ..Progress::default()
        }),
        outbox_keep_from: *keep_from,
        ..Commit::default()
    };
    if rng.below(20) == 0 {
        commit.identity = Some(Identity {
            region: "crashy".into(),
            replica: ReplicaId::new(9),
            incarnation: rng.below(100),
        });
    }
    // Now and then a commit over the journal's bound: folded at once.
    let states = if rng.below(10) == 0 {
        200
    } else {
        rng.below(12)
    };
    for _ in 0..states {
        let table = ["t", "u"][rng.below(2) as usize];
        let key = rng.below(64).to_le_bytes()[..2].to_vec();
        let len = 1 + rng.below(24) as usize;
        commit
            .states
            .push((table.into(), key, vec![rng.below(256) as u8; len]));
    }
    for _ in 0..rng.below(3) {
        let first = *keep_from + rng.below(60);
        commit.outbox_put.push((
            first,
            vec![rng.below(256) as u8; 1 + rng.below(300) as usize],
        ));
    }
    for _ in 0..rng.below(3) {
        commit
            .cursors
            .push((format!("p{}", rng.below(4)), rng.below(1000)));
    }
    if rng.below(15) == 0 {
        commit.retired = Some(vec![(
            format!("p{}", rng.below(4)),
            vec![ReplicaId::new(3)],
        )]);
    }
    commit
}

/// Commits to a redb store on a disk that forgets unsynced writes, with a
/// small journal (folded every few commits), crashing between commits and
/// in the middle of them: after each crash the store loads exactly what
/// was committed (a model `MemoryStorage` given the same commits), or, for
/// the commit the crash interrupted, that commit or nothing. The schedule
/// replays from `CRASH_SEED`.
#[test]
fn journaled_commits_survive_a_disk_that_loses_unsynced_writes() {
    use archipelago::storage::{MemoryStorage, RedbStorage, Storage};
    let seed: u64 = std::env::var("CRASH_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0x5eed_1234_abcd)
        | 1;
    let steps: u64 = std::env::var("CRASH_STEPS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000);
    let replay = format!("replay: CRASH_SEED={seed} cargo test --test suite crash::journaled");
    let mut rng = Rng(seed);
    let open = |disk: &disk::CrashDisk| {
        RedbStorage::with_backend(disk.clone())
            .unwrap()
            .journal_bytes_max(2048)
    };
    let mut disk = disk::CrashDisk::default();
    let mut store = open(&disk);
    store.load().unwrap();
    // The model: every commit that returned Ok, applied in order.
    let model = |commits: &[archipelago::storage::Commit]| {
        let mut model = MemoryStorage::new();
        for commit in commits {
            model.commit(commit).unwrap();
        }
        image(model.load().unwrap())
    };
    let mut committed = Vec::new();
    let (mut seq, mut keep_from) = (0, 0);
    let (mut crashes, mut interrupted) = (0, 0);
    for step in 0..steps {
        let commit = random_commit(&mut rng, &mut seq, &mut keep_from);
        let crash_in_commit = rng.below(12) == 0;
        if crash_in_commit {
            disk.die_after(rng.below(60));
        }
        let result = store.commit(&commit);
        match &result {
            Ok(()) => committed.push(commit.clone()),
            Err(e) => assert!(crash_in_commit, "step {step}: {e}; {replay}"),
        }
        if crash_in_commit || rng.below(15) == 0 {
            crashes += 1;
            let mut coin = Rng(rng.below(u64::MAX) | 1);
            disk = disk.crash(|| coin.below(2) == 0);
            drop(std::mem::replace(&mut store, open(&disk)));
            let found = image(
                store
                    .load()
                    .unwrap_or_else(|e| panic!("step {step}: reopening: {e}; {replay}")),
            );
            if found != model(&committed) {
                // Only the commit the crash interrupted may be there (its
                // writer was never answered): then it is there whole.
                assert!(
                    result.is_err(),
                    "step {step}: the store lost a commit that returned Ok; {replay}"
                );
                committed.push(commit);
                assert_eq!(
                    found,
                    model(&committed),
                    "step {step}: an interrupted commit is there in part; {replay}"
                );
                interrupted += 1;
            }
        }
    }
    assert!(crashes >= 10, "{crashes} crashes");
    eprintln!(
        "{steps} commits, {crashes} crashes, {interrupted} interrupted commits found whole; seed {seed}"
    );
}

/// Group commit acknowledges a `Local` write only once the commit that
/// covers it came back from `sync_data`: 64 writers (each waiting for its
/// own write, as the `durability` bench's `local/w64`) on a redb store
/// whose disk dies in the middle of a commit, after a seeded number of
/// writes and syncs, then loses a seeded part of what it had not synced.
/// Every write answered `Ok` is on the disk that survives; each writer's
/// write the dead commit covered gets the typed storage error. Asserts the
/// commits shared writes (group commit was at work). `CRASH_SEED=n`
/// replays.
#[test]
fn group_commit_acknowledges_only_synced_writes() {
    use archipelago::region::RegionError;
    use archipelago::storage::RedbStorage;
    const GROUP_WRITERS: u64 = 64;
    const RUNS: u64 = 6;
    let seed = common::seed_from_env("CRASH_SEED", 0x9c0f_fee5);
    let mut rng = common::TestRng::new(seed);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (mut acked_total, mut errors_total, mut commits, mut committed) = (0, 0, 0, 0);
    for run in 0..RUNS {
        let disk = disk::CrashDisk::default();
        let fuel = rng.below(40);
        let mut coin = common::TestRng::new(rng.next_u64());
        let acked: Vec<u64> = rt.block_on(async {
            let a = Region::builder("a")
                .storage(RedbStorage::with_backend(disk.clone()).unwrap())
                .build()
                .unwrap();
            let t = a
                .table::<u64, GCounter>("t")
                .unwrap()
                .with_ack(AckLevel::Local);
            let writers: Vec<_> = (0..GROUP_WRITERS)
                .map(|key| {
                    let t = t.clone();
                    tokio::spawn(async move {
                        let mut acked = 0;
                        loop {
                            match t
                                .update(&key, |c, ctx| c.apply(|c| c.inc(ctx.replica(), 1)))
                                .await
                            {
                                Ok(_) => acked += 1,
                                Err(RegionError::Storage(_)) => return acked,
                                Err(other) => panic!("writer {key}: {other}"),
                            }
                        }
                    })
                })
                .collect();
            while a.stats().commits < 20 {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            disk.die_after(fuel);
            let mut acked = Vec::new();
            for w in writers {
                acked.push(
                    tokio::time::timeout(Duration::from_secs(20), w)
                        .await
                        .expect("every writer meets the dead disk")
                        .unwrap(),
                );
            }
            let stats = a.stats();
            commits += stats.commits;
            committed += stats.committed_writes;
            errors_total += GROUP_WRITERS;
            drop(t);
            drop(a);
            acked
        });
        let survived = disk.crash(|| coin.below(2) == 0);
        rt.block_on(async {
            let a = Region::builder("a")
                .storage(RedbStorage::with_backend(survived).unwrap())
                .build()
                .unwrap();
            let t = a.table::<u64, GCounter>("t").unwrap();
            for (key, &n) in acked.iter().enumerate() {
                let found = t.read(&(key as u64)).await.unwrap().map_or(0, |c| c.value());
                assert!(
                    found >= n,
                    "run {run}: key {key} holds {found} after the crash, {n} were acknowledged; replay: CRASH_SEED={seed}"
                );
            }
            acked_total += acked.iter().sum::<u64>();
            a.shutdown().await;
        });
    }
    assert!(
        acked_total >= RUNS * GROUP_WRITERS,
        "{acked_total} writes acknowledged"
    );
    assert_eq!(errors_total, RUNS * GROUP_WRITERS);
    assert!(
        committed > 4 * commits,
        "{committed} writes in {commits} commits: group commit shared them"
    );
}
