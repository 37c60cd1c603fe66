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

/// The message types of one Coordinate Mediation version, so that a party or the mediator
/// can speak whichever version the other side chose without matching on strings twice.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CoordinateMediationTypes {
    /// Protocol identifier (PIURI).
    pub piuri: &'static str,
    /// `mediate-request`.
    pub mediate_request: &'static str,
    /// `mediate-grant`.
    pub mediate_grant: &'static str,
    /// `mediate-deny`.
    pub mediate_deny: &'static str,
    /// `recipient-update`.
    pub recipient_update: &'static str,
    /// `recipient-update-response`.
    pub recipient_update_response: &'static str,
    /// `recipient-query`.
    pub recipient_query: &'static str,
    /// `recipient`.
    pub recipient: &'static str,
}

/// Coordinate Mediation 2.0's message types.
pub const TYPES: CoordinateMediationTypes = CoordinateMediationTypes {
    piuri: PIURI,
    mediate_request: MEDIATE_REQUEST_TYPE,
    mediate_grant: MEDIATE_GRANT_TYPE,
    mediate_deny: MEDIATE_DENY_TYPE,
    recipient_update: RECIPIENT_UPDATE_TYPE,
    recipient_update_response: RECIPIENT_UPDATE_RESPONSE_TYPE,
    recipient_query: RECIPIENT_QUERY_TYPE,
    recipient: RECIPIENT_TYPE,
};

/// A Coordinate Mediation version we speak (spec/mediator.md §3.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default, Hash)]
pub enum CoordinateMediationVersion {
    /// Coordinate Mediation 2.0 (what every mpc-did mediator speaks).
    #[default]
    V2,
    /// Coordinate Mediation 3.0.
    V3,
}

impl CoordinateMediationVersion {
    /// Every version we speak, oldest first.
    pub const ALL: [Self; 2] = [Self::V2, Self::V3];

    /// This version's message types.
    #[must_use]
    pub fn types(self) -> &'static CoordinateMediationTypes {
        match self {
            Self::V2 => &TYPES,
            Self::V3 => &super::coordinate_mediation_v3::TYPES,
        }
    }

    /// The version a message type belongs to, and the message's name (`mediate-request`,
    /// …); `None` for another protocol.
    #[must_use]
    pub fn of_type(type_: &str) -> Option<(Self, &str)> {
        Self::ALL.into_iter().find_map(|v| {
            let name = type_.strip_prefix(v.types().piuri)?.strip_prefix('/')?;
            Some((v, name))
        })
    }
}
