//! The key-auth plugin: an API key in a header or query parameter (APISIX 3.x).

use std::sync::Arc;

use http::header::HeaderName;
use http::request::Parts;
use http::{Response, StatusCode};

use crate::body::{self, ProxyBody};
use crate::config::{ConfigError, KeyAuthRouteConfig, invalid};
use crate::consumers::{AuthState, ConsumerSet};
use crate::query;

/// A route's key-auth settings, validated.
#[derive(Debug)]
pub struct KeyAuthRoute {
    header: HeaderName,
    query: String,
    hide_credentials: bool,
    anonymous: Option<Arc<str>>,
}

/// Why key-auth refused a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// No key.
    Missing,
    /// No consumer has it (or its owner's key is not loaded: fail closed).
    Invalid,
}

impl Failure {
    /// Metric label.
    pub fn reason(self) -> &'static str {
        match self {
            Self::Missing => "missing",
            Self::Invalid => "invalid",
        }
    }

    /// APISIX's answers.
    pub fn response(self) -> Response<ProxyBody> {
        match self {
            Self::Missing => body::json(
                StatusCode::UNAUTHORIZED,
                r#"{"message":"Missing API key in request"}"#,
            ),
            Self::Invalid => body::json(
                StatusCode::UNAUTHORIZED,
                r#"{"message":"Invalid API key in request"}"#,
            ),
        }
    }
}

impl KeyAuthRoute {
    /// Validates `conf` (reported under `at`).
    pub fn build(
        conf: &KeyAuthRouteConfig,
        consumers: &ConsumerSet,
        at: &str,
    ) -> Result<Self, ConfigError> {
        let header = HeaderName::from_bytes(conf.header.as_bytes())
            .map_err(|_| invalid(format!("{at}.header"), "not a valid header name"))?;
        if conf.query.is_empty() {
            return Err(invalid(format!("{at}.query"), "must not be empty"));
        }
        Ok(Self {
            header,
            query: conf.query.clone(),
            hide_credentials: conf.hide_credentials,
            anonymous: crate::jwt_auth::anonymous(
                conf.anonymous_consumer.as_deref(),
                consumers,
                at,
            )?,
        })
    }

    /// The consumer to continue as when authentication fails.
    pub fn anonymous(&self) -> Option<&Arc<str>> {
        self.anonymous.as_ref()
    }

    /// Authenticates; returns the consumer's username.
    pub fn authenticate(&self, auth: &AuthState, parts: &mut Parts) -> Result<Arc<str>, Failure> {
        let from_header = parts
            .headers
            .get(&self.header)
            .map(|v| v.as_bytes().to_vec());
        let key = match from_header {
            Some(k) => Some(k),
            None => parts
                .uri
                .query()
                .and_then(|q| query::param(q, &self.query))
                .map(String::into_bytes),
        };
        if self.hide_credentials {
            parts.headers.remove(&self.header);
            query::remove_param(&mut parts.uri, &self.query);
        }
        let key = zeroize::Zeroizing::new(key.filter(|k| !k.is_empty()).ok_or(Failure::Missing)?);
        auth.key_consumer(&key).cloned().ok_or(Failure::Invalid)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn setup(route: &str) -> (KeyAuthRoute, AuthState) {
        let config = Config::parse(
            "consumers:\n  - {username: alice, plugins: {key-auth: {key: alice-key}}}\n  - {username: env, plugins: {key-auth: {key: $env://API_KEY}}}",
        )
        .unwrap();
        let consumers =
            ConsumerSet::build(&config.consumers, &|_| Some("from-env".into())).unwrap();
        let conf: KeyAuthRouteConfig = serde_yaml_ng::from_str(route).unwrap();
        let route = KeyAuthRoute::build(&conf, &consumers, "r").unwrap();
        (route, consumers.resolve(None))
    }

    fn parts(uri: &str, headers: &[(&str, &str)]) -> Parts {
        let mut b = http::Request::builder().uri(uri);
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(()).unwrap().into_parts().0
    }

    #[test]
    fn header_query_and_failures() {
        let (route, auth) = setup("{}");
        let ok = |p: &mut Parts| route.authenticate(&auth, p).map(|u| u.to_string());
        assert_eq!(
            ok(&mut parts("/", &[("apikey", "alice-key")])),
            Ok("alice".into())
        );
        assert_eq!(ok(&mut parts("/?apikey=from-env", &[])), Ok("env".into()));
        assert_eq!(ok(&mut parts("/", &[])), Err(Failure::Missing));
        assert_eq!(
            ok(&mut parts("/", &[("apikey", "nope")])),
            Err(Failure::Invalid)
        );
        let mut p = parts("/?apikey=alice-key&x=1", &[]);
        assert!(ok(&mut p).is_ok());
        assert_eq!(p.uri, "/?apikey=alice-key&x=1");
    }

    #[test]
    fn custom_names_and_hiding() {
        let (route, auth) = setup("{header: x-api-key, query: k, hide_credentials: true}");
        let mut p = parts("/p?k=alice-key&x=1", &[]);
        assert_eq!(route.authenticate(&auth, &mut p).as_deref(), Ok("alice"));
        assert_eq!(p.uri, "/p?x=1");
        let mut p = parts("/p", &[("x-api-key", "alice-key")]);
        assert!(route.authenticate(&auth, &mut p).is_ok());
        assert!(p.headers.get("x-api-key").is_none());
    }
}
