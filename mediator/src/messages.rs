//! The mediator's side of the DIDComm v2 messages it speaks, with no I/O: what it
//! discloses, its problem codes, and short names for the message types.
//!
//! The protocols themselves (type URIs, the ACK helpers, Pickup 3.0 attachments and the
//! raw live push codec) are defined once in `mpc_did_didcomm::protocols` and shared with
//! the party side (`mpc-did-agent`'s mediator client); they are re-exported here.

use mpc_did_didcomm::protocols::{
    coordinate_mediation, coordinate_mediation_v3, pickup, pickup_v4,
};
use serde_json::json;

/// Protocol message type URIs (PIURI + message name), under the names the mediator code
/// uses; each is defined once, in `mpc_did_didcomm::protocols`.
pub mod types {
    pub use mpc_did_didcomm::protocols::ack::EMPTY_TYPE as EMPTY;
    pub use mpc_did_didcomm::protocols::coordinate_mediation::{
        MEDIATE_DENY_TYPE as MEDIATE_DENY, MEDIATE_GRANT_TYPE as MEDIATE_GRANT,
        MEDIATE_REQUEST_TYPE as MEDIATE_REQUEST, RECIPIENT_QUERY_TYPE as RECIPIENT_QUERY,
        RECIPIENT_TYPE as RECIPIENT, RECIPIENT_UPDATE_RESPONSE_TYPE as RECIPIENT_UPDATE_RESPONSE,
        RECIPIENT_UPDATE_TYPE as RECIPIENT_UPDATE,
    };
    pub use mpc_did_didcomm::protocols::discover_features::{
        DISCLOSE_TYPE as DISCLOSE, QUERIES_TYPE as QUERIES,
    };
    pub use mpc_did_didcomm::protocols::oob::INVITATION_TYPE as OOB_INVITATION;
    pub use mpc_did_didcomm::protocols::pickup::{
        DELIVERY_REQUEST_TYPE as DELIVERY_REQUEST, DELIVERY_TYPE as DELIVERY,
        LIVE_DELIVERY_CHANGE_TYPE as LIVE_DELIVERY_CHANGE,
        MESSAGES_RECEIVED_TYPE as MESSAGES_RECEIVED, STATUS_REQUEST_TYPE as STATUS_REQUEST,
        STATUS_TYPE as STATUS,
    };
    pub use mpc_did_didcomm::protocols::report_problem::PROBLEM_REPORT_TYPE as PROBLEM_REPORT;
    pub use mpc_did_didcomm::protocols::routing::FORWARD_TYPE as FORWARD;
    pub use mpc_did_didcomm::protocols::trust_ping::{
        PING_RESPONSE_TYPE as PING_RESPONSE, PING_TYPE as PING,
    };
}

pub use mpc_did_didcomm::message::{message, reply};
pub use mpc_did_didcomm::protocols::ack::{ack_of, acked_ids, wants_ack};
pub use mpc_did_didcomm::protocols::pickup::{
    attachment_bytes, decode_raw_push, encode_raw_push, message_attachment, RawPushError,
    RAW_LIVE_FIELD, RAW_PUSH_MAX_ID,
};

/// Protocols disclosed by Discover Features 2.0, with the role the mediator plays: both
/// versions of Coordinate Mediation (2.0, 3.0) and of Message Pickup (3.0, 4.0).
pub const PROTOCOLS: &[(&str, &str)] = &[
    (coordinate_mediation::PIURI, "mediator"),
    (coordinate_mediation_v3::PIURI, "mediator"),
    ("https://didcomm.org/routing/2.0", "mediator"),
    (pickup::PIURI, "mediator"),
    (pickup_v4::PIURI, "mediator"),
    ("https://didcomm.org/trust-ping/2.0", "receiver"),
    ("https://didcomm.org/discover-features/2.0", "responder"),
    ("https://didcomm.org/report-problem/2.0", "notifier"),
];

pub use mpc_did_didcomm::{Attachment, AttachmentData, Message};

/// Report Problem 2.0 `problem-report`; `pthid` is the thread of the offending message.
#[must_use]
pub fn problem_report(code: &str, comment: &str, offending: Option<&Message>) -> Message {
    let mut m = message(
        types::PROBLEM_REPORT,
        json!({ "code": code, "comment": comment }),
    );
    m.pthid = offending.map(|o| o.thread_id().to_owned());
    m
}

/// Problem codes (Report Problem 2.0 `code`), spec/mediator.md §4.
pub mod codes {
    /// Not a DIDComm message the mediator can unpack or parse.
    pub const MALFORMED: &str = "e.p.msg.malformed";
    /// Larger than `max_message_bytes`.
    pub const TOO_BIG: &str = "e.p.msg.too-big";
    /// A message type the mediator does not speak.
    pub const UNSUPPORTED: &str = "e.p.msg.unsupported";
    /// Needs authcrypt from the DID named in `from`, and (for pickup and key changes) a grant.
    pub const UNAUTHORIZED: &str = "e.p.req.not-authorized";
    /// The request id was seen before, or the message expired / is too old.
    pub const REPLAY: &str = "e.p.msg.replay";
    /// `forward.next` names no registered key.
    pub const UNKNOWN_RECIPIENT: &str = "e.p.xfer.unknown-recipient";
    /// The recipient's queue is full.
    pub const QUEUE_FULL: &str = "e.p.me.res.storage.queue-full";
    /// Storage failed.
    pub const STORAGE: &str = "e.p.me.res.storage";
    /// Message rate per connection exceeded.
    pub const RATE_LIMITED: &str = "e.p.req.rate-limited";
    /// Live mode requested over a transport that cannot push (Pickup 3.0).
    pub const LIVE_MODE_NOT_SUPPORTED: &str = "e.m.live-mode-not-supported";
    /// A request body field is missing or of the wrong type.
    pub const BAD_REQUEST: &str = "e.p.msg.bad-request";
    /// The sending address already has `max_queued_per_source` messages waiting for this
    /// recipient (spec/mediator.md §6.1).
    pub const SOURCE_QUOTA: &str = "e.p.req.source-quota";
    /// The request body did not arrive in time (`body_timeout_secs`).
    pub const TIMEOUT: &str = "e.p.req.timeout";
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn replies_thread() {
        let req = message(types::PING, json!({}));
        let resp = reply(types::PING_RESPONSE, json!({}), &req);
        assert_eq!(resp.thid.as_deref(), Some(req.id.as_str()));
        let pr = problem_report(codes::REPLAY, "seen", Some(&req));
        assert_eq!(pr.pthid.as_deref(), Some(req.id.as_str()));
        assert_eq!(pr.body["code"], codes::REPLAY);
    }
}
