//! Coordinate Mediation 3.0 (<https://didcomm.org/coordinate-mediation/3.0/>): the same
//! exchange as 2.0 (mediate-request → grant/deny, recipient-update, recipient-query) under
//! its own PIURI, with `routing_did` in the grant, DIDs (not keys) in the updates, and an
//! optional `paginate` on recipient-query answered with `pagination`.
//!
//! Requests are read strictly: a body field the protocol does not define is an error
//! naming it, which the mediator answers with a problem report (spec/mediator.md §3.2).
//! Shared by the mediator and `mpc-did-agent`'s mediator client.

use serde::{Deserialize, Serialize};

use super::coordinate_mediation::CoordinateMediationTypes;
use crate::error::{Error, Result};
use crate::message::Message;

/// Protocol identifier (PIURI).
pub const PIURI: &str = "https://didcomm.org/coordinate-mediation/3.0";
/// Party → mediator: please mediate for me.
pub const MEDIATE_REQUEST_TYPE: &str =
    "https://didcomm.org/coordinate-mediation/3.0/mediate-request";
/// Mediator → party: mediation granted (carries `routing_did`).
pub const MEDIATE_GRANT_TYPE: &str = "https://didcomm.org/coordinate-mediation/3.0/mediate-grant";
/// Mediator → party: mediation refused.
pub const MEDIATE_DENY_TYPE: &str = "https://didcomm.org/coordinate-mediation/3.0/mediate-deny";
/// Party → mediator: add or remove recipient DIDs.
pub const RECIPIENT_UPDATE_TYPE: &str =
    "https://didcomm.org/coordinate-mediation/3.0/recipient-update";
/// Mediator → party: the outcome of each update.
pub const RECIPIENT_UPDATE_RESPONSE_TYPE: &str =
    "https://didcomm.org/coordinate-mediation/3.0/recipient-update-response";
/// Party → mediator: which DIDs do you hold for me (optionally one page)?
pub const RECIPIENT_QUERY_TYPE: &str =
    "https://didcomm.org/coordinate-mediation/3.0/recipient-query";
/// Mediator → party: the DIDs it holds (and `pagination` when asked for a page).
pub const RECIPIENT_TYPE: &str = "https://didcomm.org/coordinate-mediation/3.0/recipient";

/// Coordinate Mediation 3.0's message types.
pub const TYPES: CoordinateMediationTypes = CoordinateMediationTypes {
    piuri: PIURI,
    mediate_request: MEDIATE_REQUEST_TYPE,
    mediate_grant: MEDIATE_GRANT_TYPE,
    mediate_deny: MEDIATE_DENY_TYPE,
    recipient_update: RECIPIENT_UPDATE_TYPE,
    recipient_update_response: RECIPIENT_UPDATE_RESPONSE_TYPE,
    recipient_query: RECIPIENT_QUERY_TYPE,
    recipient: RECIPIENT_TYPE,
    list_field: "dids",
};

const PROTOCOL: &str = "coordinate mediation 3.0";

/// The body of a `mediate-request`: the spec defines no field (the body may be `{}` or
/// absent).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MediateRequest {}

/// One entry of a `recipient-update`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecipientUpdate {
    /// The DID (or DID URL) the update is about.
    pub recipient_did: String,
    /// `add` or `remove` (anything else is answered `client_error`).
    pub action: String,
}

/// The body of a `recipient-update`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecipientUpdateBody {
    /// The updates, in order.
    pub updates: Vec<RecipientUpdate>,
}

/// `paginate` of a `recipient-query`: "if present must include `limit` and `offset`".
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Paginate {
    /// Most DIDs in the answer.
    pub limit: u64,
    /// DIDs to skip.
    pub offset: u64,
}

/// The body of a `recipient-query`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecipientQueryBody {
    /// The page asked for (all DIDs when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub paginate: Option<Paginate>,
}

/// `pagination` of a `recipient` answer: "if present must include `count`, `offset` and
/// `remaining`".
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pagination {
    /// DIDs in this answer.
    pub count: u64,
    /// DIDs skipped before this page.
    pub offset: u64,
    /// DIDs after this page.
    pub remaining: u64,
}

impl Paginate {
    /// The page of `all` this asks for, and the `pagination` that describes it.
    #[must_use]
    pub fn page<'a, T>(&self, all: &'a [T]) -> (&'a [T], Pagination) {
        let start = usize::try_from(self.offset)
            .unwrap_or(usize::MAX)
            .min(all.len());
        let len = usize::try_from(self.limit)
            .unwrap_or(usize::MAX)
            .min(all.len() - start);
        let page = &all[start..start + len];
        let p = Pagination {
            count: page.len() as u64,
            offset: start as u64,
            remaining: (all.len() - start - len) as u64,
        };
        (page, p)
    }
}

