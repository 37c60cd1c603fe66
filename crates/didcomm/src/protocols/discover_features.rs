//! Discover Features 2.0 (<https://identity.foundation/didcomm-messaging/spec/#discover-features-protocol-20>).

use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::error::{Error, Result};
use crate::message::{new_id, Message};

/// Type of a query.
pub const QUERIES_TYPE: &str = "https://didcomm.org/discover-features/2.0/queries";
/// Type of a disclosure.
pub const DISCLOSE_TYPE: &str = "https://didcomm.org/discover-features/2.0/disclose";
const PROTOCOL: &str = "discover features 2.0";

/// One query: a feature type (`protocol`, `goal-code`, `header`) and a match (`*` wildcard
/// at the end allowed).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Query {
    /// `protocol`, `goal-code` or `header`.
    #[serde(rename = "feature-type")]
    pub feature_type: String,
    /// The identifier or prefix pattern.
    #[serde(rename = "match")]
    pub match_: String,
}

/// One disclosed feature.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Disclosure {
    /// `protocol`, `goal-code` or `header`.
    #[serde(rename = "feature-type")]
    pub feature_type: String,
    /// The feature's identifier (a protocol URI, goal code, header name).
    pub id: String,
    /// Roles we play in the protocol.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub roles: Vec<String>,
}

#[derive(Serialize, Deserialize)]
struct QueriesBody {
    queries: Vec<Query>,
}

#[derive(Serialize, Deserialize)]
struct DiscloseBody {
    disclosures: Vec<Disclosure>,
}

/// A queries message.
pub fn queries(queries: Vec<Query>) -> Message {
    Message::new(new_id(), QUERIES_TYPE, json!({ "queries": queries }))
}

/// Read a queries message.
///
/// # Errors
/// [`Error::Protocol`] for another type or body shape.
pub fn parse_queries(msg: &Message) -> Result<Vec<Query>> {
    super::expect_type(msg, PROTOCOL, QUERIES_TYPE)?;
    Ok(super::body::<QueriesBody>(msg, PROTOCOL)?.queries)
}

/// Whether `id` matches a query's pattern (exact, or a prefix ending in `*`).
pub fn matches(pattern: &str, id: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => id.starts_with(prefix),
        None => pattern == id,
    }
}

/// Answer `query_msg` from the features we support: a disclose message in its thread.
///
/// # Errors
/// As [`parse_queries`].
pub fn disclose(query_msg: &Message, supported: &[Disclosure]) -> Result<Message> {
    let qs = parse_queries(query_msg)?;
    let disclosures: Vec<&Disclosure> = supported
        .iter()
        .filter(|d| {
            qs.iter()
                .any(|q| q.feature_type == d.feature_type && matches(&q.match_, &d.id))
        })
        .collect();
    Ok(Message::new(
        new_id(),
        DISCLOSE_TYPE,
        json!({ "disclosures": disclosures }),
    )
    .thid(query_msg.id.clone()))
}

/// Read a disclose message.
///
/// # Errors
/// [`Error::Protocol`] for another type or body shape.
pub fn parse_disclose(msg: &Message) -> Result<Vec<Disclosure>> {
    super::expect_type(msg, PROTOCOL, DISCLOSE_TYPE)?;
    let b: DiscloseBody = super::body(msg, PROTOCOL)?;
    if b.disclosures.len() > 1024 {
        return Err(Error::Protocol {
            protocol: PROTOCOL,
            reason: "too many disclosures".into(),
        });
    }
    Ok(b.disclosures)
}
