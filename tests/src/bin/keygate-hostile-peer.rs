//! A hostile client of the agent's socket for the `hostile_socket` tests, run as a
//! process of its own so that it can fork, exit, or run as another uid.
//!
//! - `fork-watch <socket> <name>`: connects, then forks. The child opens `Watch(name)`
//!   over the connection the parent made (so the agent's peer is the parent), prints
//!   `watching <child pid> <parent pid>`, then `snapshot <version>` per message and
//!   `ended <code>` when the stream ends. The parent closes its copy of the
//!   connection and exits as soon as a line arrives on its standard input.
//! - `flood <socket> <connections> <watches> <name>`: opens `<watches>` Watch streams
//!   on one connection, then `<connections>` more idle connections, and prints
//!   `watches <ok> exhausted <n> denied <n> other <n> connections <still open>`. It
//!   holds all of them until its standard input closes.
//! - `names <socket> <batches> <batch size>`: `Get` calls for made-up names under
//!   `consumer/`, each batch all new; prints `gets <ok> exhausted <n> other <n>`.
#![expect(
    clippy::print_stdout,
    reason = "standard output is how this helper reports to the test that runs it"
)]

use std::io::{BufRead as _, Read as _, Write as _};
use std::os::fd::OwnedFd;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hyper_util::rt::TokioIo;
use keygate_proto::AgentHeader;
use keygate_proto::agent::v1::WatchRequest;
use keygate_proto::agent::v1::secret_agent_client::SecretAgentClient;
use tonic::Code;
use tonic::transport::{Endpoint, Uri};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .as_slice()
    {
        ["fork-watch", socket, name] => fork_watch(socket, name),
        ["flood", socket, connections, watches, name] => {
            match (connections.parse(), watches.parse()) {
                (Ok(c), Ok(w)) => flood(socket, c, w, name),
                _ => Err("connections and watches are numbers".into()),
            }
        }
        ["names", socket, batches, size] => match (batches.parse(), size.parse()) {
            (Ok(b), Ok(n)) => made_up_names(socket, b, n),
            _ => Err("batches and batch size are numbers".into()),
        },
        _ => Err("usage: fork-watch <socket> <name> | flood <socket> <connections> <watches> <name> | names <socket> <batches> <batch size>".into()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            println!("error {e}");
            ExitCode::FAILURE
        }
    }
}

type Error = Box<dyn std::error::Error + Send + Sync>;

fn runtime() -> Result<tokio::runtime::Runtime, Error> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?)
}

fn fork_watch(socket: &str, name: &str) -> Result<(), Error> {
    let stream = std::os::unix::net::UnixStream::connect(socket)?;
    let (ready_read, ready_write) = nix::unistd::pipe()?;
    // Forking before any thread exists (no runtime yet) is sound.
    #[expect(
        unsafe_code,
        reason = "fork in a single-threaded process, the point of the test"
    )]
    let forked = unsafe { nix::unistd::fork() }?;
    match forked {
        nix::unistd::ForkResult::Parent { .. } => {
            drop(ready_write);
            // The child keeps the connection; the parent lets its copy go.
            drop(stream);
            let mut byte = [0u8; 1];
            std::fs::File::from(ready_read).read_exact(&mut byte)?;
            let mut line = String::new();
            std::io::stdin().lock().read_line(&mut line)?;
            Ok(())
        }
        nix::unistd::ForkResult::Child => {
            drop(ready_read);
            runtime()?.block_on(watch_inherited(stream, ready_write, name))
        }
    }
}

