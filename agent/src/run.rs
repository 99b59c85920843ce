//! Wiring the agent together and running it until shutdown.

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use arc_swap::ArcSwap;
use keygate_proto::agent::v1::secret_agent_server::SecretAgentServer;
use rand::Rng;
use tokio::sync::watch;
use tokio_stream::StreamExt as _;
use tokio_stream::wrappers::UnixListenerStream;
use tracing::{info, warn};

use crate::config::{ConfigError, Settings};
use crate::metrics::Metrics;
use crate::server::AgentService;
use crate::socket::SocketError;
use crate::store::Store;
use crate::vault::token::TokenManager;
use crate::vault::{TokenCell, VaultError, VaultReader};

/// Why the agent stopped with an error.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RunError {
    /// The configuration is unusable.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The Vault client could not be set up.
    #[error(transparent)]
    Vault(#[from] VaultError),
    /// The socket could not be set up.
    #[error(transparent)]
    Socket(#[from] SocketError),
    /// The ops listener could not bind.
    #[error("ops.listen {addr}: {source}")]
    OpsListen {
        /// The address.
        addr: std::net::SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// The gRPC server failed.
    #[error("gRPC server: {0}")]
    Serve(#[from] tonic::transport::Error),
}

impl RunError {
    /// Whether the error is the configuration's fault (exit code 64).
    pub fn is_config(&self) -> bool {
        matches!(
            self,
            Self::Config(_)
                | Self::Vault(VaultError::Setup(_))
                | Self::Socket(SocketError::UnknownGroup(_))
        )
    }
}

/// Runs the agent until `shutdown` completes. With `config_path`, SIGHUP reloads the
/// peer policies, refresh interval and preload list from it.
pub async fn run(
    settings: Settings,
    config_path: Option<PathBuf>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), RunError> {
    crate::hygiene::harden();
    let metrics = Arc::new(Metrics::default());
    let boot_id = format!("{:016x}", rand::rng().random::<u64>());
    let (stop_tx, stop_rx) = watch::channel(false);
    let (auth_tx, auth_rx) = watch::channel(false);
    let (interval_tx, interval_rx) = watch::channel(settings.refresh_interval);
    let policies = Arc::new(ArcSwap::from_pointee(settings.peers.clone()));

    let token = Arc::new(TokenCell::default());
    let reader = Arc::new(VaultReader::new(&settings, token.clone(), metrics.clone())?);
    let ops_listener = match settings.ops_listen {
        Some(addr) => Some(
            tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|source| RunError::OpsListen { addr, source })?,
        ),
        None => None,
    };
    let (listener, socket_guard) = crate::socket::bind(&settings.socket)?;

    let manager = TokenManager::new(&settings, token.clone(), metrics.clone(), auth_tx)?;
    let Settings {
        mut preload,
        timeout,
        certificates,
        limits,
        ..
    } = settings;
    // Certificates are issued at start, and the agent is not ready before they are.
    preload.extend(certificates.into_iter().map(|(name, _)| name));
    let manager_task = tokio::spawn(manager.run(stop_rx.clone()));

    let store = Arc::new(Store::new(metrics.clone()).with_max_idle(limits.names_per_uid));
    store.preload(&preload);
    let refresher = tokio::spawn(store.clone().refresh(
        reader.clone(),
        interval_rx,
        auth_rx.clone(),
        stop_rx.clone(),
    ));

    if let Some(listener) = ops_listener {
        info!(ops.addr = %listener.local_addr().map(|a| a.to_string()).unwrap_or_default(), "ops listener up");
        tokio::spawn(crate::ops::serve(
            listener,
            metrics.clone(),
            stop_rx.clone(),
        ));
    }

    let (health, health_service) = tonic_health::server::health_reporter();
    let service = AgentService::new(
        store.clone(),
        reader.clone(),
        policies.clone(),
        boot_id.clone(),
        timeout,
        metrics.clone(),
        stop_rx.clone(),
    )
    .with_limits(limits);
    let max_request_bytes = service.max_request_bytes();
    let mut server_stop = stop_rx.clone();
    let admission = crate::server::admission::Admission::new(policies.clone(), metrics.clone());
    let incoming = UnixListenerStream::new(listener).filter_map(move |accepted| match accepted {
        Ok(stream) => admission.admit(stream).map(Ok),
        Err(e) => Some(Err(e)),
    });
    let server = tokio::spawn(
        tonic::transport::Server::builder()
            .max_concurrent_streams(Some(256))
            .http2_keepalive_interval(Some(std::time::Duration::from_secs(30)))
            .http2_keepalive_timeout(Some(std::time::Duration::from_secs(10)))
            .add_service(health_service)
            .add_service(
                SecretAgentServer::new(service).max_decoding_message_size(max_request_bytes),
            )
            .serve_with_incoming_shutdown(incoming, async move {
                let _ = crate::run::stopped(&mut server_stop).await;
            }),
    );

    // Readiness follows authentication; the first time also waits for the preload.
    let readiness = tokio::spawn(track_readiness(
        store.clone(),
        preload,
        auth_rx,
        health,
        metrics.clone(),
        stop_rx.clone(),
    ));

    info!(boot_id = %boot_id, "keygate-agent started");
    tokio::pin!(shutdown);
    let mut hangups = config_path.as_ref().and_then(|_| {
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
            .map_err(|e| warn!(error = %e, "cannot listen for SIGHUP; reload disabled"))
            .ok()
    });
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            Some(()) = async { match hangups.as_mut() { Some(h) => h.recv().await, None => std::future::pending().await } } => {
                if let Some(path) = &config_path {
                    reload(path, &policies, &interval_tx, &store);
                }
            }
        }
    }

    info!("shutting down");
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Stopping]);
    metrics.ready.store(0, Ordering::Relaxed);
    stop_tx.send_replace(true);
    let served = server.await;
    let _ = refresher.await;
    let _ = readiness.await;
    let _ = manager_task.await;
    drop(socket_guard);
    info!("stopped");
    match served {
        Ok(result) => result.map_err(RunError::from),
        Err(_) => Ok(()),
    }
}

