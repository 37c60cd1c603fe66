//! Message Pickup 4.0 (<https://didcomm.org/message-pickup/4.0/>): the messages of 3.0
//! under the PIURI `message-pickup/4.0`, with three rules that differ
//! (spec/mediator.md §3.2):
//! - a `delivery-request` with nothing queued is answered with an empty `delivery`, not a
//!   `status`;
//! - in live mode, messages still travel in `delivery` messages that the recipient MUST
//!   acknowledge with `messages-received`, and an unacknowledged message stays queued;
//! - "Messages already in the queue are not affected by Live Mode; they MUST still be
//!   requested with `delivery-request` messages" — unless the recipient asks for them
//!   with [`LIVE_BACKLOG_FIELD`], an mpc-did extension.
//!
//! The attachment codec and the raw live push of [`super::pickup`] apply unchanged: raw
//! live mode stays an opt-in extension of whichever version is in use.

use super::pickup::PickupTypes;

/// Protocol identifier (PIURI).
pub const PIURI: &str = "https://didcomm.org/message-pickup/4.0";
/// Party → mediator: how many messages wait for me?
pub const STATUS_REQUEST_TYPE: &str = "https://didcomm.org/message-pickup/4.0/status-request";
/// Mediator → party: the queue's status (also the answer to a live-mode change).
pub const STATUS_TYPE: &str = "https://didcomm.org/message-pickup/4.0/status";
/// Party → mediator: deliver up to `limit` messages.
pub const DELIVERY_REQUEST_TYPE: &str = "https://didcomm.org/message-pickup/4.0/delivery-request";
/// Mediator → party: queued messages as attachments (possibly none).
pub const DELIVERY_TYPE: &str = "https://didcomm.org/message-pickup/4.0/delivery";
/// Party → mediator: these ids were taken; the mediator may now delete them.
pub const MESSAGES_RECEIVED_TYPE: &str = "https://didcomm.org/message-pickup/4.0/messages-received";
/// Party → mediator: switch live delivery on or off.
pub const LIVE_DELIVERY_CHANGE_TYPE: &str =
    "https://didcomm.org/message-pickup/4.0/live-delivery-change";

/// Message Pickup 4.0's message types.
pub const TYPES: PickupTypes = PickupTypes {
    piuri: PIURI,
    status_request: STATUS_REQUEST_TYPE,
    status: STATUS_TYPE,
    delivery_request: DELIVERY_REQUEST_TYPE,
    delivery: DELIVERY_TYPE,
    messages_received: MESSAGES_RECEIVED_TYPE,
    live_delivery_change: LIVE_DELIVERY_CHANGE_TYPE,
};

/// Body field of a Pickup 4.0 `live-delivery-change` (an mpc-did extension,
/// spec/mediator.md §3.2): `true` asks the mediator to push the messages already queued
/// too, as Pickup 3.0 live mode does, instead of leaving them to `delivery-request`. The
/// `status` answering it repeats the field as `true` when the mediator honours it.
pub const LIVE_BACKLOG_FIELD: &str = "mpc_did_backlog";

#[cfg(test)]
mod tests {
    use super::super::pickup::PickupVersion;
    use super::*;

    #[test]
    fn versions_by_type() {
        assert_eq!(
            PickupVersion::of_type(DELIVERY_TYPE),
            Some((PickupVersion::V4, "delivery"))
        );
        assert_eq!(
            PickupVersion::of_type("https://didcomm.org/messagepickup/3.0/status"),
            Some((PickupVersion::V3, "status"))
        );
        assert!(PickupVersion::is_delivery(DELIVERY_TYPE));
        assert!(!PickupVersion::is_delivery(STATUS_TYPE));
        for v in PickupVersion::ALL {
            let t = v.types();
            for ty in [
                t.status_request,
                t.status,
                t.delivery_request,
                t.delivery,
                t.messages_received,
                t.live_delivery_change,
            ] {
                assert!(ty.starts_with(t.piuri), "{ty}");
            }
        }
    }
}
