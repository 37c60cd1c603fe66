//! Report Problem 2.0 (<https://identity.foundation/didcomm-messaging/spec/#problem-reports>).

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::{Error, Result};
use crate::message::{new_id, Message};

/// Type of a problem report.
pub const PROBLEM_REPORT_TYPE: &str = "https://didcomm.org/report-problem/2.0/problem-report";
const PROTOCOL: &str = "report problem 2.0";

/// A problem report: `code` is `sorter.scope.descriptors` (e.g. `e.p.xfer.cant-use-endpoint`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProblemReport {
    /// Problem code, e.g. `e.p.msg.not-understood`.
    pub code: String,
    /// Human-readable text; `{1}`, `{2}` refer to `args`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comment: Option<String>,
    /// Values for the comment's placeholders.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub args: Vec<String>,
    /// Where to escalate to (a URI).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub escalate_to: Option<String>,
}

impl ProblemReport {
    /// A report with `code` and a comment.
    ///
    /// # Errors
    /// [`Error::Protocol`] if `code` is not `e|w . p|m|<state> . descriptor...`.
    pub fn new(code: impl Into<String>, comment: Option<String>) -> Result<Self> {
        let r = Self {
            code: code.into(),
            comment,
            args: Vec::new(),
            escalate_to: None,
        };
        r.check()?;
        Ok(r)
    }

    fn check(&self) -> Result<()> {
        let mut parts = self.code.split('.');
        let sorter = parts.next().unwrap_or("");
        let scope = parts.next().unwrap_or("");
        let descriptors = parts.count();
        if !(sorter == "e" || sorter == "w") || scope.is_empty() || descriptors == 0 {
            return Err(Error::Protocol {
                protocol: PROTOCOL,
                reason: format!("bad problem code {:?}", self.code),
            });
        }
        Ok(())
    }

    /// An error (`e`) rather than a warning (`w`).
    pub fn is_error(&self) -> bool {
        self.code.starts_with("e.")
    }

    /// As a plaintext message replying in thread `pthid` (the thread that had the problem).
    ///
    /// # Errors
    /// Never for a report made by [`Self::new`]; serialisation failure otherwise.
    pub fn to_message(&self, pthid: impl Into<String>) -> Result<Message> {
        let body: Value = serde_json::to_value(self).map_err(Error::malformed)?;
        let mut m = Message::new(new_id(), PROBLEM_REPORT_TYPE, body);
        m.pthid = Some(pthid.into());
        Ok(m)
    }

    /// Read a problem report.
    ///
    /// # Errors
    /// [`Error::Protocol`] for another type, a missing or malformed code.
    pub fn from_message(msg: &Message) -> Result<Self> {
        super::expect_type(msg, PROTOCOL, PROBLEM_REPORT_TYPE)?;
        let r: Self = super::body(msg, PROTOCOL)?;
        r.check()?;
        Ok(r)
    }
}