async fn track_readiness(
    store: Arc<Store>,
    preload: Vec<crate::name::SecretName>,
    mut authenticated: watch::Receiver<bool>,
    health: tonic_health::server::HealthReporter,
    metrics: Arc<Metrics>,
    mut stop: watch::Receiver<bool>,
) {
    let mut generation = store.subscribe();
    let preloaded = preload.len();
    // Owns the list, so it is freed once the agent is ready.
    let ready = async move {
        loop {
            if *authenticated.borrow_and_update() && store.answered(&preload) {
                return authenticated;
            }
            tokio::select! {
                Ok(()) = authenticated.changed() => {}
                Ok(()) = generation.changed() => {}
            }
        }
    };
    let mut authenticated = tokio::select! {
        authenticated = ready => authenticated,
        _ = crate::run::stopped(&mut stop) => return,
    };
    crate::hygiene::trim_heap();
    metrics.ready.store(1, Ordering::Relaxed);
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Ready]);
    info!(preloaded, "ready");
    loop {
        let serving = *authenticated.borrow_and_update();
        let status = if serving {
            tonic_health::ServingStatus::Serving
        } else {
            tonic_health::ServingStatus::NotServing
        };
        health.set_service_status("", status).await;
        health
            .set_service_status("keygate.agent.v1.SecretAgent", status)
            .await;
        tokio::select! {
            Ok(()) = authenticated.changed() => {}
            _ = crate::run::stopped(&mut stop) => return,
        }
    }
}

/// Applies what can change without a restart; says what cannot.
fn reload(
    path: &std::path::Path,
    policies: &ArcSwap<Vec<crate::config::PeerPolicy>>,
    interval: &watch::Sender<std::time::Duration>,
    store: &Store,
) {
    match Settings::load(path) {
        Ok(new) => {
            policies.store(Arc::new(new.peers));
            interval.send_replace(new.refresh_interval);
            store.preload(&new.preload);
            info!(config.path = %path.display(), "configuration reloaded (peers, refresh interval, preload); vault and socket changes need a restart");
        }
        Err(e) => warn!(error = %e, "reload failed; keeping the running configuration"),
    }
}

/// Completes once `stop` turns true (or its sender is gone).
pub(crate) async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}
