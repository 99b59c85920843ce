//! The keygate test harness: real OpenBao servers, real agent processes, their sockets
//! and ops ports, and helpers to look at what they did.
//!
//! Every process the harness starts lives in its own temporary directory on free ports,
//! so tests run in parallel; dropping the handle kills the process.

pub mod agent;
pub mod client;
pub mod fault;
pub mod files;
pub mod gateway;
pub mod hostile;
pub mod leaks;
pub mod load;
pub mod logs;
pub mod openbao;
pub mod ports;
pub mod process;
pub mod secrets;
pub mod seed;
pub mod wait;

pub use agent::{AgentAuth, AgentConfig, AgentProcess, CliOutput, Peer, agent_binary};
pub use files::write_private_file;
pub use logs::assert_no_secret_in;
pub use openbao::{AppRoleCreds, AuditMark, AuditRequest, OpenBao, Stop};
pub use ports::free_port;
pub use seed::{Seeded, random_secret, seed_apisix};
pub use wait::{eventually, eventually_every};
