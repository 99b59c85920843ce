//! Secret names (Vault paths relative to the agent's prefix) and the patterns peer
//! policies are written in.

use std::fmt;

/// Longest name accepted, in bytes.
pub const MAX_NAME_LEN: usize = 512;

/// A name that is not a valid secret path.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum NameError {
    /// The name is empty.
    #[error("empty name")]
    Empty,
    /// The name is longer than the limit.
    #[error("longer than {MAX_NAME_LEN} bytes")]
    TooLong,
    /// A segment is empty, `.` or `..`, or the name starts or ends with `/`.
    #[error("empty, \".\" or \"..\" path segment")]
    BadSegment,
    /// A character outside `[A-Za-z0-9._@+=-]` and `/`.
    #[error("character {0:?} is not allowed")]
    BadChar(char),
}

/// A validated secret name such as `consumer/jack/jwt-auth` (a boxed `str`: the agent
/// keeps one per tracked secret, and never grows them).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SecretName(Box<str>);

impl SecretName {
    /// Validates `text` as a name.
    pub fn parse(text: &str) -> Result<Self, NameError> {
        if text.is_empty() {
            return Err(NameError::Empty);
        }
        if text.len() > MAX_NAME_LEN {
            return Err(NameError::TooLong);
        }
        if let Some(c) = text.chars().find(|c| !is_name_char(*c)) {
            return Err(NameError::BadChar(c));
        }
        if text
            .split('/')
            .any(|seg| seg.is_empty() || seg == "." || seg == "..")
        {
            return Err(NameError::BadSegment);
        }
        Ok(Self(text.into()))
    }

    /// The name as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for SecretName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

fn is_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '@' | '+' | '=' | '-' | '/')
}

/// A peer-policy entry: an exact name, a prefix ending in `*`, or `*` for every name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NamePattern {
    /// Exactly this name.
    Exact(SecretName),
    /// Any name starting with this text (the `*` removed).
    Prefix(String),
}

impl NamePattern {
    /// Parses `consumer/jack/jwt-auth`, `consumer/*` or `*`.
    pub fn parse(text: &str) -> Result<Self, NameError> {
        match text.strip_suffix('*') {
            Some(prefix) => {
                if prefix.contains('*') {
                    return Err(NameError::BadChar('*'));
                }
                if let Some(c) = prefix.chars().find(|c| !is_name_char(*c)) {
                    return Err(NameError::BadChar(c));
                }
                if prefix.split('/').any(|seg| seg == "." || seg == "..") || prefix.starts_with('/')
                {
                    return Err(NameError::BadSegment);
                }
                Ok(Self::Prefix(prefix.to_owned()))
            }
            None => SecretName::parse(text).map(Self::Exact),
        }
    }

    /// Whether `name` falls under this pattern.
    pub fn matches(&self, name: &SecretName) -> bool {
        match self {
            Self::Exact(n) => n == name,
            Self::Prefix(p) => name.as_str().starts_with(p.as_str()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_seed_layout() {
        assert_eq!(
            SecretName::parse("consumer/jack/jwt-auth")
                .unwrap()
                .as_str(),
            "consumer/jack/jwt-auth"
        );
    }

    #[test]
    fn rejects_traversal_and_odd_shapes() {
        for bad in [
            "", "/a", "a/", "a//b", "../x", "a/./b", "a/..", "a b", "a\0b", "ä",
        ] {
            assert!(SecretName::parse(bad).is_err(), "{bad:?} accepted");
        }
        assert_eq!(SecretName::parse(&"a".repeat(513)), Err(NameError::TooLong));
    }

    #[test]
    fn patterns_match_exact_and_prefix() {
        let jack = SecretName::parse("consumer/jack/jwt-auth").unwrap();
        assert!(NamePattern::parse("consumer/*").unwrap().matches(&jack));
        assert!(NamePattern::parse("*").unwrap().matches(&jack));
        assert!(
            NamePattern::parse("consumer/jack/jwt-auth")
                .unwrap()
                .matches(&jack)
        );
        assert!(!NamePattern::parse("consumer/jim/*").unwrap().matches(&jack));
        assert!(
            !NamePattern::parse("consumer/jack/jwt-auth2")
                .unwrap()
                .matches(&jack)
        );
        assert!(NamePattern::parse("a*b*").is_err());
        assert!(NamePattern::parse("../*").is_err());
    }
}
