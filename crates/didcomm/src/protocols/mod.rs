//! The DIDComm protocols we speak, as typed messages. Each converts to and from the
//! generic [`crate::Message`]; parsing checks `type` and the body shape and returns
//! [`crate::Error::Protocol`] on anything else.

pub mod ack;
pub mod coordinate_mediation;
pub mod coordinate_mediation_v3;
pub mod discover_features;
pub mod oob;
pub mod pickup;
pub mod pickup_v4;
#[cfg(feature = "qr")]
pub mod qr;
pub mod report_problem;
pub mod routing;
pub mod trust_ping;

use serde::de::DeserializeOwned;

use crate::error::{Error, Result};
use crate::message::Message;

pub(crate) fn expect_type(msg: &Message, protocol: &'static str, want: &str) -> Result<()> {
    if msg.type_ == want {
        Ok(())
    } else {
        Err(Error::Protocol {
            protocol,
            reason: format!("type is {:?}, expected {want:?}", msg.type_),
        })
    }
}

pub(crate) fn body<T: DeserializeOwned>(msg: &Message, protocol: &'static str) -> Result<T> {
    serde_json::from_value(msg.body.clone()).map_err(|e| Error::Protocol {
        protocol,
        reason: e.to_string(),
    })
}
