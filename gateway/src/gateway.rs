//! The running gateway: shared state, the request path, reloads.
//!
//! Three things are swapped atomically and read lock-free per request: the
//! [`Runtime`] (routes, upstreams, consumer definitions), the [`AuthState`] (consumer
//! keys resolved against the agent's latest snapshot) and the snapshot itself. Only
//! control-plane work (a new snapshot, a reload) takes a mutex, to rebuild the auth
//! state from a consistent pair.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::{ArcSwap, ArcSwapOption};
use http::{Method, Request, StatusCode};
use secrecy::ExposeSecret as _;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::affinity::CpuPlan;
use crate::agent_client::{self, AgentStatus, Backoff};
use crate::body::{self, RequestBody};
use crate::config::{Config, ConfigError, RawResources};
use crate::consumers::APISIX_EXAMPLE_ADMIN_KEY;
use crate::consumers::AuthState;
use crate::control::Control;
use crate::limits::Limits;
use crate::metrics::Metrics;
use crate::proxy::{self, ClientInfo, ProxyError};
use crate::reply::Reply;
use crate::runtime::Runtime;
use crate::secrets::SecretSnapshot;
use crate::store::Store;
use crate::tls::{ServerCerts, SniResolver, TlsCounters};
use crate::{admin, server, sign, status};

