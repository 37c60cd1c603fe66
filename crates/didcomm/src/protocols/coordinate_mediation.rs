//! Coordinate Mediation 2.0
//! (<https://didcomm.org/coordinate-mediation/2.0/>): a party asks a mediator to mediate
//! for it and keeps the list of keys the mediator accepts forwards for.
//!
//! The party side is `mpc-did-agent`'s mediator client, the mediator side is
//! `mpc-did-mediator`; both name the messages by these constants. Bodies use the field
//! names of the spec (`updates[].recipient_did`, `updates[].action`, `routing_did`, …);
//! spec/mediator.md §3 says which fields we read.

/// Protocol identifier (PIURI).
pub const PIURI: &str = "https://didcomm.org/coordinate-mediation/2.0";
/// Party → mediator: please mediate for me.
pub const MEDIATE_REQUEST_TYPE: &str =
    "https://didcomm.org/coordinate-mediation/2.0/mediate-request";
/// Mediator → party: mediation granted (carries `routing_did`).
pub const MEDIATE_GRANT_TYPE: &str = "https://didcomm.org/coordinate-mediation/2.0/mediate-grant";
/// Mediator → party: mediation refused.
pub const MEDIATE_DENY_TYPE: &str = "https://didcomm.org/coordinate-mediation/2.0/mediate-deny";
/// Party → mediator: add or remove recipient keys.
pub const RECIPIENT_UPDATE_TYPE: &str =
    "https://didcomm.org/coordinate-mediation/2.0/recipient-update";
/// Mediator → party: the outcome of each update.
pub const RECIPIENT_UPDATE_RESPONSE_TYPE: &str =
    "https://didcomm.org/coordinate-mediation/2.0/recipient-update-response";
/// Party → mediator: which keys do you hold for me?
pub const RECIPIENT_QUERY_TYPE: &str =
    "https://didcomm.org/coordinate-mediation/2.0/recipient-query";
/// Mediator → party: the keys it holds.
pub const RECIPIENT_TYPE: &str = "https://didcomm.org/coordinate-mediation/2.0/recipient";
