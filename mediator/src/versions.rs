//! Which mediation protocol, and which version of it, a request speaks: Coordinate
//! Mediation 2.0 or 3.0, Message Pickup 3.0 or 4.0 (spec/mediator.md §3.2). The mediator
//! serves all four side by side and answers each request in its own version; the message
//! names and their handling are the same, except where [`core`](crate::core) branches on
//! the version (strict CM 3.0 bodies and pagination, Pickup 4.0's empty `delivery` and
//! live-mode backlog rule).

use mpc_did_didcomm::protocols::coordinate_mediation::CoordinateMediationVersion;
use mpc_did_didcomm::protocols::pickup::PickupVersion;

/// A request of one of the mediation protocols, by version and message name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mediation<'a> {
    /// Coordinate Mediation: version and message name (`mediate-request`, …).
    Cm(CoordinateMediationVersion, &'a str),
    /// Message Pickup: version and message name (`status-request`, …).
    Pickup(PickupVersion, &'a str),
}

impl<'a> Mediation<'a> {
    /// Classifies a message type; `None` for other protocols.
    pub(crate) fn of(type_: &'a str) -> Option<Self> {
        if let Some((v, name)) = CoordinateMediationVersion::of_type(type_) {
            return Some(Self::Cm(v, name));
        }
        PickupVersion::of_type(type_).map(|(v, name)| Self::Pickup(v, name))
    }
}

/// Requests that change state (a grant, keys, a queue, a socket's live mode), in every
/// version: they must carry `created_time` (spec/mediator.md §3).
pub(crate) fn state_changing(type_: &str) -> bool {
    matches!(
        Mediation::of(type_),
        Some(
            Mediation::Cm(_, "mediate-request" | "recipient-update")
                | Mediation::Pickup(_, "messages-received" | "live-delivery-change")
        )
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::messages::types;

    #[test]
    fn classifies_every_version() {
        for t in [
            types::MEDIATE_REQUEST,
            types::RECIPIENT_UPDATE,
            types::MESSAGES_RECEIVED,
            types::LIVE_DELIVERY_CHANGE,
            "https://didcomm.org/coordinate-mediation/3.0/mediate-request",
            "https://didcomm.org/coordinate-mediation/3.0/recipient-update",
            "https://didcomm.org/message-pickup/4.0/messages-received",
            "https://didcomm.org/message-pickup/4.0/live-delivery-change",
        ] {
            assert!(state_changing(t), "{t}");
        }
        for t in [
            types::STATUS_REQUEST,
            types::PING,
            "https://didcomm.org/message-pickup/4.0/delivery-request",
            "https://didcomm.org/coordinate-mediation/3.0/recipient-query",
        ] {
            assert!(!state_changing(t), "{t}");
        }
        assert_eq!(
            Mediation::of("https://didcomm.org/message-pickup/4.0/status-request"),
            Some(Mediation::Pickup(PickupVersion::V4, "status-request"))
        );
        assert_eq!(Mediation::of(types::FORWARD), None);
    }
}
