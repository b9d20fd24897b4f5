//! Live subscribers to the published readings (`GET /telemetry/stream`).
//!
//! Each subscriber has its own bounded queue, filled by the scheduler as it
//! publishes and drained by the subscriber's HTTP response. When a slow
//! subscriber's queue is full the new reading is dropped for that subscriber
//! only, counted, and a marker takes its place in the queue, so the
//! subscriber learns exactly where and how many readings it missed. The
//! queues of all subscribers together also share one byte budget
//! (`--stream-max-bytes`): when it is spent, readings are dropped and
//! marked the same way, so subscribers that never read cannot make the
//! server hold more than the budget however many there are and whatever
//! `queue` they ask for. The scheduler never waits for a subscriber.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use tokio::sync::Notify;

use super::Reading;

/// Readings queued per subscriber unless it asks for another size.
pub(crate) const DEFAULT_QUEUE: usize = 10_000;
/// The largest queue a subscriber may ask for.
pub(crate) const MAX_QUEUE: usize = 100_000;
/// Bytes all subscribers' queues may hold together, by default.
pub(crate) const DEFAULT_STREAM_MAX_BYTES: usize = 64 << 20;

/// What a queued reading costs the budget.
fn weight(reading: &Reading) -> usize {
    std::mem::size_of::<LiveItem>() + reading.anomaly.as_ref().map_or(0, String::len)
}

/// What a subscriber wants.
#[derive(Debug, Clone, Default)]
pub(crate) struct LiveFilter {
    pub device: Option<String>,
    pub sensor: Option<String>,
    /// Also dropout records (value null, anomaly "dropout"), which are never
    /// published on MQTT.
    pub dropouts: bool,
}

impl LiveFilter {
    pub(crate) fn wants(&self, r: &Reading) -> bool {
        (self.dropouts || !r.is_dropout())
            && self.device.as_deref().is_none_or(|d| d == &*r.device)
            && self.sensor.as_deref().is_none_or(|s| s == &*r.sensor)
    }
}

/// One item a subscriber takes from its queue.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum LiveItem {
    /// A reading and its journal sequence number (the SSE event id).
    Reading(u64, Reading),
    /// This many readings were dropped here because the queue was full.
    Missed(u64),
}

/// A subscriber's queue: at most `capacity` readings, and at most one
/// `Missed` marker after each run of them (a full queue grows the last
/// marker instead of adding one), so it never holds more than
/// 2 × capacity + 1 items.
struct Queue {
    items: VecDeque<LiveItem>,
    /// Readings in `items` (markers do not count against the capacity).
    readings: usize,
    /// Their weight, taken from the hub's budget.
    bytes: usize,
}

struct Subscriber {
    filter: LiveFilter,
    capacity: usize,
    queue: Mutex<Queue>,
    notify: Notify,
    missed: AtomicU64,
}

/// Every live subscriber; shared by the scheduler and the HTTP handlers.
pub(crate) struct Hub {
    // A std lock: held to push one reading or to add or remove a
    // subscriber, never across an await.
    subscribers: RwLock<Vec<Arc<Subscriber>>>,
    /// Lets the scheduler skip the lock when nobody listens.
    count: AtomicUsize,
    /// Readings dropped for slow subscribers, over all of them.
    pub missed: AtomicU64,
    /// Of `missed`, those dropped because the shared byte budget was spent.
    pub missed_by_bytes: AtomicU64,
    /// Bytes queued now, over all subscribers.
    bytes: AtomicUsize,
    max_bytes: usize,
}

impl Default for Hub {
    fn default() -> Self {
        Self::new(DEFAULT_STREAM_MAX_BYTES)
    }
}

impl std::fmt::Debug for Hub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hub")
            .field("subscribers", &self.subscribers())
            .field("missed", &self.missed)
            .finish()
    }
}

impl Hub {
    pub(crate) fn new(max_bytes: usize) -> Self {
        Self {
            subscribers: RwLock::default(),
            count: AtomicUsize::new(0),
            missed: AtomicU64::new(0),
            missed_by_bytes: AtomicU64::new(0),
            bytes: AtomicUsize::new(0),
            max_bytes,
        }
    }

    /// Bytes queued now over all subscribers, and the budget.
    pub(crate) fn bytes(&self) -> (usize, usize) {
        (self.bytes.load(Ordering::Relaxed), self.max_bytes)
    }

    /// Takes `n` bytes from the shared budget, if they are there.
    fn reserve(&self, n: usize) -> bool {
        self.bytes
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |b| {
                (b + n <= self.max_bytes).then_some(b + n)
            })
            .is_ok()
    }

    /// Hands a reading (or a dropout record), with its journal sequence
    /// number, to every subscriber that wants it.
    pub(crate) fn offer(&self, seq: u64, reading: &Reading) {
        if self.count.load(Ordering::Relaxed) == 0 {
            return;
        }
        for sub in self.subscribers.read().unwrap().iter() {
            if !sub.filter.wants(reading) {
                continue;
            }
            let mut q = sub.queue.lock().unwrap();
            let w = weight(reading);
            let room = q.readings < sub.capacity;
            if room && self.reserve(w) {
                q.items.push_back(LiveItem::Reading(seq, reading.clone()));
                q.readings += 1;
                q.bytes += w;
            } else {
                if room {
                    self.missed_by_bytes.fetch_add(1, Ordering::Relaxed);
                }
                match q.items.back_mut() {
                    Some(LiveItem::Missed(n)) => *n += 1,
                    _ => q.items.push_back(LiveItem::Missed(1)),
                }
                sub.missed.fetch_add(1, Ordering::Relaxed);
                self.missed.fetch_add(1, Ordering::Relaxed);
            }
            drop(q);
            sub.notify.notify_one();
        }
    }

    pub(crate) fn subscribers(&self) -> usize {
        self.count.load(Ordering::Relaxed)
    }

    /// Registers a subscriber; it is removed when the handle is dropped.
    pub(crate) fn subscribe(
        self: &Arc<Self>,
        filter: LiveFilter,
        capacity: usize,
    ) -> LiveSubscription {
        let sub = Arc::new(Subscriber {
            filter,
            capacity,
            queue: Mutex::new(Queue {
                items: VecDeque::new(),
                readings: 0,
                bytes: 0,
            }),
            notify: Notify::new(),
            missed: AtomicU64::new(0),
        });
        self.subscribers.write().unwrap().push(sub.clone());
        self.count.fetch_add(1, Ordering::Relaxed);
        LiveSubscription {
            hub: self.clone(),
            sub,
        }
    }
}

