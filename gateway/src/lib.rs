//! keygate gateway: HTTP routing, upstream proxying and APISIX-compatible jwt-auth,
//! with secrets served by the privileged keygate agent over its Unix socket.
//!
//! Start with [`run`], or [`Gateway::bind`] then [`Gateway::serve`] to learn the bound
//! addresses first (tests bind port 0) and to get a [`Handle`] for reloads.

pub mod admin;
pub mod affinity;
pub mod agent_client;
pub mod auth;
pub mod basic_auth;
pub mod body;
pub mod catalog;
pub mod clock;
pub mod config;
pub mod consumers;
pub mod control;
mod gateway;
pub mod heap;
pub mod json_text;
pub mod jwt;
pub mod jwt_auth;
pub mod key_auth;
pub mod kind;
pub mod limits;
pub mod metrics;
pub mod pool;
pub mod proxy;
pub mod query;
mod recycle;
pub mod reply;
pub mod router;
pub mod runtime;
pub mod secrets;
mod server;
pub mod sign;
mod status;
pub mod store;
pub mod tls;
pub mod upstream;
mod wire;

use std::future::Future;

pub use config::{Config, ConfigError};
pub use gateway::{Error, Gateway, Handle};
/// The HTTP/1.1 server loop's request parsing, for tests and fuzzing.
pub mod http1 {
    pub use crate::server::{Decoded, decode_requests};
}

/// Validates `config` without binding anything, building it as a start or a reload
/// does: from the catalog's JSON of its resources.
pub fn check(config: &Config) -> Result<(), ConfigError> {
    build(config).map(drop)
}

/// `check-config`: [`check`], and logs what a start with `config` would warn about
/// (consumers' short HMAC secrets), from the same build.
pub fn check_and_warn(config: &Config) -> Result<(), ConfigError> {
    let runtime = build(config)?;
    let none = consumers::AuthState::default();
    consumers::warn_short_secrets(&none, &runtime.consumers.resolve(None));
    Ok(())
}

fn build(config: &Config) -> Result<runtime::Runtime, ConfigError> {
    control::Control::new(config.clone(), None).runtime(&|k| std::env::var(k).ok())
}

/// Binds, serves until `shutdown` completes, drains, returns.
pub async fn run(config: Config, shutdown: impl Future<Output = ()>) -> Result<(), Error> {
    Gateway::bind(config).await?.serve(shutdown).await;
    Ok(())
}