/// The gateway could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Bad configuration.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The Admin API's state directory cannot be used.
    #[error("admin.state_dir: {0}")]
    Store(#[from] crate::store::StoreError),
    /// The TLS configuration cannot be built.
    #[error("tls: {0}")]
    Tls(#[from] rustls::Error),
    /// A listener could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
}

/// State shared by the request path, the status listener and the agent client.
#[derive(Debug)]
pub struct Shared {
    pub(crate) runtime: ArcSwap<Runtime>,
    pub(crate) auth: ArcSwap<AuthState>,
    pub(crate) snapshot: ArcSwapOption<SecretSnapshot>,
    pub(crate) agent: Arc<AgentStatus>,
    pub(crate) metrics: Metrics,
    /// What the HTTPS listener serves, read by its handshakes.
    pub(crate) certs: Arc<ArcSwap<ServerCerts>>,
    /// HTTPS handshakes.
    pub(crate) tls_counters: Arc<TlsCounters>,
    /// `tls.listen` at start: an HTTPS listener is bound there (its certificates count
    /// for readiness); changing it needs a restart.
    pub(crate) tls_listen: Option<SocketAddr>,
    names: watch::Sender<Vec<String>>,
    /// Serializes auth-state rebuilds (snapshot arrival vs. reload); never taken per request.
    rebuild: Mutex<()>,
    /// `agent.socket` at start: changing it needs a restart.
    pub(crate) agent_socket: Option<std::path::PathBuf>,
    /// Admin API writes, one at a time across the agent's `Put` of a write-through
    /// (which must not hold the control lock while it waits for the agent).
    pub(crate) admin_writes: tokio::sync::Mutex<()>,
    /// The file, the Admin API's store and their merge. Taken by reloads and admin
    /// writes (which persist while holding it), never per request.
    pub(crate) control: Mutex<Control>,
    /// `admin.max_body` at start.
    pub(crate) admin_max_body: usize,
    started: Instant,
}

impl Shared {
    /// Swaps `runtime` in: new requests use it at once, requests in flight finish with
    /// the old one, no connection is dropped. The watched names follow.
    pub(crate) fn install(&self, runtime: Runtime) {
        let names = runtime.agent_names();
        self.runtime.store(Arc::new(runtime));
        self.rebuild_auth();
        self.names.send_if_modified(|current| {
            if *current == names {
                false
            } else {
                *current = names;
                true
            }
        });
    }

    /// The control state (a poisoned lock is taken over: its holder panicked before
    /// changing anything, or after changing everything).
    pub(crate) fn control(&self) -> std::sync::MutexGuard<'_, Control> {
        self.control.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn rebuild_auth(&self) {
        let _guard = self.rebuild.lock().unwrap_or_else(|p| p.into_inner());
        let runtime = self.runtime.load();
        let snapshot = self.snapshot.load();
        let previous = self.auth.load();
        if !previous.is_resolution_of(&runtime.consumers, snapshot.as_ref()) {
            let auth = runtime
                .consumers
                .resolve_after(snapshot.as_ref(), &previous);
            crate::consumers::warn_short_secrets(&previous, &auth);
            self.auth.store(Arc::new(auth));
        }
        let certs = runtime.resolve_tls(snapshot.as_deref(), Some(&self.certs.load()));
        self.certs.store(Arc::new(certs));
    }

    fn accept_snapshot(&self, snapshot: SecretSnapshot) {
        if let Some(old) = self.snapshot.load().as_deref()
            && old.boot_id != snapshot.boot_id
        {
            tracing::info!(boot_id = %snapshot.boot_id, "agent restarted; replacing all secrets");
        }
        self.snapshot.store(Some(Arc::new(snapshot)));
        self.rebuild_auth();
    }

    /// Ready once secrets are in (or none are needed) and, with an HTTPS listener,
    /// every certificate is usable.
    pub(crate) fn ready(&self) -> bool {
        (self.names.borrow().is_empty() || self.snapshot.load().is_some()) && self.tls_ready()
    }

    /// No HTTPS listener, or every enabled ssl has a valid certificate.
    pub(crate) fn tls_ready(&self) -> bool {
        self.tls_listen.is_none() || self.certs.load().ready(crate::tls::unix_now())
    }

    /// Seconds since the last snapshot, if any.
    pub(crate) fn snapshot_age(&self) -> Option<Duration> {
        self.snapshot
            .load()
            .as_deref()
            .map(|s| s.received_at.elapsed())
    }

    /// Seconds since start.
    pub(crate) fn uptime(&self) -> Duration {
        self.started.elapsed()
    }

    /// Names the current configuration needs from the agent.
    pub(crate) fn watched_names(&self) -> usize {
        self.names.borrow().len()
    }
}

/// A handle for reloading a running gateway.
#[derive(Debug, Clone)]
pub struct Handle {
    shared: Arc<Shared>,
}

impl Handle {
    /// Validates `config` and, if it is good, swaps it in: new requests use it at
    /// once, requests in flight finish with the old one, no connection is dropped.
    /// An invalid config changes nothing. Listen addresses and the agent socket are
    /// fixed at start (a change is reported and ignored).
    /// With the Admin API enabled, its stored changes stay laid over the new file.
    pub fn reload(&self, config: &Config) -> Result<(), ConfigError> {
        let socket = config.agent.as_ref().map(|a| a.socket.clone());
        let mut control = self.shared.control();
        let admin_before = control.store().is_some();
        let runtime = control.reload(config.clone(), &|k| std::env::var(k).ok())?;
        if socket != self.shared.agent_socket {
            tracing::warn!("agent.socket changed; it takes effect only after a restart");
        }
        if config.tls.as_ref().map(|t| t.listen) != self.shared.tls_listen {
            tracing::warn!("tls.listen changed; it takes effect only after a restart");
        }
        if config.admin.is_some() != admin_before {
            tracing::warn!(
                "the admin block was added or removed; that takes effect only after a restart"
            );
        }
        self.shared.install(runtime);
        Ok(())
    }
}

/// A gateway with its listeners bound, not serving yet.
#[derive(Debug)]
pub struct Gateway {
    shared: Arc<Shared>,
    listener: TcpListener,
    /// More sockets on the proxy listener's address (`SO_REUSEPORT`), one per extra
    /// worker thread.
    worker_listeners: Vec<std::net::TcpListener>,
    status_listener: Option<TcpListener>,
    admin_listener: Option<TcpListener>,
    tls_listener: Option<(TcpListener, server::Tls)>,
    agent: Option<(std::path::PathBuf, Backoff)>,
    grace: Duration,
    limits: Limits,
    /// Worker threads pinned one per CPU ([`Gateway::pin_workers`]).
    cpus: Option<CpuPlan>,
}

impl Gateway {
    /// Validates `config` and binds its listeners (port 0 picks a free port).
    pub async fn bind(config: Config) -> Result<Self, Error> {
        Self::bind_with_workers(config, 1).await
    }

    /// [`Gateway::bind`] for `workers` threads serving the proxy listener, each with
    /// its own single-threaded runtime and its own socket on the listener's address
    /// (`SO_REUSEPORT`: the kernel spreads connections over them), as nginx and
    /// HAProxy do: no work stealing, and upstream connections stay on the thread that
    /// opened them. Everything else (Admin API, status, HTTPS, the agent stream)
    /// runs on the calling runtime, which serves proxy connections as well.
    pub async fn bind_with_workers(mut config: Config, workers: usize) -> Result<Self, Error> {
        let workers = workers.max(1);
        crate::pool::set_workers(workers);
        let store = match &config.admin {
            Some(admin) => Some(Store::open(&admin.state_dir)?),
            None => None,
        };
        let mut control = Control::new(config.clone(), store);
        // Control has its own copy; this one goes now (dropped, its credentials wiped).
        config.raw = RawResources::default();
        let runtime = control.runtime(&|k| std::env::var(k).ok())?;
        let names = runtime.agent_names();
        let auth = runtime.consumers.resolve_after(None, &AuthState::default());
        crate::consumers::warn_short_secrets(&AuthState::default(), &auth);
        let certs = Arc::new(ArcSwap::from_pointee(runtime.resolve_tls(None, None)));
        let tls_counters = Arc::new(TlsCounters::default());
        let bind_failed = |source| Error::Bind {
            addr: config.listen,
            source,
        };
        let (listener, worker_listeners) = if workers == 1 {
            let listener = TcpListener::bind(config.listen)
                .await
                .map_err(bind_failed)?;
            (listener, Vec::new())
        } else {
            let listener = reuse_port_listener(config.listen).map_err(bind_failed)?;
            // The same port for all, also when the configuration asked for port 0.
            let addr = listener.local_addr().map_err(bind_failed)?;
            let mut extra = Vec::with_capacity(workers - 1);
            for _ in 1..workers {
                let socket = reuse_port_listener(addr).map_err(bind_failed)?;
                extra.push(socket.into_std().map_err(bind_failed)?);
            }
            (listener, extra)
        };
        let status_listener = match config.status_listen {
            Some(addr) => Some(
                TcpListener::bind(addr)
                    .await
                    .map_err(|source| Error::Bind { addr, source })?,
            ),
            None => None,
        };
        let admin_listener = match &config.admin {
            Some(admin) => {
                Some(
                    TcpListener::bind(admin.listen)
                        .await
                        .map_err(|source| Error::Bind {
                            addr: admin.listen,
                            source,
                        })?,
                )
            }
            None => None,
        };
        let tls_listener = match &config.tls {
            Some(tls) => {
                let listener =
                    TcpListener::bind(tls.listen)
                        .await
                        .map_err(|source| Error::Bind {
                            addr: tls.listen,
                            source,
                        })?;
                if runtime.tls.is_empty() {
                    tracing::warn!(
                        "tls.listen without ssls: every handshake is refused until one is configured"
                    );
                }
                let resolver = SniResolver::new(certs.clone(), tls_counters.clone());
                let settings = server::Tls {
                    config: crate::tls::resolver::server_config(resolver)?,
                    timeout: tls.handshake_timeout,
                    counters: tls_counters.clone(),
                };
                Some((listener, settings))
            }
            None => {
                if !runtime.tls.is_empty() {
                    tracing::warn!("ssls are configured but no tls.listen: nothing serves them");
                }
                None
            }
        };
        if let Some(admin) = &config.admin
            && admin.key.expose_secret() == APISIX_EXAMPLE_ADMIN_KEY
        {
            tracing::warn!(
                "admin.key is the example key of APISIX's documentation; set your own (a $secret:// or $env:// reference keeps it out of this file)"
            );
        }
        let (names_tx, _) = watch::channel(names);
        let shared = Arc::new(Shared {
            runtime: ArcSwap::from_pointee(runtime),
            auth: ArcSwap::from_pointee(auth),
            snapshot: ArcSwapOption::empty(),
            agent: Arc::new(AgentStatus::default()),
            metrics: Metrics::default(),
            certs,
            tls_counters,
            tls_listen: config.tls.as_ref().map(|t| t.listen),
            names: names_tx,
            rebuild: Mutex::new(()),
            agent_socket: config.agent.as_ref().map(|a| a.socket.clone()),
            admin_writes: tokio::sync::Mutex::new(()),
            admin_max_body: config.admin.as_ref().map_or(0, |a| a.max_body),
            control: Mutex::new(control),
            started: Instant::now(),
        });
        Ok(Self {
            shared,
            listener,
            worker_listeners,
            status_listener,
            admin_listener,
            tls_listener,
            agent: config
                .agent
                .map(|a| (a.socket, Backoff::new(a.backoff_min, a.backoff_max))),
            grace: config.shutdown_grace,
            limits: config.limits.clone(),
            cpus: None,
        })
    }

    /// Pins each worker thread to its own CPU of `plan` when serving: the thread that
    /// calls [`Gateway::serve`] to the first, worker `i` to the `i`-th (see
    /// [`crate::affinity`]). The workers' runtimes give their blocking threads the whole
    /// mask back; give the caller's runtime [`CpuPlan::release_hook`] as its
    /// `on_thread_start` for the same (`keygate-gateway` does).
    pub fn pin_workers(mut self, plan: CpuPlan) -> Self {
        self.cpus = Some(plan);
        self
    }

    /// The proxy listener's address.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// The status listener's address, if configured.
    pub fn status_addr(&self) -> Option<SocketAddr> {
        self.status_listener
            .as_ref()
            .and_then(|l| l.local_addr().ok())
    }

    /// The HTTPS listener's address, if configured.
    pub fn tls_addr(&self) -> Option<SocketAddr> {
        self.tls_listener
            .as_ref()
            .and_then(|(l, _)| l.local_addr().ok())
    }

    /// The Admin API listener's address, if enabled.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin_listener
            .as_ref()
            .and_then(|l| l.local_addr().ok())
    }

    /// A handle for reloads.
    pub fn handle(&self) -> Handle {
        Handle {
            shared: self.shared.clone(),
        }
    }

    /// Serves until `shutdown` completes, then drains in-flight requests for up to
    /// the configured grace period.
    pub async fn serve(self, shutdown: impl Future<Output = ()>) {
        if let Some(plan) = &self.cpus {
            plan.pin_or_warn(0);
        }
        let shared = self.shared;
        let agent_task = self.agent.map(|(socket, backoff)| {
            let sink_shared = shared.clone();
            tokio::spawn(agent_client::follow(
                socket,
                backoff,
                shared.names.subscribe(),
                shared.agent.clone(),
                move |snapshot| sink_shared.accept_snapshot(snapshot),
            ))
        });
        let (stop_status, status_stopped) = watch::channel(false);
        let status_task = self.status_listener.map(|listener| {
            let shared = shared.clone();
            let mut stopped = status_stopped.clone();
            tokio::spawn(server::serve(
                listener,
                move |req, _| status::handle(shared.clone(), req),
                async move {
                    let _ = stopped.wait_for(|s| *s).await;
                },
                Duration::from_secs(1),
            ))
        });
        let admin_task = self.admin_listener.map(|listener| {
            let shared = shared.clone();
            let mut stopped = status_stopped.clone();
            tokio::spawn(server::serve_with(
                listener,
                move |req, remote| admin::handle(shared.clone(), req, remote),
                async move {
                    let _ = stopped.wait_for(|s| *s).await;
                },
                Duration::from_secs(5),
                self.limits.clone(),
            ))
        });
        // The HTTPS listener stops accepting when the proxy listener does, and drains
        // alongside it.
        let (stop_proxy, proxy_stopping) = watch::channel(false);
        let tls_task = self.tls_listener.map(|(listener, tls)| {
            let shared = shared.clone();
            let mut stopping = proxy_stopping.clone();
            tokio::spawn(server::serve_tls(
                listener,
                tls,
                move |req, remote| handle(shared.clone(), req, remote),
                async move {
                    let _ = stopping.wait_for(|s| *s).await;
                },
                self.grace,
                self.limits.clone(),
            ))
        });
        // One connection limit for the proxy port, whichever worker accepted.
        let slots = Arc::new(tokio::sync::Semaphore::new(self.limits.max_connections));
        let workers: Vec<_> = self
            .worker_listeners
            .into_iter()
            .enumerate()
            .filter_map(|(i, listener)| {
                spawn_worker(
                    i + 1,
                    listener,
                    shared.clone(),
                    proxy_stopping.clone(),
                    Listening {
                        grace: self.grace,
                        limits: self.limits.clone(),
                        slots: slots.clone(),
                        cpus: self.cpus.clone(),
                    },
                )
            })
            .collect();
        let handler_shared = shared.clone();
        server::serve_shared(
            self.listener,
            move |req, remote| handle(handler_shared.clone(), req, remote),
            async move {
                shutdown.await;
                let _ = stop_proxy.send(true);
            },
            self.grace,
            self.limits,
            slots,
        )
        .await;
        for worker in workers {
            let _ = worker.await;
        }
        if let Some(task) = tls_task {
            let _ = task.await;
        }
        let _ = stop_status.send(true);
        for task in [status_task, admin_task].into_iter().flatten() {
            let _ = task.await;
        }
        if let Some(task) = agent_task {
            task.abort();
        }
        tracing::info!("gateway stopped");
    }
}

