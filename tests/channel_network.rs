//! The in-process channel network delivers, delays, loses, duplicates,
//! reorders and partitions frames as configured, counts every frame and
//! byte, and replays exactly from its seed.

use std::time::Duration;

use archipelago::transport::{
    ChannelEndpoint, ChannelNetwork, LinkFaults, NetworkStats, Transport, TransportEvent,
};
use tokio::time::{Instant, timeout};

/// Longer than any delay these tests configure: no event for this long
/// (of paused time) means none is coming.
const QUIET: Duration = Duration::from_secs(10);

fn up(peer: &str) -> TransportEvent {
    TransportEvent::Up(peer.to_owned())
}

fn down(peer: &str) -> TransportEvent {
    TransportEvent::Down(peer.to_owned())
}

fn frame(from: &str, bytes: &[u8]) -> TransportEvent {
    TransportEvent::Frame {
        from: from.to_owned(),
        frame: bytes.to_vec(),
    }
}

/// The next event, failing the test if none comes.
async fn next(endpoint: &mut ChannelEndpoint) -> TransportEvent {
    timeout(QUIET, endpoint.recv())
        .await
        .expect("an event arrives")
        .expect("the transport is open")
}

/// Nothing arrives (within `QUIET`).
async fn assert_quiet(endpoint: &mut ChannelEndpoint) {
    if let Ok(event) = timeout(QUIET, endpoint.recv()).await {
        panic!("expected no event, got {event:?}");
    }
}

/// Every event until the endpoint stays quiet, with its arrival time since
/// `start`.
async fn drain_timed(
    endpoint: &mut ChannelEndpoint,
    start: Instant,
) -> Vec<(Duration, TransportEvent)> {
    let mut events = Vec::new();
    while let Ok(Some(event)) = timeout(QUIET, endpoint.recv()).await {
        events.push((start.elapsed(), event));
    }
    events
}

/// The frames' bytes among every event until the endpoint stays quiet.
async fn drain_frames(endpoint: &mut ChannelEndpoint) -> Vec<Vec<u8>> {
    drain_timed(endpoint, Instant::now())
        .await
        .into_iter()
        .filter_map(|(_, event)| match event {
            TransportEvent::Frame { frame, .. } => Some(frame),
            _ => None,
        })
        .collect()
}

/// Two registered regions, "a" and "b", their `Up` events consumed.
async fn pair(seed: u64) -> (ChannelNetwork, ChannelEndpoint, ChannelEndpoint) {
    let network = ChannelNetwork::new(seed);
    let mut a = network.endpoint("a");
    let mut b = network.endpoint("b");
    assert_eq!(next(&mut a).await, up("b"));
    assert_eq!(next(&mut b).await, up("a"));
    (network, a, b)
}

fn numbered(i: u32) -> Vec<u8> {
    i.to_be_bytes().to_vec()
}

fn number(frame: &[u8]) -> u32 {
    u32::from_be_bytes(frame.try_into().expect("a numbered frame"))
}

