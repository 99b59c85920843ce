//! The token's lifecycle, as Vault Agent runs it but without its known bugs: look the
//! token up on start, renew at about 2/3 of its TTL with jitter, log in again when the
//! lease can no longer grow, when renewal keeps failing past the grace point, or at
//! once when Vault says the token is invalid; every retry sleeps a jittered backoff.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use tokio::sync::watch;
use tokio::time::{Instant, sleep, sleep_until};
use tracing::{debug, error, info, warn};
use vaultrs::client::{Client, VaultClient, VaultClientSettingsBuilder};
use vaultrs::error::ClientError;
use zeroize::Zeroizing;

use super::{TokenCell, VaultError};
use crate::backoff::{Backoff, jitter_down};
use crate::config::{AuthMethod, Settings};
use crate::metrics::Metrics;

/// Renewal is scheduled at this fraction of the remaining TTL.
const RENEW_AT: f64 = 2.0 / 3.0;
/// Below this share of the lease left, a failing renewal gives way to a new login.
const GRACE: f64 = 0.15;
/// Longest pause between login attempts.
const LOGIN_BACKOFF_MAX: Duration = Duration::from_secs(30);
/// After a 403 turned out to be a policy refusal, ignore further ones this long.
const SUSPICION_QUIET: Duration = Duration::from_secs(5);

/// Why a login or token operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AuthError {
    /// A credential file could not be read.
    #[error("cannot read {what} file {path}: {source}")]
    File {
        /// Which credential.
        what: &'static str,
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// Vault refused the credential or token (400/401/403).
    #[error("Vault refused the {0}")]
    Refused(&'static str),
    /// Vault could not be reached, or answered with an error.
    #[error("Vault request failed: {0}")]
    Vault(String),
}

impl AuthError {
    fn from_client(err: &ClientError, what: &'static str) -> Self {
        match err {
            ClientError::APIError {
                code: 400 | 401 | 403,
                ..
            } => Self::Refused(what),
            // The message of these errors names the endpoint and status, never the token.
            other => Self::Vault(other.to_string()),
        }
    }
}

/// A token and what Vault told us about its lease.
#[derive(Debug)]
struct Lease {
    ttl: Duration,
    renewable: bool,
    obtained: Instant,
}

/// What an acquisition yields: the token, its TTL, whether it is renewable, and the TTL
/// a renewal grants while the max TTL is still far (a shorter grant means the last lease).
type Acquired = (SecretString, u64, bool, u64);

/// Owns the vaultrs client and keeps [`TokenCell`] holding a live token.
pub struct TokenManager {
    client: VaultClient,
    auth: AuthMethod,
    revoke_on_shutdown: bool,
    cell: Arc<TokenCell>,
    metrics: Arc<Metrics>,
    authenticated: watch::Sender<bool>,
}

impl std::fmt::Debug for TokenManager {
    // vaultrs's client derives Debug with the token inside: never print it.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenManager")
            .field("auth", &self.auth.label())
            .finish_non_exhaustive()
    }
}

enum Next {
    Reauthenticate,
    Shutdown,
}

impl TokenManager {
    /// A manager for `settings.auth`; `authenticated` is set true while a token is held.
    pub fn new(
        settings: &Settings,
        cell: Arc<TokenCell>,
        metrics: Arc<Metrics>,
        authenticated: watch::Sender<bool>,
    ) -> Result<Self, VaultError> {
        reqwest::Url::parse(&settings.vault_addr)
            .map_err(|e| VaultError::Setup(format!("vault.host: {e}")))?;
        let mut builder = VaultClientSettingsBuilder::default();
        builder
            .address(&settings.vault_addr)
            .timeout(Some(settings.timeout))
            .token("")
            .verify(true)
            .ca_certs(
                settings
                    .ca_file
                    .iter()
                    .map(|p| p.display().to_string())
                    .collect(),
            );
        let client_settings = builder
            .build()
            .map_err(|e| VaultError::Setup(e.to_string()))?;
        let client =
            VaultClient::new(client_settings).map_err(|e| VaultError::Setup(e.to_string()))?;
        Ok(Self {
            client,
            auth: settings.auth.clone(),
            revoke_on_shutdown: settings.revoke_on_shutdown,
            cell,
            metrics,
            authenticated,
        })
    }