/// A live subscription; dropping it unsubscribes.
pub(crate) struct LiveSubscription {
    hub: Arc<Hub>,
    sub: Arc<Subscriber>,
}

impl LiveSubscription {
    /// Waits until something is queued, then takes up to `max` items.
    pub(crate) async fn next_batch(&self, max: usize) -> Vec<LiveItem> {
        loop {
            let notified = self.sub.notify.notified();
            {
                let mut q = self.sub.queue.lock().unwrap();
                if !q.items.is_empty() {
                    let n = max.min(q.items.len());
                    let batch: Vec<LiveItem> = q.items.drain(..n).collect();
                    let (mut readings, mut bytes) = (0, 0);
                    for item in &batch {
                        if let LiveItem::Reading(_, r) = item {
                            readings += 1;
                            bytes += weight(r);
                        }
                    }
                    q.readings -= readings;
                    q.bytes -= bytes;
                    self.hub.bytes.fetch_sub(bytes, Ordering::Relaxed);
                    return batch;
                }
            }
            notified.await;
        }
    }
}

impl Drop for LiveSubscription {
    fn drop(&mut self) {
        {
            let mut subs = self.hub.subscribers.write().unwrap();
            if let Some(i) = subs.iter().position(|s| Arc::ptr_eq(s, &self.sub)) {
                subs.swap_remove(i);
                self.hub.count.fetch_sub(1, Ordering::Relaxed);
            }
        }
        // No longer offered anything: what it still queues goes back to
        // the budget.
        let mut q = self.sub.queue.lock().unwrap();
        self.hub.bytes.fetch_sub(q.bytes, Ordering::Relaxed);
        q.bytes = 0;
        q.items.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::telemetry::reading::test_reading as reading;

    #[tokio::test]
    async fn a_full_queue_marks_the_gap_and_counts_it() {
        let hub = Arc::new(Hub::default());
        let sub = hub.subscribe(LiveFilter::default(), 2);
        for ts in 0..5 {
            hub.offer(ts as u64 + 1, &reading("a", ts));
        }
        let batch = sub.next_batch(10).await;
        assert_eq!(
            batch,
            vec![
                LiveItem::Reading(1, reading("a", 0)),
                LiveItem::Reading(2, reading("a", 1)),
                LiveItem::Missed(3)
            ]
        );
        hub.offer(6, &reading("a", 5));
        assert_eq!(
            sub.next_batch(10).await,
            vec![LiveItem::Reading(6, reading("a", 5))]
        );
        assert_eq!(sub.sub.missed.load(Ordering::Relaxed), 3);
        assert_eq!(hub.missed.load(Ordering::Relaxed), 3);
        drop(sub);
        assert_eq!(hub.subscribers(), 0);
    }

    #[tokio::test]
    async fn subscribers_share_one_byte_budget() {
        let one = weight(&reading("a", 0));
        let hub = Arc::new(Hub::new(3 * one));
        let a = hub.subscribe(LiveFilter::default(), 100);
        let b = hub.subscribe(LiveFilter::default(), 100);
        hub.offer(1, &reading("a", 1));
        hub.offer(2, &reading("a", 2));
        // a and b hold two each would be four: b gets only one.
        assert_eq!(hub.bytes(), (3 * one, 3 * one));
        assert_eq!(hub.missed_by_bytes.load(Ordering::Relaxed), 1);
        assert_eq!(a.next_batch(10).await.len(), 2);
        assert_eq!(
            b.next_batch(10).await,
            vec![LiveItem::Reading(1, reading("a", 1)), LiveItem::Missed(1)]
        );
        assert_eq!(hub.bytes().0, 0);
        hub.offer(3, &reading("a", 3));
        drop(a);
        drop(b);
        assert_eq!(hub.bytes().0, 0);
    }

    #[tokio::test]
    async fn filters_pick_device_and_dropouts() {
        let hub = Arc::new(Hub::default());
        let sub = hub.subscribe(
            LiveFilter {
                device: Some("b".into()),
                ..Default::default()
            },
            10,
        );
        hub.offer(1, &reading("a", 1));
        hub.offer(
            2,
            &Reading::dropout("b".into(), "temperature".into(), 2, "\"celsius\"".into()),
        );
        hub.offer(3, &reading("b", 3));
        assert_eq!(
            sub.next_batch(10).await,
            vec![LiveItem::Reading(3, reading("b", 3))]
        );
    }
}