/// Every accepted frame is delivered, dropped or still in flight.
fn assert_balanced(stats: &NetworkStats) {
    assert_eq!(
        stats.frames_sent + stats.frames_duplicated,
        stats.frames_delivered + stats.frames_dropped() + stats.frames_in_flight,
        "{stats:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn registration_announces_every_peer() {
    let network = ChannelNetwork::new(1);
    let mut a = network.endpoint("a");
    let mut b = network.endpoint("b");
    assert_eq!(next(&mut a).await, up("b"));
    assert_eq!(next(&mut b).await, up("a"));

    let mut c = network.endpoint("c");
    assert_eq!(next(&mut a).await, up("c"));
    assert_eq!(next(&mut b).await, up("c"));
    let mut announced = vec![next(&mut c).await, next(&mut c).await];
    announced.sort_by_key(|event| format!("{event:?}"));
    assert_eq!(announced, vec![up("a"), up("b")]);

    assert_eq!(a.local(), "a");
    assert_eq!(a.peers(), vec!["b".to_owned(), "c".to_owned()]);
    assert_eq!(c.peers(), vec!["a".to_owned(), "b".to_owned()]);
}

#[tokio::test(start_paused = true)]
async fn latency_delays_delivery() {
    let (network, a, mut b) = pair(1).await;
    let latency = Duration::from_millis(50);
    network.set_faults("a", "b", LinkFaults::new().latency(latency));

    let sent_at = Instant::now();
    a.send("b", b"hello".to_vec());
    assert_eq!(next(&mut b).await, frame("a", b"hello"));
    let elapsed = sent_at.elapsed();
    assert!(elapsed >= latency, "{elapsed:?}");
    assert!(elapsed < latency + Duration::from_millis(2), "{elapsed:?}");
}

#[tokio::test(start_paused = true)]
async fn jitter_spreads_delivery_within_its_bound() {
    let (network, a, mut b) = pair(2).await;
    let (latency, jitter) = (Duration::from_millis(10), Duration::from_millis(20));
    network.set_faults("a", "b", LinkFaults::new().latency(latency).jitter(jitter));

    let start = Instant::now();
    for i in 0..200 {
        a.send("b", numbered(i));
    }
    let arrivals = drain_timed(&mut b, start).await;
    assert_eq!(arrivals.len(), 200);
    let slack = Duration::from_millis(1); // the timer's resolution
    for (at, _) in &arrivals {
        assert!(*at >= latency && *at <= latency + jitter + slack, "{at:?}");
    }
    let (first, last) = (arrivals[0].0, arrivals[arrivals.len() - 1].0);
    assert!(
        last - first >= Duration::from_millis(10),
        "jitter spreads arrivals"
    );
}

#[tokio::test(start_paused = true)]
async fn loss_matches_the_configured_rate() {
    let (network, a, mut b) = pair(3).await;
    network.set_faults("a", "b", LinkFaults::new().loss(0.2));

    let sent = 10_000;
    for i in 0..sent {
        a.send("b", numbered(i));
    }
    let received = drain_frames(&mut b).await;
    let stats = network.stats();
    let lost = stats.frames_dropped_loss;
    let rate = lost as f64 / f64::from(sent);
    assert!((rate - 0.2).abs() < 0.02, "loss rate {rate}");
    assert_eq!(received.len() as u64, u64::from(sent) - lost);
    assert_eq!(stats.frames_delivered, received.len() as u64);
    // Loss never reorders a perfect link.
    assert!(received.windows(2).all(|w| number(&w[0]) < number(&w[1])));
    assert_balanced(&stats);
}

#[tokio::test(start_paused = true)]
async fn duplication_delivers_frames_twice() {
    let (network, a, mut b) = pair(4).await;
    network.set_faults("a", "b", LinkFaults::new().duplicate(1.0));
    for i in 0..100 {
        a.send("b", numbered(i));
    }
    let mut received: Vec<u32> = drain_frames(&mut b)
        .await
        .iter()
        .map(|f| number(f))
        .collect();
    received.sort_unstable();
    let expected: Vec<u32> = (0..100).flat_map(|i| [i, i]).collect();
    assert_eq!(received, expected);
    assert_eq!(network.stats().frames_duplicated, 100);

    network.set_faults("a", "b", LinkFaults::new().duplicate(0.25));
    let sent = 4_000;
    for i in 0..sent {
        a.send("b", numbered(i));
    }
    let received = drain_frames(&mut b).await;
    let duplicated = network.link_stats("a", "b").frames_duplicated - 100;
    let rate = duplicated as f64 / f64::from(sent);
    assert!((rate - 0.25).abs() < 0.03, "duplication rate {rate}");
    assert_eq!(received.len() as u64, u64::from(sent) + duplicated);
    assert_balanced(&network.stats());
}

#[tokio::test(start_paused = true)]
async fn reordering_lets_later_frames_overtake() {
    let (network, a, mut b) = pair(5).await;
    let latency = Duration::from_millis(5);

    // Without reordering (and without jitter) a link is FIFO.
    network.set_faults("a", "b", LinkFaults::new().latency(latency));
    for i in 0..200 {
        a.send("b", numbered(i));
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let in_order: Vec<u32> = drain_frames(&mut b)
        .await
        .iter()
        .map(|f| number(f))
        .collect();
    assert_eq!(in_order, (0..200).collect::<Vec<_>>());

    network.set_faults("a", "b", LinkFaults::new().latency(latency).reorder(0.3));
    for i in 0..200 {
        a.send("b", numbered(i));
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let received: Vec<u32> = drain_frames(&mut b)
        .await
        .iter()
        .map(|f| number(f))
        .collect();
    let overtaken = received.windows(2).filter(|w| w[0] > w[1]).count();
    assert!(overtaken >= 10, "only {overtaken} frames were overtaken");
    let mut all = received.clone();
    all.sort_unstable();
    assert_eq!(
        all,
        (0..200).collect::<Vec<_>>(),
        "reordering loses nothing"
    );
}

#[tokio::test(start_paused = true)]
async fn two_way_partition_drops_and_reports_down_then_up() {
    let (network, mut a, mut b) = pair(6).await;

    network.partition("a", "b");
    assert_eq!(next(&mut a).await, down("b"));
    assert_eq!(next(&mut b).await, down("a"));
    a.send("b", b"lost".to_vec());
    b.send("a", b"lost too".to_vec());
    assert_quiet(&mut a).await;
    assert_quiet(&mut b).await;
    let stats = network.stats();
    assert_eq!(stats.frames_dropped_partition, 2);
    assert_eq!(network.link_stats("a", "b").frames_dropped_partition, 1);
    assert_eq!(network.link_stats("b", "a").frames_dropped_partition, 1);

    network.heal("a", "b");
    assert_eq!(next(&mut a).await, up("b"));
    assert_eq!(next(&mut b).await, up("a"));
    a.send("b", b"back".to_vec());
    b.send("a", b"back too".to_vec());
    assert_eq!(next(&mut b).await, frame("a", b"back"));
    assert_eq!(next(&mut a).await, frame("b", b"back too"));
    assert_balanced(&network.stats());
}

#[tokio::test(start_paused = true)]
async fn one_way_partition_cuts_one_direction_only() {
    let (network, mut a, mut b) = pair(7).await;

    network.partition_one_way("a", "b");
    assert_eq!(next(&mut b).await, down("a"));
    a.send("b", b"dropped".to_vec());
    b.send("a", b"still flows".to_vec());
    assert_eq!(next(&mut a).await, frame("b", b"still flows"));
    assert_quiet(&mut a).await; // `a` can still hear `b`: no Down
    assert_quiet(&mut b).await;
    assert_eq!(network.link_stats("a", "b").frames_dropped_partition, 1);
    assert_eq!(network.link_stats("b", "a").frames_delivered, 1);

    network.heal("a", "b");
    assert_eq!(next(&mut b).await, up("a"));
    assert_quiet(&mut a).await; // nothing changed for `a`
    a.send("b", b"restored".to_vec());
    assert_eq!(next(&mut b).await, frame("a", b"restored"));
}

#[tokio::test(start_paused = true)]
async fn isolate_cuts_a_region_off_until_heal_all() {
    let network = ChannelNetwork::new(8);
    let mut endpoints: Vec<ChannelEndpoint> = ["a", "b", "c"]
        .iter()
        .map(|name| network.endpoint(name))
        .collect();
    for endpoint in &mut endpoints {
        drain_frames(endpoint).await; // the registration Ups
    }
    let [a, b, c] = &mut endpoints[..] else {
        unreachable!()
    };

    network.isolate("c");
    assert_eq!(next(a).await, down("c"));
    assert_eq!(next(b).await, down("c"));
    assert_eq!(next(c).await, down("a"));
    assert_eq!(next(c).await, down("b"));
    c.send("a", vec![1]);
    a.send("c", vec![2]);
    a.send("b", vec![3]);
    assert_eq!(next(b).await, frame("a", &[3]), "a and b still talk");
    assert_quiet(c).await;
    assert_eq!(network.stats().frames_dropped_partition, 2);

    network.heal_all();
    assert_eq!(next(a).await, up("c"));
    assert_eq!(next(b).await, up("c"));
    assert_eq!(next(c).await, up("a"));
    assert_eq!(next(c).await, up("b"));
    c.send("a", vec![4]);
    assert_eq!(next(a).await, frame("c", &[4]));
}

#[tokio::test(start_paused = true)]
async fn partition_is_checked_at_send_time() {
    let (network, a, mut b) = pair(9).await;
    network.set_faults(
        "a",
        "b",
        LinkFaults::new().latency(Duration::from_millis(20)),
    );
    a.send("b", b"in flight".to_vec());
    network.partition_one_way("a", "b");
    a.send("b", b"after the cut".to_vec());
    // The Down is due now; the frame already on the wire lands after it.
    assert_eq!(next(&mut b).await, down("a"));
    assert_eq!(next(&mut b).await, frame("a", b"in flight"));
    assert_quiet(&mut b).await;
    assert_eq!(network.stats().frames_dropped_partition, 1);
}

/// Three regions exchange frames over faulty links on a fixed schedule;
/// returns what each received, in order, with arrival times.
async fn replay(seed: u64) -> Vec<Vec<(Duration, TransportEvent)>> {
    let network = ChannelNetwork::new(seed);
    network.set_faults_all(
        LinkFaults::new()
            .latency(Duration::from_millis(3))
            .jitter(Duration::from_millis(4))
            .loss(0.1)
            .duplicate(0.1)
            .reorder(0.2),
    );
    let names = ["a", "b", "c"];
    let mut endpoints: Vec<ChannelEndpoint> = names.iter().map(|n| network.endpoint(n)).collect();
    let start = Instant::now();
    for i in 0..300_u32 {
        let from = (i % 3) as usize;
        let to = (from + 1 + (i / 3 % 2) as usize) % 3;
        endpoints[from].send(names[to], numbered(i));
        if i % 7 == 0 {
            tokio::time::sleep(Duration::from_micros(700)).await;
        }
    }
    let mut received = Vec::new();
    for endpoint in &mut endpoints {
        received.push(drain_timed(endpoint, start).await);
    }
    assert_balanced(&network.stats());
    received
}

#[tokio::test(start_paused = true)]
async fn same_seed_replays_the_same_deliveries() {
    let first = replay(42).await;
    let again = replay(42).await;
    assert_eq!(first, again);
    let frames: usize = first.iter().map(Vec::len).sum();
    assert!(frames > 250, "{frames} events");

    let other = replay(43).await;
    assert_ne!(first, other, "another seed draws other faults");
}

#[tokio::test(start_paused = true)]
async fn byte_counters_match_frame_lengths() {
    let (network, a, mut b) = pair(10).await;
    let mut a = a;
    network.set_faults("b", "a", LinkFaults::new().duplicate(1.0));

    let a_to_b: Vec<Vec<u8>> = (0..100_usize).map(|len| vec![7; len]).collect();
    let b_to_a: Vec<Vec<u8>> = (1..=30_usize).map(|len| vec![9; len * 3]).collect();
    for frame in &a_to_b {
        a.send("b", frame.clone());
    }
    for frame in &b_to_a {
        b.send("a", frame.clone());
    }
    let bytes = |frames: &[Vec<u8>]| frames.iter().map(|f| f.len() as u64).sum::<u64>();
    let (ab_bytes, ba_bytes) = (bytes(&a_to_b), bytes(&b_to_a));

    let ab = network.link_stats("a", "b");
    assert_eq!(
        (ab.frames_sent, ab.bytes_sent, ab.bytes_delivered),
        (100, ab_bytes, 0)
    );
    assert_eq!(ab.frames_in_flight, 100, "sent, not yet received");

    assert_eq!(drain_frames(&mut b).await, a_to_b);
    assert_eq!(drain_frames(&mut a).await.len(), 60);

    let ab = network.link_stats("a", "b");
    assert_eq!((ab.frames_delivered, ab.bytes_delivered), (100, ab_bytes));
    let ba = network.link_stats("b", "a");
    assert_eq!((ba.frames_sent, ba.bytes_sent), (30, ba_bytes));
    assert_eq!(
        (ba.frames_delivered, ba.bytes_delivered),
        (60, 2 * ba_bytes)
    );
    let total = network.stats();
    assert_eq!(total.bytes_sent, ab_bytes + ba_bytes);
    assert_eq!(total.bytes_delivered, ab_bytes + 2 * ba_bytes);
    assert_eq!(total.frames_in_flight, 0);
    assert_balanced(&total);
}

#[tokio::test(start_paused = true)]
async fn overflow_past_the_bound_is_dropped_and_counted() {
    let (network, a, mut b) = pair(11).await;
    let bound = ChannelNetwork::FRAMES_IN_FLIGHT_MAX;
    for i in 0..bound + 10 {
        a.send("b", vec![(i % 256) as u8]);
    }
    let stats = network.stats();
    assert_eq!(stats.frames_dropped_overflow, 10);
    assert_eq!(stats.frames_in_flight, bound as u64);
    assert_balanced(&stats);

    // Receiving makes room again.
    assert_eq!(next(&mut b).await, frame("a", &[0]));
    a.send("b", vec![1]);
    assert_eq!(network.stats().frames_dropped_overflow, 10);
    assert_eq!(drain_frames(&mut b).await.len(), bound);
    assert_balanced(&network.stats());
}

#[tokio::test(start_paused = true)]
async fn unknown_peer_is_a_dropped_frame() {
    let (network, a, mut b) = pair(12).await;
    a.send("nowhere", vec![1, 2, 3]);
    a.send("a", vec![4]); // not its own peer
    assert_quiet(&mut b).await;
    let stats = network.stats();
    assert_eq!(stats.frames_dropped_unknown, 2);
    assert_eq!(stats.bytes_sent, 4);
    assert_balanced(&stats);
}

#[tokio::test(start_paused = true)]
async fn dropped_endpoint_goes_down_and_a_restart_comes_up() {
    let (network, mut a, b) = pair(13).await;
    network.set_faults(
        "a",
        "b",
        LinkFaults::new().latency(Duration::from_millis(5)),
    );
    a.send("b", vec![1]);
    drop(b);
    assert_eq!(next(&mut a).await, down("b"));
    a.send("b", vec![2]);
    assert_eq!(
        network.stats().frames_dropped_closed,
        2,
        "queued and late frames"
    );

    let mut b = network.endpoint("b");
    assert_eq!(next(&mut a).await, up("b"));
    assert_eq!(next(&mut b).await, up("a"));
    a.send("b", vec![3]);
    assert_eq!(next(&mut b).await, frame("a", &[3]));
    assert_balanced(&network.stats());
}

#[tokio::test(start_paused = true)]
async fn recv_ends_on_shutdown() {
    let (network, a, mut b) = pair(14).await;
    a.send("b", vec![1]);
    network.shutdown();
    assert_eq!(b.recv().await, None);
    a.send("b", vec![2]);
    assert_eq!(b.recv().await, None);
    let stats = network.stats();
    assert_eq!(stats.frames_dropped_closed, 2);
    assert_balanced(&stats);
}

#[tokio::test(start_paused = true)]
async fn recv_ends_when_nobody_else_is_left() {
    // (Since session 3 a dropped endpoint's frames in flight are dropped
    // too: no frame of a dead process may follow its successor's Up.)
    let (network, a, mut b) = pair(15).await;
    network.set_faults(
        "a",
        "b",
        LinkFaults::new().latency(Duration::from_millis(5)),
    );
    a.send("b", vec![1]);
    drop(a);
    drop(network);
    // What a had in flight went with its connections; then the end.
    assert_eq!(next(&mut b).await, down("a"));
    assert_eq!(b.recv().await, None);
}

#[tokio::test(start_paused = true)]
async fn waiting_recv_wakes_when_the_last_other_handle_drops() {
    let (network, a, mut b) = pair(16).await;
    let waiter = tokio::spawn(async move {
        let mut events = Vec::new();
        while let Some(event) = b.recv().await {
            events.push(event);
        }
        events
    });
    tokio::task::yield_now().await;
    drop(a);
    drop(network);
    let events = timeout(QUIET, waiter)
        .await
        .expect("recv ends")
        .expect("no panic");
    assert_eq!(events, vec![down("a")]);
}