    /// Runs until `shutdown` flips to true; revokes the token then if configured.
    pub async fn run(mut self, mut shutdown: watch::Receiver<bool>) {
        // Without a token the agent serves nothing new, so logins retry at least every
        // LOGIN_BACKOFF_MAX (one attempt per half-minute is no storm) rather than the
        // 5-minute ceiling of other loops: recovery after an outage stays quick.
        let mut backoff = Backoff::new(Duration::from_secs(1), LOGIN_BACKOFF_MAX);
        loop {
            let (lease, base_ttl) = match self.acquire().await {
                Ok(lease) => {
                    backoff.reset();
                    lease
                }
                Err(e) => {
                    Metrics::inc(&self.metrics.auth_login_failures);
                    let delay = backoff.next_delay();
                    warn!(auth.method = self.auth.label(), error = %e, retry.in_ms = delay.as_millis() as u64, "authentication failed");
                    if wait_or_shutdown(sleep(delay), &mut shutdown).await {
                        return;
                    }
                    continue;
                }
            };
            match self.maintain(lease, base_ttl, &mut shutdown).await {
                Next::Reauthenticate => continue,
                Next::Shutdown => break,
            }
        }
        if self.revoke_on_shutdown && self.cell.get().is_some() {
            Metrics::inc(&self.metrics.vault_requests);
            match vaultrs::token::revoke_self(&self.client).await {
                Ok(()) => info!("token revoked on shutdown"),
                Err(e) => {
                    warn!(error = %AuthError::from_client(&e, "token"), "revoking the token on shutdown failed")
                }
            }
        }
        self.cell.set(None);
    }

    /// Obtains a token: logs in, or reads and looks up the configured one.
    async fn acquire(&mut self) -> Result<(Lease, Duration), AuthError> {
        Metrics::inc(&self.metrics.vault_requests);
        let (token, ttl, renewable, base_ttl) = match &self.auth {
            AuthMethod::Token(token) => self.lookup(token.clone()).await?,
            AuthMethod::TokenFile(path) => {
                let token = read_credential(path, "token")?;
                self.lookup(SecretString::from(token.trim().to_owned()))
                    .await?
            }
            AuthMethod::AppRole {
                role_id_file,
                secret_id_file,
                mount,
            } => {
                let role_id = read_credential(role_id_file, "role_id")?;
                let secret_id = read_credential(secret_id_file, "secret_id")?;
                let auth = vaultrs::auth::approle::login(
                    &self.client,
                    mount,
                    role_id.trim(),
                    secret_id.trim(),
                )
                .await
                .map_err(|e| AuthError::from_client(&e, "AppRole credentials"))?;
                (
                    SecretString::from(auth.client_token),
                    auth.lease_duration,
                    auth.renewable,
                    auth.lease_duration,
                )
            }
            AuthMethod::Kubernetes {
                role,
                token_path,
                mount,
            } => {
                let jwt = read_credential(token_path, "service-account token")?;
                let auth = vaultrs::auth::kubernetes::login(&self.client, mount, role, jwt.trim())
                    .await
                    .map_err(|e| AuthError::from_client(&e, "service-account token"))?;
                (
                    SecretString::from(auth.client_token),
                    auth.lease_duration,
                    auth.renewable,
                    auth.lease_duration,
                )
            }
        };
        self.client.set_token(token.expose_secret());
        self.cell.set(Some(token));
        Metrics::inc(&self.metrics.auth_logins);
        self.metrics.token_ttl_seconds.store(ttl, Ordering::Relaxed);
        self.metrics.authenticated.store(1, Ordering::Relaxed);
        self.authenticated.send_replace(true);
        info!(
            auth.method = self.auth.label(),
            token.ttl_s = ttl,
            token.renewable = renewable,
            "authenticated to Vault"
        );
        Ok((
            Lease {
                ttl: Duration::from_secs(ttl),
                renewable,
                obtained: Instant::now(),
            },
            Duration::from_secs(base_ttl),
        ))
    }

    /// Looks up a given token, which proves it valid and tells its TTL.
    async fn lookup(&mut self, token: SecretString) -> Result<Acquired, AuthError> {
        self.client.set_token(token.expose_secret());
        let info = vaultrs::token::lookup_self(&self.client)
            .await
            .map_err(|e| AuthError::from_client(&e, "token"))?;
        // The lookup response carries the token itself in `id`: wipe our copy of it.
        let _ = Zeroizing::new(info.id);
        Ok((
            token,
            info.ttl,
            info.renewable.unwrap_or(false),
            info.creation_ttl.max(info.ttl),
        ))
    }

