//! keygate-agent: the privileged half of keygate. It alone holds the Vault (or
//! OpenBao) token; it authenticates, keeps the token alive, reads secrets and serves
//! them over gRPC on a Unix socket to peers the kernel vouches for.

pub mod backoff;
pub mod cli;
pub mod config;
pub mod hygiene;
pub mod metrics;
pub mod name;
pub mod ops;
pub mod run;
pub mod secret;
pub mod server;
pub mod socket;
pub mod store;
pub mod vault;

pub use run::{RunError, run};
