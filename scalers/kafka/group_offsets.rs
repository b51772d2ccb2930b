//! Reading a consumer group's committed offsets through librdkafka's admin API.
//!
//! This module calls C, and says why: rust-rdkafka (0.39) exposes no safe binding for
//! `rd_kafka_ListConsumerGroupOffsets`. Its safe alternative, `committed_offsets`, asks
//! for the offsets of the group named by the client's own `group.id`, so reading the
//! offsets of N groups would take N clients (each with its threads, buffers and
//! connections to every broker). The admin call reads any group's offsets through the
//! one client a cluster already has. Everything unsafe stays in this file: every
//! pointer comes from librdkafka, is checked for NULL before use, is only read while the
//! object that owns it is alive, and every object created here is destroyed by a guard
//! on every path.
#![allow(unsafe_code)]

use std::ffi::{CStr, CString, c_char};
use std::ptr;
use std::time::Duration;

use rdkafka::TopicPartitionList;
use rdkafka::bindings as rd;
use rdkafka::types::RDKafkaErrorCode;

/// One partition of a group's offsets, as the coordinator answered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GroupPartition {
    /// Topic name.
    pub topic: String,
    /// Partition id.
    pub partition: i32,
    /// The committed offset; negative when the group has none for the partition.
    pub offset: i64,
    /// A per-partition error, if the coordinator reported one.
    pub error: Option<RDKafkaErrorCode>,
}

/// Why the offsets could not be read.
#[derive(Clone, Debug)]
pub struct OffsetsError {
    /// librdkafka's error code.
    pub code: RDKafkaErrorCode,
    /// librdkafka's message.
    pub message: String,
}

impl OffsetsError {
    fn new(code: RDKafkaErrorCode, message: impl Into<String>) -> Self {
        OffsetsError {
            code,
            message: message.into(),
        }
    }
}

/// Destroys a librdkafka queue when dropped.
struct Queue(*mut rd::rd_kafka_queue_t);
impl Drop for Queue {
    fn drop(&mut self) {
        // SAFETY: created by rd_kafka_queue_new, destroyed once (pending replies hold
        // their own reference to the queue).
        unsafe { rd::rd_kafka_queue_destroy(self.0) }
    }
}

/// Destroys a librdkafka event when dropped.
struct Event(*mut rd::rd_kafka_event_t);
impl Drop for Event {
    fn drop(&mut self) {
        // SAFETY: returned (non-NULL) by rd_kafka_queue_poll and owned by us.
        unsafe { rd::rd_kafka_event_destroy(self.0) }
    }
}

/// Destroys admin options when dropped.
struct Options(*mut rd::rd_kafka_AdminOptions_t);
impl Drop for Options {
    fn drop(&mut self) {
        // SAFETY: created by rd_kafka_AdminOptions_new, destroyed once.
        unsafe { rd::rd_kafka_AdminOptions_destroy(self.0) }
    }
}

/// Destroys a ListConsumerGroupOffsets request when dropped.
struct Request(*mut rd::rd_kafka_ListConsumerGroupOffsets_t);
impl Drop for Request {
    fn drop(&mut self) {
        // SAFETY: created by rd_kafka_ListConsumerGroupOffsets_new, destroyed once; the
        // admin call copies what it needs.
        unsafe { rd::rd_kafka_ListConsumerGroupOffsets_destroy(self.0) }
    }
}

fn c_str(p: *const c_char) -> String {
    if p.is_null() {
        return String::new();
    }
    // SAFETY: librdkafka returns NUL-terminated strings that live as long as the object
    // they were read from, which outlives this copy.
    unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned()
}

