//! The authentication plugin of a route (one per route): jwt-auth, key-auth or
//! basic-auth, behind one interface for the request path and the metrics.

use std::sync::Arc;

use http::Response;
use http::request::Parts;

use crate::basic_auth::{self, BasicAuthRoute};
use crate::body::ProxyBody;
use crate::consumers::AuthState;
use crate::jwt_auth::{self, FAILURE_REASONS, JwtAuthRoute};
use crate::key_auth::{self, KeyAuthRoute};

/// A route's authentication plugin.
#[derive(Debug)]
pub enum RouteAuth {
    /// jwt-auth.
    Jwt(JwtAuthRoute),
    /// key-auth.
    Key(KeyAuthRoute),
    /// basic-auth.
    Basic(BasicAuthRoute),
}

/// Why a plugin refused a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// From jwt-auth.
    Jwt(jwt_auth::Failure),
    /// From key-auth.
    Key(key_auth::Failure),
    /// From basic-auth.
    Basic(basic_auth::Failure),
}

/// `(plugin, reason)` labels of the auth failure counters, in [`Failure::index`] order.
pub fn failure_labels() -> impl Iterator<Item = (&'static str, &'static str)> {
    FAILURE_REASONS
        .iter()
        .map(|r| ("jwt-auth", *r))
        .chain(["missing", "invalid"].map(|r| ("key-auth", r)))
        .chain(["missing", "malformed", "invalid", "key_unavailable"].map(|r| ("basic-auth", r)))
}

/// Number of distinct failure labels.
pub const FAILURE_COUNT: usize = FAILURE_REASONS.len() + 2 + 4;

impl Failure {
    /// Position in [`failure_labels`].
    pub fn index(self) -> usize {
        let jwt = FAILURE_REASONS.len();
        match self {
            Self::Jwt(f) => f.index(),
            Self::Key(key_auth::Failure::Missing) => jwt,
            Self::Key(key_auth::Failure::Invalid) => jwt + 1,
            Self::Basic(basic_auth::Failure::Missing) => jwt + 2,
            Self::Basic(basic_auth::Failure::Malformed) => jwt + 3,
            Self::Basic(basic_auth::Failure::Invalid) => jwt + 4,
            Self::Basic(basic_auth::Failure::Unavailable) => jwt + 5,
        }
    }

    /// True when the credential exists but its secret is not available: such requests
    /// fail closed with 503 and never fall back to the anonymous consumer.
    pub fn unavailable(self) -> bool {
        matches!(
            self,
            Self::Jwt(jwt_auth::Failure::Unavailable)
                | Self::Basic(basic_auth::Failure::Unavailable)
        )
    }

    /// The plugin's answer.
    pub fn response(self) -> Response<ProxyBody> {
        match self {
            Self::Jwt(f) => f.response(),
            Self::Key(f) => f.response(),
            Self::Basic(f) => f.response(),
        }
    }
}

impl RouteAuth {
    /// Authenticates the request (the plugin may remove the credentials from it).
    pub fn authenticate(
        &self,
        auth: &AuthState,
        parts: &mut Parts,
        now: u64,
    ) -> Result<Arc<str>, Failure> {
        match self {
            Self::Jwt(conf) => jwt_auth::authenticate(conf, auth, parts, now).map_err(Failure::Jwt),
            Self::Key(conf) => conf.authenticate(auth, parts).map_err(Failure::Key),
            Self::Basic(conf) => conf.authenticate(auth, parts).map_err(Failure::Basic),
        }
    }

    /// The consumer to continue as when authentication fails with 401.
    pub fn anonymous(&self) -> Option<&Arc<str>> {
        match self {
            Self::Jwt(conf) => conf.anonymous(),
            Self::Key(conf) => conf.anonymous(),
            Self::Basic(conf) => conf.anonymous(),
        }
    }
}