    /// Keeps the token alive until it must be replaced or the agent stops.
    async fn maintain(
        &mut self,
        mut lease: Lease,
        base_ttl: Duration,
        shutdown: &mut watch::Receiver<bool>,
    ) -> Next {
        let mut last_lease = false;
        let mut backoff = Backoff::standard();
        let mut quiet_until = Instant::now();
        let mut retry_now = false;
        // A static token past its last renewal: wait for its end, then give it up.
        let mut expiring = false;
        loop {
            // A TTL of 0 never expires (root tokens): only a refusal can end it.
            let wake = if std::mem::take(&mut retry_now) {
                Some(Instant::now())
            } else if expiring {
                Some(lease.obtained + lease.ttl)
            } else {
                (!lease.ttl.is_zero())
                    .then(|| lease.obtained + jitter_down(lease.ttl.mul_f64(RENEW_AT), 0.1))
            };
            let timer = async {
                match wake {
                    Some(at) => sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = timer => {}
                () = self.cell.denied_reported() => {
                    if Instant::now() < quiet_until {
                        continue;
                    }
                    match self.still_valid().await {
                        Some(false) => {
                            warn!("Vault no longer accepts the token; authenticating again");
                            return self.invalidate();
                        }
                        _ => {
                            // A policy refusal, or Vault unreachable: not the token's fault.
                            quiet_until = Instant::now() + SUSPICION_QUIET;
                            continue;
                        }
                    }
                }
                _ = crate::run::stopped(shutdown) => return Next::Shutdown,
            }

            if last_lease || !lease.renewable {
                if self.auth.can_reauthenticate() {
                    info!(
                        token.renewable = lease.renewable,
                        "token lease cannot grow any more; authenticating again"
                    );
                    return Next::Reauthenticate;
                }
                let left = remaining(&lease);
                if expiring || left.is_zero() {
                    error!(
                        "the static token has expired; configure token_file, approle or kubernetes auth"
                    );
                    return self.invalidate();
                }
                warn!(
                    expires.in_ms = left.as_millis() as u64,
                    "the static token cannot be renewed any more; it will expire"
                );
                expiring = true;
                lease = Lease {
                    ttl: left,
                    renewable: false,
                    obtained: Instant::now(),
                };
                continue;
            }

            Metrics::inc(&self.metrics.vault_requests);
            match vaultrs::token::renew_self(&self.client, None).await {
                Ok(auth) => {
                    backoff.reset();
                    Metrics::inc(&self.metrics.token_renewals);
                    self.metrics
                        .token_ttl_seconds
                        .store(auth.lease_duration, Ordering::Relaxed);
                    let ttl = Duration::from_secs(auth.lease_duration);
                    // Vault grants less than asked once the max TTL is near: the lease
                    // can no longer grow. Log in now, while the old token still has its
                    // whole remainder as a margin (a static token waits for its end).
                    last_lease = ttl < base_ttl;
                    debug!(
                        token.ttl_s = auth.lease_duration,
                        token.last_lease = last_lease,
                        "token renewed"
                    );
                    if last_lease && self.auth.can_reauthenticate() {
                        info!(
                            token.ttl_s = auth.lease_duration,
                            "token lease capped by its max TTL; authenticating again"
                        );
                        return Next::Reauthenticate;
                    }
                    lease = Lease {
                        ttl,
                        renewable: auth.renewable,
                        obtained: Instant::now(),
                    };
                }
                Err(e) => {
                    Metrics::inc(&self.metrics.token_renewal_failures);
                    Metrics::inc(&self.metrics.vault_errors);
                    let err = AuthError::from_client(&e, "token");
                    if matches!(err, AuthError::Refused(_)) {
                        warn!(error = %err, "token renewal refused; authenticating again");
                        return self.invalidate();
                    }
                    let left = remaining(&lease);
                    if left <= lease.ttl.mul_f64(GRACE) {
                        warn!(error = %err, left_ms = left.as_millis() as u64, "token renewal failing past the grace point; authenticating again");
                        return Next::Reauthenticate;
                    }
                    let delay = backoff
                        .next_delay()
                        .min(left.saturating_sub(lease.ttl.mul_f64(GRACE)));
                    warn!(error = %err, retry.in_ms = delay.as_millis() as u64, "token renewal failed");
                    if wait_or_shutdown(sleep(delay), shutdown).await {
                        return Next::Shutdown;
                    }
                    retry_now = true;
                }
            }
        }
    }

    /// Asks Vault whether the current token is still valid: `None` if Vault is unreachable.
    async fn still_valid(&self) -> Option<bool> {
        Metrics::inc(&self.metrics.vault_requests);
        match vaultrs::token::lookup_self(&self.client).await {
            Ok(info) => {
                let _ = Zeroizing::new(info.id);
                Some(true)
            }
            Err(ClientError::APIError {
                code: 401 | 403, ..
            }) => Some(false),
            Err(_) => None,
        }
    }

    /// Withdraws the token from readers, so no request goes out with a dead token.
    fn invalidate(&mut self) -> Next {
        self.cell.set(None);
        self.client.set_token("");
        self.metrics.authenticated.store(0, Ordering::Relaxed);
        self.authenticated.send_replace(false);
        Next::Reauthenticate
    }
}

fn remaining(lease: &Lease) -> Duration {
    lease.ttl.saturating_sub(lease.obtained.elapsed())
}

fn read_credential(
    path: &std::path::Path,
    what: &'static str,
) -> Result<Zeroizing<String>, AuthError> {
    std::fs::read_to_string(path)
        .map(Zeroizing::new)
        .map_err(|source| AuthError::File {
            what,
            path: path.display().to_string(),
            source,
        })
}

/// Waits for `fut`; true if shutdown came first.
async fn wait_or_shutdown(
    fut: impl std::future::Future<Output = ()>,
    shutdown: &mut watch::Receiver<bool>,
) -> bool {
    tokio::select! {
        () = fut => false,
        _ = crate::run::stopped(shutdown) => true,
    }
}