/// Reads the body of a Coordinate Mediation 3.0 request strictly: unknown fields, missing
/// fields and wrong types are [`Error::Protocol`] naming the problem. An absent body
/// (`null`) reads as `{}`.
///
/// # Errors
/// [`Error::Protocol`] as above.
pub fn parse_body<T: serde::de::DeserializeOwned>(msg: &Message) -> Result<T> {
    let body = match &msg.body {
        serde_json::Value::Null => serde_json::Value::Object(serde_json::Map::new()),
        b @ serde_json::Value::Object(_) => b.clone(),
        // serde would read a struct from a JSON array (its fields in order); a DIDComm body
        // is an object (DIDComm v2.1 "Message Headers": `body` "MUST be a JSON object").
        _ => {
            return Err(Error::Protocol {
                protocol: PROTOCOL,
                reason: format!("{}: the body is not a JSON object", msg.type_),
            })
        }
    };
    serde_json::from_value(body).map_err(|e| Error::Protocol {
        protocol: PROTOCOL,
        reason: format!("{}: {e}", msg.type_),
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::super::coordinate_mediation::CoordinateMediationVersion;
    use super::*;
    use serde_json::json;

    // didcomm.org coordinate-mediation/3.0 "Recipient Update": the example body parses.
    #[test]
    fn spec_examples_parse() {
        let m = Message::new(
            "123456780",
            RECIPIENT_UPDATE_TYPE,
            json!({"updates": [{"recipient_did": "did:key:z6MkpTHR8VNsBxYAAWHut2Geadd9jSwuBV8xRoAnwWsdvktH", "action": "add"}]}),
        );
        let b: RecipientUpdateBody = parse_body(&m).unwrap();
        assert_eq!(b.updates[0].action, "add");
        // "paginate: is optional, and if present must include limit and offset."
        let q = Message::new(
            "1",
            RECIPIENT_QUERY_TYPE,
            json!({"paginate": {"limit": 30, "offset": 0}}),
        );
        let b: RecipientQueryBody = parse_body(&q).unwrap();
        assert_eq!(
            b.paginate,
            Some(Paginate {
                limit: 30,
                offset: 0
            })
        );
        let q = Message::new(
            "1",
            RECIPIENT_QUERY_TYPE,
            json!({"paginate": {"limit": 30}}),
        );
        assert!(parse_body::<RecipientQueryBody>(&q).is_err());
        let r = Message::new("1", MEDIATE_REQUEST_TYPE, serde_json::Value::Null);
        parse_body::<MediateRequest>(&r).unwrap();
    }

    // spec/mediator.md §3.2: unknown fields are errors that name the field.
    #[test]
    fn unknown_fields_are_named() {
        let m = Message::new("1", MEDIATE_REQUEST_TYPE, json!({"terms": "accept"}));
        let e = parse_body::<MediateRequest>(&m).unwrap_err().to_string();
        assert!(e.contains("terms"), "{e}");
        let m = Message::new(
            "1",
            RECIPIENT_UPDATE_TYPE,
            json!({"updates": [{"recipient_did": "did:ex:a", "action": "add", "proof": 1}]}),
        );
        let e = parse_body::<RecipientUpdateBody>(&m)
            .unwrap_err()
            .to_string();
        assert!(e.contains("proof"), "{e}");
    }

    fn json_value() -> impl proptest::strategy::Strategy<Value = serde_json::Value> {
        use proptest::prelude::*;
        let leaf = prop_oneof![
            Just(serde_json::Value::Null),
            any::<i64>().prop_map(|n| json!(n)),
            "[a-z:#]{0,12}".prop_map(|s| json!(s)),
        ];
        leaf.prop_recursive(3, 24, 4, |inner| {
            let key = prop_oneof![
                Just("updates".to_owned()),
                Just("recipient_did".to_owned()),
                Just("action".to_owned()),
                Just("paginate".to_owned()),
                Just("limit".to_owned()),
                Just("offset".to_owned()),
                "[a-z_]{1,8}",
            ];
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..4).prop_map(serde_json::Value::Array),
                proptest::collection::btree_map(key, inner, 0..4)
                    .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest::proptest! {
        // spec/mediator.md §3.2: any body of a foreign CM 3.0 request is read or refused
        // with a typed error, never a panic; what is read round-trips.
        #[test]
        fn any_body_is_read_or_refused(body in json_value()) {
            for t in [MEDIATE_REQUEST_TYPE, RECIPIENT_UPDATE_TYPE, RECIPIENT_QUERY_TYPE] {
                let m = Message::new("p", t, body.clone());
                let _ = parse_body::<MediateRequest>(&m);
                if let Ok(b) = parse_body::<RecipientUpdateBody>(&m) {
                    proptest::prop_assert_eq!(serde_json::to_value(&b).unwrap(), body.clone());
                }
                if let Ok(b) = parse_body::<RecipientQueryBody>(&m) {
                    if let Some(p) = b.paginate {
                        let all: Vec<u64> = (0..50).collect();
                        let (page, g) = p.page(&all);
                        proptest::prop_assert_eq!(g.count + g.offset + g.remaining, 50);
                        proptest::prop_assert_eq!(page.len() as u64, g.count);
                    }
                }
            }
        }
    }

    #[test]
    fn pages() {
        let all = [1, 2, 3, 4, 5];
        let (p, g) = Paginate {
            limit: 2,
            offset: 1,
        }
        .page(&all);
        assert_eq!(p, &[2, 3]);
        assert_eq!((g.count, g.offset, g.remaining), (2, 1, 2));
        let (p, g) = Paginate {
            limit: 9,
            offset: 9,
        }
        .page(&all);
        assert!(p.is_empty());
        assert_eq!((g.count, g.offset, g.remaining), (0, 5, 0));
        let (p, _) = Paginate {
            limit: u64::MAX,
            offset: 0,
        }
        .page(&all);
        assert_eq!(p.len(), 5);
    }

    #[test]
    fn versions_by_type() {
        assert_eq!(
            CoordinateMediationVersion::of_type(MEDIATE_REQUEST_TYPE),
            Some((CoordinateMediationVersion::V3, "mediate-request"))
        );
        assert_eq!(
            CoordinateMediationVersion::of_type(
                "https://didcomm.org/coordinate-mediation/2.0/recipient"
            ),
            Some((CoordinateMediationVersion::V2, "recipient"))
        );
        assert_eq!(
            CoordinateMediationVersion::of_type("https://didcomm.org/coordinate-mediation/2.00/x"),
            None
        );
    }
}