async fn watch_inherited(
    stream: std::os::unix::net::UnixStream,
    ready: OwnedFd,
    name: &str,
) -> Result<(), Error> {
    stream.set_nonblocking(true)?;
    let slot = Arc::new(Mutex::new(Some(tokio::net::UnixStream::from_std(stream)?)));
    let channel = Endpoint::try_from("http://keygate-agent.invalid")?
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let taken = slot.lock().ok().and_then(|mut s| s.take());
            async move {
                taken
                    .map(TokioIo::new)
                    .ok_or_else(|| std::io::Error::other("the inherited connection is gone"))
            }
        }))
        .await?;
    let mut client = SecretAgentClient::with_interceptor(channel, AgentHeader);
    let mut watch = client
        .watch(WatchRequest {
            names: vec![name.to_owned()],
        })
        .await?
        .into_inner();
    let first = watch.message().await?.ok_or("the stream ended at once")?;
    println!(
        "watching {} {}",
        nix::unistd::getpid(),
        nix::unistd::getppid()
    );
    println!("snapshot {}", first.version);
    std::fs::File::from(ready).write_all(b"1")?;
    loop {
        match watch.message().await {
            Ok(Some(snapshot)) => println!("snapshot {}", snapshot.version),
            Ok(None) => {
                println!("ended Ok");
                return Ok(());
            }
            Err(status) => {
                println!("ended {:?}", status.code());
                return Ok(());
            }
        }
    }
}

fn flood(socket: &str, connections: usize, watches: usize, name: &str) -> Result<(), Error> {
    runtime()?.block_on(async {
        let mut client = keygate_proto::connect(socket).await?;
        let (mut ok, mut exhausted, mut denied, mut other) = (0, 0, 0, 0);
        let mut streams = Vec::new();
        for _ in 0..watches {
            let call = client.watch(WatchRequest {
                names: vec![name.to_owned()],
            });
            match tokio::time::timeout(Duration::from_secs(10), call).await {
                Ok(Ok(response)) => {
                    let mut stream = response.into_inner();
                    match stream.message().await {
                        Ok(Some(_)) => {
                            ok += 1;
                            streams.push(stream);
                        }
                        Err(status) if status.code() == Code::ResourceExhausted => exhausted += 1,
                        Err(status) if status.code() == Code::PermissionDenied => denied += 1,
                        _ => other += 1,
                    }
                }
                Ok(Err(status)) if status.code() == Code::ResourceExhausted => exhausted += 1,
                Ok(Err(status)) if status.code() == Code::PermissionDenied => denied += 1,
                _ => other += 1,
            }
        }
        let mut idle = Vec::new();
        for _ in 0..connections {
            match std::os::unix::net::UnixStream::connect(socket) {
                Ok(stream) => idle.push(stream),
                Err(_) => break,
            }
        }
        // The agent closes what it does not admit; count what is still open.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let mut open = 0;
        for stream in &idle {
            stream.set_nonblocking(true)?;
            let mut byte = [0u8; 1];
            match (&*stream).read(&mut byte) {
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => open += 1,
                _ => {}
            }
        }
        println!(
            "watches {ok} exhausted {exhausted} denied {denied} other {other} connections {open}"
        );
        // Hold everything until told to stop.
        let _ = tokio::task::spawn_blocking(|| {
            let mut sink = Vec::new();
            let _ = std::io::stdin().read_to_end(&mut sink);
        })
        .await;
        drop(streams);
        drop(idle);
        Ok(())
    })
}

fn made_up_names(socket: &str, batches: usize, size: usize) -> Result<(), Error> {
    runtime()?.block_on(async {
        let mut client = keygate_proto::connect(socket).await?;
        let (mut ok, mut exhausted, mut other) = (0, 0, 0);
        for batch in 0..batches {
            let names = (0..size)
                .map(|i| format!("consumer/made-up-{batch}-{i}/jwt-auth"))
                .collect();
            match client
                .get(keygate_proto::agent::v1::GetRequest { names })
                .await
            {
                Ok(_) => ok += 1,
                Err(status) if status.code() == Code::ResourceExhausted => exhausted += 1,
                Err(_) => other += 1,
            }
        }
        println!("gets {ok} exhausted {exhausted} other {other}");
        Ok(())
    })
}
