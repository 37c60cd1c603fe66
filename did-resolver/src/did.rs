//! DID and DID URL syntax (W3C DID Core 1.0 §3.1 "DID Syntax", §3.2 "DID URL Syntax").

use std::fmt;
use std::str::FromStr;

use crate::error::DidError;

/// Longest DID (or DID URL) we accept. DID Core sets no limit; 2 KiB is far above any
/// did:key or did:web in use and bounds the work done on hostile input.
pub const MAX_DID_LEN: usize = 2048;

/// A syntactically valid DID: `did:<method-name>:<method-specific-id>`, without path, query
/// or fragment.
///
/// Grammar (DID Core §3.1):
/// ```text
/// did                = "did:" method-name ":" method-specific-id
/// method-name        = 1*method-char          ; method-char = %x61-7A / DIGIT
/// method-specific-id = *( *idchar ":" ) 1*idchar
/// idchar             = ALPHA / DIGIT / "." / "-" / "_" / pct-encoded
/// ```
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Did {
    text: String,
    /// Byte offset of the `:` that ends the method name.
    method_end: usize,
}

impl Did {
    /// Parses a DID.
    ///
    /// # Errors
    /// [`DidError`] naming what is wrong: missing `did:` scheme, bad method name, empty or
    /// invalid method-specific id, a path/query/fragment (use [`DidUrl::parse`] for those),
    /// or input longer than [`MAX_DID_LEN`].
    pub fn parse(s: &str) -> Result<Self, DidError> {
        if s.len() > MAX_DID_LEN {
            return Err(DidError::TooLong {
                len: s.len(),
                max: MAX_DID_LEN,
            });
        }
        let rest = s.strip_prefix("did:").ok_or(DidError::MissingScheme)?;
        let (method, msi) = rest
            .split_once(':')
            .ok_or(DidError::MissingMethodSpecificId)?;
        if method.is_empty() {
            return Err(DidError::InvalidMethodName(method.to_owned()));
        }
        if !method
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        {
            return Err(DidError::InvalidMethodName(method.to_owned()));
        }
        if msi.is_empty() {
            return Err(DidError::MissingMethodSpecificId);
        }
        if let Some(pos) = msi.find(['/', '?', '#']) {
            return Err(DidError::UnexpectedDidUrlPart {
                part: msi[pos..].chars().next().unwrap_or('/'),
            });
        }
        validate_method_specific_id(msi)?;
        Ok(Self {
            text: s.to_owned(),
            method_end: 4 + method.len(),
        })
    }

    /// The method name, e.g. `key` or `web`.
    pub fn method(&self) -> &str {
        self.text.get(4..self.method_end).unwrap_or_default()
    }

    /// Everything after `did:<method>:`.
    pub fn method_specific_id(&self) -> &str {
        self.text.get(self.method_end + 1..).unwrap_or_default()
    }

    /// The DID as a string.
    pub fn as_str(&self) -> &str {
        &self.text
    }
}

fn validate_method_specific_id(msi: &str) -> Result<(), DidError> {
    // The last segment (after the final ':') must not be empty: `1*idchar`.
    if msi.ends_with(':') {
        return Err(DidError::InvalidMethodSpecificId(
            "must not end with ':'".to_owned(),
        ));
    }
    let bytes = msi.as_bytes();
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'.' | b'-' | b'_' | b':' => i += 1,
            b'%' => {
                let ok = bytes.get(i + 1).is_some_and(u8::is_ascii_hexdigit)
                    && bytes.get(i + 2).is_some_and(u8::is_ascii_hexdigit);
                if !ok {
                    return Err(DidError::InvalidMethodSpecificId(format!(
                        "bad percent-encoding at byte {i}"
                    )));
                }
                i += 3;
            }
            _ => {
                return Err(DidError::InvalidMethodSpecificId(format!(
                    "character {:?} at byte {i} is not allowed",
                    msi.get(i..).and_then(|r| r.chars().next()).unwrap_or('?')
                )))
            }
        }
    }
    Ok(())
}

impl FromStr for Did {
    type Err = DidError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl fmt::Display for Did {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl fmt::Debug for Did {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Did({})", self.text)
    }
}

impl AsRef<str> for Did {
    fn as_ref(&self) -> &str {
        &self.text
    }
}

impl serde::Serialize for Did {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.text)
    }
}

impl<'de> serde::Deserialize<'de> for Did {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Self::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// A DID URL: a DID plus optional path, query and fragment (DID Core §3.2), e.g. a key id
/// `did:key:z6Mk…#z6LS…`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DidUrl {
    /// The DID part.
    pub did: Did,
    /// Path including its leading `/`, or empty.
    pub path: String,
    /// Query without `?`, if present.
    pub query: Option<String>,
    /// Fragment without `#`, if present.
    pub fragment: Option<String>,
}