/// A listening socket with `SO_REUSEPORT`, so that each worker can have its own.
fn reuse_port_listener(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.set_reuseport(true)?;
    socket.bind(addr)?;
    socket.listen(1024)
}

/// How a worker serves its socket: like the main listener, under the same
/// connection limit.
struct Listening {
    grace: Duration,
    limits: Limits,
    slots: Arc<tokio::sync::Semaphore>,
    cpus: Option<CpuPlan>,
}

/// Worker `index`: a thread with its own single-threaded runtime serving `listener`
/// until `stopping` turns true, then draining like the main listener. Completes the
/// returned receiver when done; `None` if the thread could not start (its socket is
/// closed, and the kernel sends its connections to the other sockets).
fn spawn_worker(
    index: usize,
    listener: std::net::TcpListener,
    shared: Arc<Shared>,
    mut stopping: watch::Receiver<bool>,
    listening: Listening,
) -> Option<tokio::sync::oneshot::Receiver<()>> {
    let Listening {
        grace,
        limits,
        slots,
        cpus,
    } = listening;
    let (done, finished) = tokio::sync::oneshot::channel();
    let spawned = std::thread::Builder::new()
        .name(format!("keygate-worker-{index}"))
        .spawn(move || {
            crate::pool::enter_worker(index);
            let mut builder = tokio::runtime::Builder::new_current_thread();
            builder.enable_all();
            if let Some(plan) = &cpus {
                plan.pin_or_warn(index);
                builder.on_thread_start(plan.release_hook());
            }
            let runtime = match builder.build() {
                Ok(runtime) => runtime,
                Err(e) => {
                    tracing::error!(worker = index, error = %e, "cannot start a worker runtime");
                    return;
                }
            };
            runtime.block_on(async move {
                let listener = match listener
                    .set_nonblocking(true)
                    .and_then(|()| TcpListener::from_std(listener))
                {
                    Ok(listener) => listener,
                    Err(e) => {
                        tracing::error!(worker = index, error = %e, "cannot listen on a worker socket");
                        return;
                    }
                };
                server::serve_shared(
                    listener,
                    move |req, remote| handle(shared.clone(), req, remote),
                    async move {
                        let _ = stopping.wait_for(|s| *s).await;
                    },
                    grace,
                    limits,
                    slots,
                )
                .await;
            });
            let _ = done.send(());
        });
    match spawned {
        Ok(_) => Some(finished),
        Err(e) => {
            tracing::error!(worker = index, error = %e, "cannot start a worker thread");
            None
        }
    }
}