/// Reads the committed offsets of `group` through the client behind `client`: of the
/// partitions in `partitions`, or of every partition the group has offsets for (None).
///
/// Blocks for at most about `timeout` (the request timeout) plus a second.
pub fn list_group_offsets<C: rdkafka::ClientContext>(
    client: &rdkafka::client::Client<C>,
    group: &str,
    partitions: Option<&TopicPartitionList>,
    timeout: Duration,
) -> Result<Vec<GroupPartition>, OffsetsError> {
    let group_c = CString::new(group).map_err(|_| {
        OffsetsError::new(
            RDKafkaErrorCode::InvalidArgument,
            "the consumer group name contains a NUL byte",
        )
    })?;
    let rk = client.native_ptr();
    let timeout_ms = i32::try_from(timeout.as_millis()).unwrap_or(i32::MAX);

    // SAFETY: `rk` is the live handle of `client`, borrowed for the whole call.
    let queue = Queue(unsafe { rd::rd_kafka_queue_new(rk) });
    if queue.0.is_null() {
        return Err(OffsetsError::new(
            RDKafkaErrorCode::Fail,
            "librdkafka could not create a reply queue",
        ));
    }
    // SAFETY: as above; the options are destroyed by their guard.
    let options = Options(unsafe {
        rd::rd_kafka_AdminOptions_new(
            rk,
            rd::rd_kafka_admin_op_t::RD_KAFKA_ADMIN_OP_LISTCONSUMERGROUPOFFSETS,
        )
    });
    if options.0.is_null() {
        return Err(OffsetsError::new(
            RDKafkaErrorCode::Fail,
            "librdkafka could not create admin options",
        ));
    }
    let mut errstr = [0 as c_char; 256];
    // SAFETY: valid options, a writable buffer of the given length.
    let rc = unsafe {
        rd::rd_kafka_AdminOptions_set_request_timeout(
            options.0,
            timeout_ms,
            errstr.as_mut_ptr(),
            errstr.len(),
        )
    };
    if rc != rd::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR {
        return Err(OffsetsError::new(rc.into(), c_str(errstr.as_ptr())));
    }
    let list_ptr = partitions.map_or(ptr::null(), |p| p.ptr().cast_const());
    // SAFETY: a valid C string and a valid (or NULL) partition list, both copied.
    let request =
        Request(unsafe { rd::rd_kafka_ListConsumerGroupOffsets_new(group_c.as_ptr(), list_ptr) });
    if request.0.is_null() {
        return Err(OffsetsError::new(
            RDKafkaErrorCode::Fail,
            "librdkafka could not create the offsets request",
        ));
    }
    let mut requests = [request.0];
    // SAFETY: a live handle, an array of one valid request, valid options and queue;
    // librdkafka copies the request and options before returning.
    unsafe {
        rd::rd_kafka_ListConsumerGroupOffsets(rk, requests.as_mut_ptr(), 1, options.0, queue.0);
    }
    // The request times out on its own after `timeout`; the extra second lets that
    // answer (rather than our giving up) decide.
    let wait = timeout_ms.saturating_add(1000);
    // SAFETY: a valid queue.
    let event = unsafe { rd::rd_kafka_queue_poll(queue.0, wait) };
    if event.is_null() {
        return Err(OffsetsError::new(
            RDKafkaErrorCode::OperationTimedOut,
            format!("no answer within {wait} ms"),
        ));
    }
    let event = Event(event);
    // SAFETY: a valid event, read while it is alive.
    let err = unsafe { rd::rd_kafka_event_error(event.0) };
    if err != rd::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR {
        // SAFETY: as above.
        let msg = c_str(unsafe { rd::rd_kafka_event_error_string(event.0) });
        return Err(OffsetsError::new(err.into(), msg));
    }
    // SAFETY: as above; NULL when the event is of another type.
    let result = unsafe { rd::rd_kafka_event_ListConsumerGroupOffsets_result(event.0) };
    if result.is_null() {
        return Err(OffsetsError::new(
            RDKafkaErrorCode::Fail,
            "unexpected admin result type",
        ));
    }
    let mut count = 0usize;
    // SAFETY: a valid result; the array lives as long as the event.
    let groups = unsafe { rd::rd_kafka_ListConsumerGroupOffsets_result_groups(result, &mut count) };
    let mut out = Vec::new();
    for i in 0..count {
        // SAFETY: `groups` has `count` elements (checked non-NULL below).
        let g = unsafe { *groups.add(i) };
        if g.is_null() {
            continue;
        }
        // SAFETY: a valid group result.
        let gerr = unsafe { rd::rd_kafka_group_result_error(g) };
        if !gerr.is_null() {
            // SAFETY: a valid error object owned by the group result.
            let (code, msg) = unsafe {
                (
                    rd::rd_kafka_error_code(gerr),
                    c_str(rd::rd_kafka_error_string(gerr)),
                )
            };
            return Err(OffsetsError::new(code.into(), msg));
        }
        // SAFETY: a valid group result; the list lives as long as the event.
        let list = unsafe { rd::rd_kafka_group_result_partitions(g) };
        if list.is_null() {
            continue;
        }
        // SAFETY: a valid list; `elems` has `cnt` elements.
        let (elems, cnt) = unsafe { ((*list).elems, (*list).cnt) };
        let cnt = usize::try_from(cnt).unwrap_or(0);
        for j in 0..cnt {
            // SAFETY: j < cnt.
            let e = unsafe { &*elems.add(j) };
            let error = (e.err != rd::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR)
                .then(|| e.err.into());
            out.push(GroupPartition {
                topic: c_str(e.topic),
                partition: e.partition,
                offset: e.offset,
                error,
            });
        }
    }
    Ok(out)
}

/// Events (log lines, errors) waiting on the client's main queue. The client's context
/// only sees them when they are served, and a queue nobody serves grows forever.
pub fn main_queue_len<C: rdkafka::ClientContext>(client: &rdkafka::client::Client<C>) -> usize {
    // SAFETY: the live handle of `client`; the queue reference taken here is released by
    // the guard.
    let queue = Queue(unsafe { rd::rd_kafka_queue_get_main(client.native_ptr()) });
    if queue.0.is_null() {
        return 0;
    }
    // SAFETY: a valid queue.
    unsafe { rd::rd_kafka_queue_length(queue.0) }
}
