//! Network sinks send from a thread of their own, so a slow or absent server never holds up the
//! sensor. Each interval is one batch in a bounded queue; a failed batch stays at the front and
//! is retried with backoff; when the queue is full the oldest batches are dropped and their
//! records counted (the machine record's `meter.dropped_records`). The failure is said once, and
//! the recovery once, not every interval.

use std::{
    collections::VecDeque,
    sync::{
        Arc, Condvar, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use crate::sink::SinkError;

/// Most bytes held while a server is unreachable (then the oldest intervals go, counted): about
/// an hour of a busy 1,000-process machine at 1 s. `--sink-buffer` changes it.
pub const DEFAULT_MAX_QUEUED_BYTES: u64 = 64 << 20;
/// How long the last intervals may take to leave at the end of a run.
const FINAL_FLUSH: Duration = Duration::from_secs(5);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
const FIRST_BACKOFF: Duration = Duration::from_millis(500);
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// Why a batch did not arrive.
#[derive(Debug)]
pub enum Failure {
    /// Worth sending again: no connection, a timeout, a server error.
    Retry(String),
    /// The server read the batch and refused it: sending it again cannot help.
    Refused(String),
}

/// Carries one batch to a server. Built on the sending thread (a tokio runtime may live there).
pub trait Transport {
    /// Sends `batch` (whole lines) within `timeout`.
    fn send(&mut self, batch: &str, timeout: Duration) -> Result<(), Failure>;
}

/// One interval waiting to be sent.
struct Batch {
    /// Lets the sender tell whether the batch it just sent is still queued (it may have been
    /// dropped meanwhile).
    id: u64,
    text: Arc<str>,
    records: u64,
}

/// Intervals waiting to be sent, oldest first.
#[derive(Default)]
struct Queue {
    batches: VecDeque<Batch>,
    next_id: u64,
    bytes: u64,
    /// Intervals dropped because the queue was full.
    dropped: u64,
    /// The batch the sender is sending: never dropped (it may arrive, and then it was not lost).
    in_flight: Option<u64>,
    closing: bool,
}

impl Queue {
    /// Adds a batch; beyond `max_bytes` the oldest go (never the one just added). Returns the
    /// records dropped.
    fn push(&mut self, text: String, records: u64, max_bytes: u64) -> u64 {
        self.bytes += text.len() as u64;
        self.batches.push_back(Batch {
            id: self.next_id,
            text: text.into(),
            records,
        });
        self.next_id += 1;
        let mut dropped_records = 0;
        loop {
            let front_in_flight =
                self.in_flight.is_some() && self.batches.front().map(|b| b.id) == self.in_flight;
            let oldest = usize::from(front_in_flight);
            if self.bytes <= max_bytes || oldest + 1 >= self.batches.len() {
                break;
            }
            if let Some(old) = self.batches.remove(oldest) {
                self.bytes -= old.text.len() as u64;
                self.dropped += 1;
                dropped_records += old.records;
            }
        }
        dropped_records
    }

    /// The oldest batch, now in flight.
    fn take_front(&mut self) -> Option<(u64, Arc<str>)> {
        let front = self.batches.front().map(|b| (b.id, Arc::clone(&b.text)));
        self.in_flight = front.as_ref().map(|(id, _)| *id);
        front
    }

    /// The batch in flight reached the server (`sent`: forget it), or must be sent again.
    fn landed(&mut self, sent: bool) {
        if let Some(id) = self.in_flight.take()
            && sent
            && self.batches.front().is_some_and(|b| b.id == id)
            && let Some(sent) = self.batches.pop_front()
        {
            self.bytes -= sent.text.len() as u64;
        }
    }
}

type Shared = Arc<(Mutex<Queue>, Condvar)>;

/// The caller's end: queue batches, and at drop let the last ones leave.
pub struct Relay {
    name: String,
    shared: Shared,
    sender: Option<JoinHandle<u64>>,
    max_bytes: u64,
    /// Records dropped since the start, shared with whoever reports them.
    dropped_records: Arc<AtomicU64>,
}

impl Relay {
    /// Starts the sending thread; `connect` builds the transport there (an `Err` is said once
    /// and nothing is sent).
    pub fn start<T: Transport>(
        name: String,
        max_bytes: u64,
        connect: impl FnOnce() -> Result<T, String> + Send + 'static,
    ) -> Self {
        let shared: Shared = Arc::new((Mutex::new(Queue::default()), Condvar::new()));
        let sender = {
            let shared = Arc::clone(&shared);
            let name = name.clone();
            std::thread::Builder::new()
                .name("powerapi-sink".into())
                .spawn(move || match connect() {
                    Ok(mut transport) => send_loop(&mut transport, &name, &shared),
                    Err(e) => {
                        eprintln!(
                            "powerapi: {name}: cannot start its sender ({e}); nothing will be written there"
                        );
                        0
                    }
                })
                .ok()
        };
        Self {
            name,
            shared,
            sender,
            max_bytes,
            dropped_records: Arc::new(AtomicU64::new(0)),
        }
    }

    /// Queues one interval of `records` records as `text`.
    pub fn push(&self, text: String, records: u64) -> Result<(), SinkError> {
        if text.is_empty() {
            return Ok(());
        }
        let (lock, wake) = &*self.shared;
        let mut queue = lock.lock().unwrap_or_else(|e| e.into_inner());
        let dropped = queue.push(text, records, self.max_bytes);
        self.dropped_records.fetch_add(dropped, Ordering::Relaxed);
        wake.notify_one();
        Ok(())
    }

    /// Records dropped so far because the server was away longer than the buffer holds.
    pub fn dropped_records(&self) -> u64 {
        self.dropped_records.load(Ordering::Relaxed)
    }
}

impl Drop for Relay {
    /// Lets the last intervals leave (for at most 5 s) and says what could not.
    fn drop(&mut self) {
        {
            let (lock, wake) = &*self.shared;
            let mut queue = lock.lock().unwrap_or_else(|e| e.into_inner());
            queue.closing = true;
            wake.notify_one();
        }
        let unsent = self.sender.take().and_then(|h| h.join().ok()).unwrap_or(0);
        let dropped = self
            .shared
            .0
            .lock()
            .map(|q| q.dropped)
            .unwrap_or_else(|e| e.into_inner().dropped);
        if unsent + dropped > 0 {
            eprintln!(
                "powerapi: {}: {} interval(s) could not be written ({dropped} dropped while the server was unreachable, {unsent} unsent at exit)",
                self.name,
                unsent + dropped
            );
        }
    }
}

/// The sending thread: returns how many intervals were still unsent when it had to stop.
fn send_loop(transport: &mut impl Transport, name: &str, shared: &(Mutex<Queue>, Condvar)) -> u64 {
    let (lock, wake) = shared;
    let mut backoff = FIRST_BACKOFF;
    let mut failing = false;
    let mut final_deadline: Option<Instant> = None;
    loop {
        let (_, batch) = {
            let mut queue = lock.lock().unwrap_or_else(|e| e.into_inner());
            while queue.batches.is_empty() && !queue.closing {
                queue = wake.wait(queue).unwrap_or_else(|e| e.into_inner());
            }
            if queue.closing {
                final_deadline.get_or_insert_with(|| Instant::now() + FINAL_FLUSH);
            }
            match queue.take_front() {
                Some(batch) => batch,
                None => return 0,
            }
        };
        let remaining = final_deadline.map(|d| d.saturating_duration_since(Instant::now()));
        let timeout = remaining.map_or(REQUEST_TIMEOUT, |r| r.min(REQUEST_TIMEOUT));
        let done = match transport.send(&batch, timeout.max(Duration::from_millis(1))) {
            Ok(()) => {
                if std::mem::take(&mut failing) {
                    eprintln!("powerapi: {name}: writing again");
                }
                backoff = FIRST_BACKOFF;
                true
            }
            Err(Failure::Refused(why)) => {
                eprintln!(
                    "powerapi: {name}: the server refused an interval ({why}); it is skipped"
                );
                true
            }
            Err(Failure::Retry(why)) => {
                if !std::mem::replace(&mut failing, true) {
                    eprintln!(
                        "powerapi: {name}: {why}; retrying with backoff, recording and the other outputs go on"
                    );
                }
                false
            }
        };
        let mut queue = lock.lock().unwrap_or_else(|e| e.into_inner());
        queue.landed(done);
        if done {
            continue;
        }
        if final_deadline.is_some_and(|d| Instant::now() >= d) {
            return queue.batches.len() as u64;
        }
        let wait = final_deadline.map_or(backoff, |d| {
            backoff.min(d.saturating_duration_since(Instant::now()))
        });
        let (guard, _) = wake
            .wait_timeout(queue, wait)
            .unwrap_or_else(|e| e.into_inner());
        drop(guard);
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_queue_drops_the_oldest_but_not_the_one_in_flight() {
        let mut q = Queue::default();
        assert_eq!(q.push("aaaa".into(), 2, 10), 0);
        assert_eq!(q.push("bbbb".into(), 3, 10), 0);
        assert_eq!((q.batches.len(), q.bytes, q.dropped), (2, 8, 0));
        let (_, first) = q.take_front().expect("front");
        assert_eq!(&*first, "aaaa");
        // While "aaaa" is on its way, a third interval overflows the queue: "bbbb" goes, with
        // its 3 records ("aaaa" may well arrive, and would then have been counted lost).
        assert_eq!(q.push("cccc".into(), 5, 10), 3);
        assert_eq!((q.batches.len(), q.bytes, q.dropped), (2, 8, 1));
        q.landed(true);
        let next = q.take_front().map(|(_, b)| b.to_string());
        assert_eq!(next.as_deref(), Some("cccc"));
        // A failed send keeps its batch, first in line.
        q.landed(false);
        assert_eq!((q.batches.len(), q.bytes, q.in_flight), (1, 4, None));
        // Nothing in flight: the oldest goes. One batch larger than the bound is kept.
        assert_eq!(q.push("x".repeat(50), 1, 10), 5);
        assert_eq!((q.batches.len(), q.bytes, q.dropped), (1, 50, 2));
        let (_, big) = q.take_front().expect("front");
        assert_eq!(big.len(), 50);
        // In flight and over the bound: the newest is kept beside it, nothing else to drop.
        assert_eq!(q.push("y".into(), 1, 10), 0);
        q.landed(true);
        assert_eq!((q.batches.len(), q.bytes), (1, 1));
    }

    /// Fails the first `fail` sends, then keeps what it is sent.
    struct Flaky {
        fail: u32,
        got: Arc<Mutex<Vec<String>>>,
    }

    impl Transport for Flaky {
        fn send(&mut self, batch: &str, _: Duration) -> Result<(), Failure> {
            if self.fail > 0 {
                self.fail -= 1;
                return Err(Failure::Retry("down".into()));
            }
            self.got
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(batch.to_string());
            Ok(())
        }
    }

    #[test]
    fn a_failed_batch_is_retried_in_order_and_the_last_leave_at_drop() {
        let got = Arc::new(Mutex::new(Vec::new()));
        let relay = {
            let got = Arc::clone(&got);
            Relay::start("test".into(), 1 << 20, move || Ok(Flaky { fail: 1, got }))
        };
        for line in ["a\n", "b\n", "c\n"] {
            relay.push(line.into(), 1).expect("queued");
        }
        assert_eq!(relay.dropped_records(), 0);
        drop(relay);
        assert_eq!(*got.lock().expect("lock"), ["a\n", "b\n", "c\n"]);
    }
}