/// The request path.
async fn handle(shared: Arc<Shared>, req: Request<RequestBody>, remote: SocketAddr) -> Reply {
    let runtime = shared.runtime.load_full();
    // Read only by the access log.
    let started = runtime.access_log.then(Instant::now);
    let (mut parts, incoming) = req.into_parts();

    if runtime.sign_endpoint && parts.method == Method::GET && parts.uri.path() == sign::PATH {
        let auth = shared.auth.load();
        let response = sign::handle(
            &auth,
            parts.uri.query(),
            crate::clock::unix_seconds(),
            &shared.metrics,
        );
        access_log(&runtime, remote, &parts, None, response.status(), started);
        return response.into();
    }

    let Some(route) = runtime.router.route_for(&parts) else {
        shared.metrics.no_route.fetch_add(1, Ordering::Relaxed);
        let response = body::json(
            StatusCode::NOT_FOUND,
            r#"{"error_msg":"404 Route Not Found"}"#,
        );
        access_log(&runtime, remote, &parts, None, response.status(), started);
        return response.into();
    };

    proxy::strip_identity(&mut parts.headers);
    let mut consumer_name: Option<Arc<str>> = None;
    if let Some(plugin) = &route.auth {
        let auth = shared.auth.load();
        let consumer = match plugin.authenticate(&auth, &mut parts, crate::clock::unix_seconds()) {
            Ok(user) => user,
            Err(failure) => {
                if let Some(c) = shared.metrics.auth_failures.get(failure.index()) {
                    c.fetch_add(1, Ordering::Relaxed);
                }
                match plugin.anonymous() {
                    Some(anon) if !failure.unavailable() => {
                        shared.metrics.anonymous.fetch_add(1, Ordering::Relaxed);
                        anon.clone()
                    }
                    _ => {
                        tracing::debug!(route = %route.id, ?failure, "authentication refused a request");
                        let response = failure.response();
                        route.count(response.status().as_u16());
                        access_log(
                            &runtime,
                            remote,
                            &parts,
                            Some(&route.id),
                            response.status(),
                            started,
                        );
                        return response.into();
                    }
                }
            }
        };
        consumer_name = Some(consumer);
    }
    let hash = route
        .upstream
        .hash_of(&parts, consumer_name.as_deref(), remote.ip());

    let https = parts.extensions.get::<server::Secure>().is_some();
    let mut forwarding = proxy::prepare_head(
        &mut parts,
        ClientInfo {
            ip: remote.ip(),
            https,
        },
    );
    if let Some(name) = &consumer_name
        && let Some(value) = proxy::consumer_value(name)
    {
        forwarding.set_consumer(value);
    }
    // Also the start of the first attempt's head timeout.
    let upstream_started = tokio::time::Instant::now();
    let response = match proxy::forward(
        &route.upstream,
        &parts,
        incoming,
        hash,
        &forwarding,
        upstream_started,
    )
    .await
    {
        Ok(response) => {
            shared.metrics.observe_upstream(upstream_started.elapsed());
            response
        }
        Err(ProxyError::Timeout) => {
            shared
                .metrics
                .upstream_timeouts
                .fetch_add(1, Ordering::Relaxed);
            body::json(
                StatusCode::GATEWAY_TIMEOUT,
                r#"{"error_msg":"504 Gateway Timeout"}"#,
            )
            .into()
        }
        Err(ProxyError::Unreachable(why)) => {
            shared
                .metrics
                .upstream_unreachable
                .fetch_add(1, Ordering::Relaxed);
            tracing::debug!(route = %route.id, error = %why, "no upstream response");
            body::json(
                StatusCode::BAD_GATEWAY,
                r#"{"error_msg":"502 Bad Gateway"}"#,
            )
            .into()
        }
        Err(ProxyError::BadRequest(_)) => body::json(
            StatusCode::BAD_REQUEST,
            r#"{"error_msg":"400 Bad Request"}"#,
        )
        .into(),
    };
    route.count(response.status().as_u16());
    access_log(
        &runtime,
        remote,
        &parts,
        Some(&route.id),
        response.status(),
        started,
    );
    // Its map, emptied, takes the head of a later request on this worker.
    crate::recycle::give_headers(parts.headers);
    response
}

fn access_log(
    runtime: &Runtime,
    remote: SocketAddr,
    parts: &http::request::Parts,
    route: Option<&Arc<str>>,
    status: StatusCode,
    started: Option<Instant>,
) {
    if runtime.access_log {
        tracing::info!(
            target: "keygate_gateway::access",
            client = %remote.ip(), method = %parts.method, path = parts.uri.path(),
            route = route.map(|r| &**r),
            status = status.as_u16(),
            micros = started.map_or(0, |s| s.elapsed().as_micros() as u64),
        );
    }
}
