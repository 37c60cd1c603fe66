//! Coordinate Mediation 2.0
//! (<https://didcomm.org/coordinate-mediation/2.0/>): a party asks a mediator to mediate
//! for it and keeps the list of keys the mediator accepts forwards for.
//!
//! The party side is `mpc-did-agent`'s mediator client, the mediator side is
//! `mpc-did-mediator`; both name the messages by these constants. 2.0 calls the list
//! messages `keylist-update`, `keylist-update-response`, `keylist-query` and `keylist`
//! (3.0 renamed them `recipient-*`); bodies use the spec's field names
//! (`updates[].recipient_did`, `updates[].action`, `keys[].recipient_did`, `routing_did`);
//! spec/mediator.md §3 says which fields we read. Before 2026-12-07 mpc-did used 3.0's
//! names under the 2.0 PIURI ([`LEGACY_RECIPIENT_UPDATE_TYPE`], …); the mediator still
//! answers those in kind.

/// Protocol identifier (PIURI).
pub const PIURI: &str = "https://didcomm.org/coordinate-mediation/2.0";
/// Party → mediator: please mediate for me.
pub const MEDIATE_REQUEST_TYPE: &str =
    "https://didcomm.org/coordinate-mediation/2.0/mediate-request";
/// Mediator → party: mediation granted (carries `routing_did`, one DID as a string).
pub const MEDIATE_GRANT_TYPE: &str = "https://didcomm.org/coordinate-mediation/2.0/mediate-grant";
/// Mediator → party: mediation refused.
pub const MEDIATE_DENY_TYPE: &str = "https://didcomm.org/coordinate-mediation/2.0/mediate-deny";
/// Party → mediator: add or remove recipient DIDs (`keylist-update`).
pub const RECIPIENT_UPDATE_TYPE: &str =
    "https://didcomm.org/coordinate-mediation/2.0/keylist-update";
/// Mediator → party: the outcome of each update (`keylist-update-response`).
pub const RECIPIENT_UPDATE_RESPONSE_TYPE: &str =
    "https://didcomm.org/coordinate-mediation/2.0/keylist-update-response";
/// Party → mediator: which DIDs do you hold for me? (`keylist-query`)
pub const RECIPIENT_QUERY_TYPE: &str = "https://didcomm.org/coordinate-mediation/2.0/keylist-query";
/// Mediator → party: the DIDs it holds, as `keys` (`keylist`).
pub const RECIPIENT_TYPE: &str = "https://didcomm.org/coordinate-mediation/2.0/keylist";

/// The name mpc-did clients before 2026-12-07 gave `keylist-update` in 2.0 (3.0's name).
pub const LEGACY_RECIPIENT_UPDATE_TYPE: &str =
    "https://didcomm.org/coordinate-mediation/2.0/recipient-update";
/// The answer to [`LEGACY_RECIPIENT_UPDATE_TYPE`].
pub const LEGACY_RECIPIENT_UPDATE_RESPONSE_TYPE: &str =
    "https://didcomm.org/coordinate-mediation/2.0/recipient-update-response";
/// The name mpc-did clients before 2026-12-07 gave `keylist-query` in 2.0 (3.0's name).
pub const LEGACY_RECIPIENT_QUERY_TYPE: &str =
    "https://didcomm.org/coordinate-mediation/2.0/recipient-query";
/// The answer to [`LEGACY_RECIPIENT_QUERY_TYPE`] (its list under `dids`, as 3.0).
pub const LEGACY_RECIPIENT_TYPE: &str = "https://didcomm.org/coordinate-mediation/2.0/recipient";

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
    /// `keylist-update` (2.0) / `recipient-update` (3.0).
    pub recipient_update: &'static str,
    /// `keylist-update-response` (2.0) / `recipient-update-response` (3.0).
    pub recipient_update_response: &'static str,
    /// `keylist-query` (2.0) / `recipient-query` (3.0).
    pub recipient_query: &'static str,
    /// `keylist` (2.0) / `recipient` (3.0).
    pub recipient: &'static str,
    /// The body field of `recipient` holding the list: `keys` (2.0) / `dids` (3.0).
    pub list_field: &'static str,
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
    list_field: "keys",
};

/// The message types mpc-did used under the 2.0 PIURI before 2026-12-07 (3.0's names and
/// list field), which the mediator still answers in kind.
pub const LEGACY_TYPES: CoordinateMediationTypes = CoordinateMediationTypes {
    piuri: PIURI,
    mediate_request: MEDIATE_REQUEST_TYPE,
    mediate_grant: MEDIATE_GRANT_TYPE,
    mediate_deny: MEDIATE_DENY_TYPE,
    recipient_update: LEGACY_RECIPIENT_UPDATE_TYPE,
    recipient_update_response: LEGACY_RECIPIENT_UPDATE_RESPONSE_TYPE,
    recipient_query: LEGACY_RECIPIENT_QUERY_TYPE,
    recipient: LEGACY_RECIPIENT_TYPE,
    list_field: "dids",
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

    /// The version a message type belongs to, and the message's role under 3.0's name
    /// (`mediate-request`, `recipient-update`, `recipient-query`, …: 2.0's `keylist-update`
    /// and `keylist-query` come back as `recipient-update` and `recipient-query`); `None`
    /// for another protocol.
    #[must_use]
    pub fn of_type(type_: &str) -> Option<(Self, &str)> {
        Self::ALL.into_iter().find_map(|v| {
            let name = type_.strip_prefix(v.types().piuri)?.strip_prefix('/')?;
            let name = match (v, name) {
                (Self::V2, "keylist-update") => "recipient-update",
                (Self::V2, "keylist-update-response") => "recipient-update-response",
                (Self::V2, "keylist-query") => "recipient-query",
                (Self::V2, "keylist") => "recipient",
                _ => name,
            };
            Some((v, name))
        })
    }

    /// The `routing_did` of a `mediate-grant` naming `did`: 2.0 gives one DID as a string,
    /// 3.0 a list.
    #[must_use]
    pub fn routing_did(self, did: &str) -> serde_json::Value {
        match self {
            Self::V2 => serde_json::Value::String(did.to_owned()),
            Self::V3 => serde_json::json!([did]),
        }
    }
}