impl DidUrl {
    /// Parses a DID URL.
    ///
    /// # Errors
    /// [`DidError`] if the DID part is invalid or the input is too long.
    pub fn parse(s: &str) -> Result<Self, DidError> {
        if s.len() > MAX_DID_LEN {
            return Err(DidError::TooLong {
                len: s.len(),
                max: MAX_DID_LEN,
            });
        }
        let (before_fragment, fragment) = match s.split_once('#') {
            Some((a, f)) => (a, Some(f.to_owned())),
            None => (s, None),
        };
        let (before_query, query) = match before_fragment.split_once('?') {
            Some((a, q)) => (a, Some(q.to_owned())),
            None => (before_fragment, None),
        };
        // The DID ends at the first '/' after "did:".
        let did_end = before_query
            .get(4..)
            .and_then(|r| r.find('/'))
            .map_or(before_query.len(), |p| p + 4);
        let did_str = before_query.get(..did_end).unwrap_or(before_query);
        let path = before_query.get(did_end..).unwrap_or_default().to_owned();
        let did = Did::parse(did_str)?;
        for part in fragment.iter().chain(query.iter()) {
            if part.chars().any(|c| c.is_whitespace() || c.is_control()) {
                return Err(DidError::InvalidDidUrl(
                    "whitespace or control character in query/fragment".to_owned(),
                ));
            }
        }
        Ok(Self {
            did,
            path,
            query,
            fragment,
        })
    }
}

impl fmt::Display for DidUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}{}", self.did, self.path)?;
        if let Some(q) = &self.query {
            write!(f, "?{q}")?;
        }
        if let Some(fr) = &self.fragment {
            write!(f, "#{fr}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn parses_valid_dids() {
        let d = Did::parse("did:key:z6MkiTBz1ymuepAQ4HEHYSF1H8quG5GLVVQR3djdX3mDooWp").unwrap();
        assert_eq!(d.method(), "key");
        assert_eq!(
            d.method_specific_id(),
            "z6MkiTBz1ymuepAQ4HEHYSF1H8quG5GLVVQR3djdX3mDooWp"
        );
        let w = Did::parse("did:web:example.com%3A8443:user:alice").unwrap();
        assert_eq!(w.method(), "web");
        assert_eq!(w.method_specific_id(), "example.com%3A8443:user:alice");
        assert_eq!(w.to_string(), "did:web:example.com%3A8443:user:alice");
    }

    #[test]
    fn rejects_malformed_dids() {
        // DID Core §3.1: each of these breaks one rule of the ABNF.
        for bad in [
            "",
            "did",
            "did:",
            "did:key",
            "did:key:",
            "did::abc",
            "did:KEY:abc",
            "did:ke-y:abc",
            "dud:key:abc",
            "did:key:abc:",
            "did:key:a b",
            "did:key:a%2",
            "did:key:a%zz",
            "did:key:a/b",
            "did:key:a#b",
            "did:key:a?b",
            "did:key:é",
        ] {
            assert!(Did::parse(bad).is_err(), "{bad:?} should be rejected");
        }
        assert!(matches!(
            Did::parse(&format!("did:key:{}", "a".repeat(MAX_DID_LEN))),
            Err(DidError::TooLong { .. })
        ));
    }

    #[test]
    fn parses_did_urls() {
        let u = DidUrl::parse("did:web:example.com:u/path/x?service=a#key-1").unwrap();
        assert_eq!(u.did.as_str(), "did:web:example.com:u");
        assert_eq!(u.path, "/path/x");
        assert_eq!(u.query.as_deref(), Some("service=a"));
        assert_eq!(u.fragment.as_deref(), Some("key-1"));
        assert_eq!(
            u.to_string(),
            "did:web:example.com:u/path/x?service=a#key-1"
        );
        let k = DidUrl::parse("did:key:z6Mk#z6LS").unwrap();
        assert_eq!(k.did.as_str(), "did:key:z6Mk");
        assert_eq!(k.fragment.as_deref(), Some("z6LS"));
    }

    use proptest::prelude::*;

    proptest! {
        // DID Core §3.1 grammar, generated: parse → Display → parse is the identity and
        // the method / method-specific-id split is where the grammar puts it.
        #[test]
        fn did_round_trip(
            method in "[a-z0-9]{1,10}",
            segs in proptest::collection::vec("([A-Za-z0-9._-]|%[0-9A-Fa-f]{2}){0,12}", 0..4),
            last in "([A-Za-z0-9._-]|%[0-9A-Fa-f]{2}){1,20}",
        ) {
            let mut msi = segs.iter().map(|s| format!("{s}:")).collect::<String>();
            msi.push_str(&last);
            let text = format!("did:{method}:{msi}");
            let did = Did::parse(&text).unwrap();
            prop_assert_eq!(did.method(), method.as_str());
            prop_assert_eq!(did.method_specific_id(), msi.as_str());
            let again: Did = did.to_string().parse().unwrap();
            prop_assert_eq!(&again, &did);
            let url = DidUrl::parse(&format!("{text}#frag")).unwrap();
            prop_assert_eq!(url.did, did);
        }

        #[test]
        fn parse_never_panics(s in "\\PC{0,64}") {
            let _ = Did::parse(&s);
            let _ = DidUrl::parse(&s);
            let _ = Did::parse(&format!("did:{s}"));
        }
    }
}
