//! How many events wait on an rdkafka client's queue.
//!
//! This module calls C, and says why: rust-rdkafka (0.39) gives no way to ask how many
//! events (log lines, errors) wait on a client's queue. Those events reach the client's
//! context only when the queue is served, and a queue nobody serves grows for as long as
//! the client lives; serving it blindly costs a call per event slot whether or not one
//! waits. `rd_kafka_queue_length` answers exactly. Its unsafe calls stay in this file:
//! the client handle is borrowed for the call, the queue reference taken is checked for
//! NULL and released by a guard.
#![allow(unsafe_code)]

use rdkafka::bindings as rd;

/// Releases a reference to a librdkafka queue when dropped.
struct Queue(*mut rd::rd_kafka_queue_t);

impl Drop for Queue {
    fn drop(&mut self) {
        // SAFETY: a non-NULL reference from rd_kafka_queue_get_main, released once.
        unsafe { rd::rd_kafka_queue_destroy(self.0) }
    }
}

/// Events waiting on the client's main queue (or the queue it is forwarded to, for a
/// consumer with a group).
pub fn main_queue_len<C: rdkafka::ClientContext>(client: &rdkafka::client::Client<C>) -> usize {
    // SAFETY: the live handle of `client`, borrowed for the whole call.
    let queue = unsafe { rd::rd_kafka_queue_get_main(client.native_ptr()) };
    if queue.is_null() {
        return 0;
    }
    let queue = Queue(queue);
    // SAFETY: a valid queue reference, alive until the guard drops.
    unsafe { rd::rd_kafka_queue_length(queue.0) }
}
