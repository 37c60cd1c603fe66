//! NAT mapping classification (RFC 5780 §4.3), as a pure function of the
//! mapped addresses a client observed.
//!
//! ```text
//!  test I   : Binding to primary   A1:P1  -> M1   (OTHER-ADDRESS = A2:P2)
//!  test II  : Binding to           A2:P1  -> M2
//!  test III : Binding to           A2:P2  -> M3
//!  M1 is a local address          -> NoNat
//!  M1 == M2                       -> EndpointIndependent
//!  M2 == M3                       -> AddressDependent
//!  otherwise                      -> AddressAndPortDependent
//! ```

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

/// How a NAT maps one internal address:port to external ones (RFC 4787 §4.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NatMapping {
    /// The mapped address is one of ours: no NAT on the path.
    NoNat,
    /// Same mapping whatever the destination: hole punching works.
    EndpointIndependent,
    /// Mapping changes with the destination IP address.
    AddressDependent,
    /// Mapping changes with destination IP and port ("symmetric NAT"):
    /// punching only works against a peer that is not behind one too.
    AddressAndPortDependent,
    /// Not enough observations (a test got no answer, or the server has no
    /// alternate address).
    Unknown,
}

impl NatMapping {
    /// Whether UDP hole punching can be expected to work between two peers
    /// with these mappings (FACTS.md: EIM×EIM and EIM×symmetric with a
    /// full-cone filter worked; symmetric×symmetric did not).
    pub fn punchable_with(self, other: NatMapping) -> bool {
        use NatMapping::*;
        let hard = |m| matches!(m, AddressAndPortDependent | AddressDependent);
        !(hard(self) && hard(other))
    }
}

/// The observations of RFC 5780 §4.3, each `None` when the test got no answer.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MappingObservations {
    /// Test I: mapped address seen by the primary address A1:P1.
    pub test1: Option<SocketAddr>,
    /// Test II: seen by A2:P1 (alternate IP, primary port).
    pub test2: Option<SocketAddr>,
    /// Test III: seen by A2:P2 (alternate IP and port).
    pub test3: Option<SocketAddr>,
}

/// Classifies the mapping behaviour from the observations and the client's
/// own socket addresses (`local_addrs`: the bound address, or every interface
/// address if the socket is bound to the wildcard).
pub fn classify_mapping(obs: &MappingObservations, local_addrs: &[SocketAddr]) -> NatMapping {
    let Some(m1) = obs.test1 else {
        return NatMapping::Unknown;
    };
    if local_addrs.contains(&m1) {
        return NatMapping::NoNat;
    }
    let Some(m2) = obs.test2 else {
        return NatMapping::Unknown;
    };
    if m1 == m2 {
        return NatMapping::EndpointIndependent;
    }
    let Some(m3) = obs.test3 else {
        return NatMapping::Unknown;
    };
    if m2 == m3 {
        NatMapping::AddressDependent
    } else {
        NatMapping::AddressAndPortDependent
    }
}

/// The servers to probe for tests II and III given test I's OTHER-ADDRESS
/// (A2:P2) and the primary address (A1:P1): (A2:P1, A2:P2).
pub fn probe_targets(primary: SocketAddr, other: SocketAddr) -> (SocketAddr, SocketAddr) {
    (SocketAddr::new(other.ip(), primary.port()), other)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn a(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn rfc5780_decision_table() {
        let local = [a("192.0.2.2:5000")];
        let o = |x: Option<&str>, y: Option<&str>, z: Option<&str>| MappingObservations {
            test1: x.map(a),
            test2: y.map(a),
            test3: z.map(a),
        };
        assert_eq!(
            classify_mapping(&o(None, None, None), &local),
            NatMapping::Unknown
        );
        assert_eq!(
            classify_mapping(&o(Some("192.0.2.2:5000"), None, None), &local),
            NatMapping::NoNat
        );
        assert_eq!(
            classify_mapping(&o(Some("198.51.100.10:6000"), None, None), &local),
            NatMapping::Unknown
        );
        assert_eq!(
            classify_mapping(
                &o(Some("198.51.100.10:6000"), Some("198.51.100.10:6000"), None),
                &local
            ),
            NatMapping::EndpointIndependent
        );
        assert_eq!(
            classify_mapping(
                &o(
                    Some("198.51.100.10:6000"),
                    Some("198.51.100.10:6001"),
                    Some("198.51.100.10:6001")
                ),
                &local
            ),
            NatMapping::AddressDependent
        );
        assert_eq!(
            classify_mapping(
                &o(
                    Some("198.51.100.10:6000"),
                    Some("198.51.100.10:6001"),
                    Some("198.51.100.10:6002")
                ),
                &local
            ),
            NatMapping::AddressAndPortDependent
        );
        assert_eq!(
            classify_mapping(
                &o(Some("198.51.100.10:6000"), Some("198.51.100.10:6001"), None),
                &local
            ),
            NatMapping::Unknown
        );
    }

    #[test]
    fn probe_targets_swap_ip_then_port() {
        let (t2, t3) = probe_targets(a("198.51.100.1:3478"), a("198.51.100.2:3479"));
        assert_eq!(t2, a("198.51.100.2:3478"));
        assert_eq!(t3, a("198.51.100.2:3479"));
    }

    #[test]
    fn punchability() {
        use NatMapping::*;
        assert!(EndpointIndependent.punchable_with(AddressAndPortDependent));
        assert!(NoNat.punchable_with(AddressAndPortDependent));
        assert!(!AddressAndPortDependent.punchable_with(AddressAndPortDependent));
    }
}
