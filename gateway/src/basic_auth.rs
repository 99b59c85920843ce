//! The basic-auth plugin: `Authorization: Basic base64(user:password)` (APISIX 3.x).

use std::sync::Arc;

use base64::Engine as _;
use http::header::{self, HeaderValue};
use http::request::Parts;
use http::{Response, StatusCode};

use crate::body::{self, ProxyBody};
use crate::config::{BasicAuthRouteConfig, ConfigError};
use crate::consumers::{AuthState, ConsumerSet, digest};

/// A route's basic-auth settings, validated.
#[derive(Debug)]
pub struct BasicAuthRoute {
    hide_credentials: bool,
    anonymous: Option<Arc<str>>,
}

/// Why basic-auth refused a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// No Authorization header.
    Missing,
    /// Not `Basic base64(user:password)`.
    Malformed,
    /// Unknown user or wrong password.
    Invalid,
    /// The user's password is not available from the agent (503, fail closed).
    Unavailable,
}

impl Failure {
    /// Metric label.
    pub fn reason(self) -> &'static str {
        match self {
            Self::Missing => "missing",
            Self::Malformed => "malformed",
            Self::Invalid => "invalid",
            Self::Unavailable => "key_unavailable",
        }
    }

    /// APISIX's answers.
    pub fn response(self) -> Response<ProxyBody> {
        let (status, message) = match self {
            Self::Missing => (
                StatusCode::UNAUTHORIZED,
                r#"{"message":"Missing authorization in request"}"#,
            ),
            Self::Malformed => (
                StatusCode::UNAUTHORIZED,
                r#"{"message":"Invalid authorization in request"}"#,
            ),
            Self::Invalid => (
                StatusCode::UNAUTHORIZED,
                r#"{"message":"Invalid user authorization"}"#,
            ),
            Self::Unavailable => (
                StatusCode::SERVICE_UNAVAILABLE,
                r#"{"message":"failed to verify user authorization"}"#,
            ),
        };
        let mut response = body::json(status, message);
        if status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Basic realm='.'"),
            );
        }
        response
    }
}

impl BasicAuthRoute {
    /// Validates `conf` (reported under `at`).
    pub fn build(
        conf: &BasicAuthRouteConfig,
        consumers: &ConsumerSet,
        at: &str,
    ) -> Result<Self, ConfigError> {
        Ok(Self {
            hide_credentials: conf.hide_credentials,
            anonymous: crate::jwt_auth::anonymous(
                conf.anonymous_consumer.as_deref(),
                consumers,
                at,
            )?,
        })
    }

    /// The consumer to continue as when authentication fails with 401.
    pub fn anonymous(&self) -> Option<&Arc<str>> {
        self.anonymous.as_ref()
    }

    /// Authenticates; returns the consumer's username.
    pub fn authenticate(&self, auth: &AuthState, parts: &mut Parts) -> Result<Arc<str>, Failure> {
        let header = parts.headers.get(header::AUTHORIZATION).cloned();
        if self.hide_credentials {
            parts.headers.remove(header::AUTHORIZATION);
        }
        let header = header.ok_or(Failure::Missing)?;
        let value = header.to_str().map_err(|_| Failure::Malformed)?.trim();
        let encoded = match value.split_once(' ') {
            Some((scheme, rest)) if scheme.eq_ignore_ascii_case("basic") => rest.trim(),
            _ => return Err(Failure::Malformed),
        };
        let decoded = zeroize::Zeroizing::new(
            base64::engine::general_purpose::STANDARD
                .decode(encoded)
                .map_err(|_| Failure::Malformed)?,
        );
        let colon = decoded
            .iter()
            .position(|&b| b == b':')
            .ok_or(Failure::Malformed)?;
        let (login, password) = decoded.split_at(colon);
        let password = password.get(1..).unwrap_or_default();
        let login = std::str::from_utf8(login).map_err(|_| Failure::Malformed)?;
        let Some(user) = auth.basic_user(login) else {
            // Same work as a known user, so timing does not reveal which logins exist.
            let _ = digest(password);
            return Err(Failure::Invalid);
        };
        let expected = user.password.as_ref().map_err(|_| Failure::Unavailable)?;
        let given = digest(password);
        if ring_eq(expected, &given) {
            Ok(user.consumer.clone())
        } else {
            Err(Failure::Invalid)
        }
    }
}

/// Constant-time equality of two digests.
fn ring_eq(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn setup(route: &str, yaml: &str) -> (BasicAuthRoute, AuthState) {
        let config = Config::parse(yaml).unwrap();
        let consumers = ConsumerSet::build(&config.consumers, &|_| None).unwrap();
        let conf: BasicAuthRouteConfig = serde_yaml_ng::from_str(route).unwrap();
        let route = BasicAuthRoute::build(&conf, &consumers, "r").unwrap();
        (route, consumers.resolve(None))
    }

    fn with(value: Option<&str>) -> Parts {
        let mut b = http::Request::builder().uri("/");
        if let Some(v) = value {
            b = b.header("authorization", v);
        }
        b.body(()).unwrap().into_parts().0
    }

    fn basic(creds: &str) -> String {
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(creds)
        )
    }

    #[test]
    fn outcomes() {
        let (route, auth) = setup(
            "{}",
            "agent: {socket: /s}\nconsumers:\n  - {username: foo, plugins: {basic-auth: {username: foo-login, password: bar}}}\n  - {username: vaulted, plugins: {basic-auth: {username: v, vault: {}}}}",
        );
        let run = |v: Option<&str>| {
            route
                .authenticate(&auth, &mut with(v))
                .map(|u| u.to_string())
        };
        assert_eq!(run(Some(&basic("foo-login:bar"))), Ok("foo".into()));
        assert_eq!(run(Some(&basic("foo-login:baz"))), Err(Failure::Invalid));
        assert_eq!(run(Some(&basic("ghost:bar"))), Err(Failure::Invalid));
        assert_eq!(run(Some(&basic("v:anything"))), Err(Failure::Unavailable));
        assert_eq!(run(Some(&basic("no-colon"))), Err(Failure::Malformed));
        assert_eq!(run(Some("Basic %%%")), Err(Failure::Malformed));
        assert_eq!(run(Some("Bearer abc")), Err(Failure::Malformed));
        assert_eq!(run(None), Err(Failure::Missing));
        // A colon inside the password is part of it.
        let (route, auth) = setup(
            "{hide_credentials: true}",
            "consumers: [{username: c, plugins: {basic-auth: {username: u, password: 'a:b'}}}]",
        );
        let mut p = with(Some(&basic("u:a:b")));
        assert_eq!(route.authenticate(&auth, &mut p).as_deref(), Ok("c"));
        assert!(p.headers.get("authorization").is_none());
    }

    #[test]
    fn responses() {
        let r = Failure::Missing.response();
        assert_eq!(r.status(), 401);
        assert_eq!(r.headers()["www-authenticate"], "Basic realm='.'");
        assert_eq!(Failure::Unavailable.response().status(), 503);
    }
}
