use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// A TCP proxy on loopback in front of one server, that a test can cut.
///
/// Point the code under test at [`ChaosProxy::addr`]; then
/// [`ChaosProxy::cut`] makes the server look down (live connections
/// closed, new ones refused), [`ChaosProxy::kill_connections`] drops live
/// connections only (a network blip), [`ChaosProxy::restore`] heals it.
/// The real server, shared with other tests, never notices.
/// [`ChaosProxy::set_delay`] makes it slow instead;
/// [`ChaosProxy::accepted`] tells when the code under test has connected.
#[derive(Debug)]
pub struct ChaosProxy {
    addr: SocketAddr,
    refusing: Arc<AtomicBool>,
    delay_ms: Arc<AtomicU64>,
    accepted: Arc<AtomicUsize>,
    epoch: watch::Sender<u64>,
    accept: JoinHandle<()>,
}

impl ChaosProxy {
    pub async fn start(target: SocketAddr) -> std::io::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let refusing = Arc::new(AtomicBool::new(false));
        let delay_ms = Arc::new(AtomicU64::new(0));
        let accepted = Arc::new(AtomicUsize::new(0));
        let (epoch, _) = watch::channel(0u64);
        let accept = tokio::spawn(accept_loop(
            listener,
            target,
            Gates { refusing: refusing.clone(), delay_ms: delay_ms.clone(), accepted: accepted.clone() },
            epoch.clone(),
        ));
        Ok(Self { addr, refusing, delay_ms, accepted, epoch, accept })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// Closes live connections and refuses new ones until [`Self::restore`].
    pub fn cut(&self) {
        self.refusing.store(true, Ordering::SeqCst);
        self.kill_connections();
    }

    /// Closes every live connection; new ones are still let through.
    pub fn kill_connections(&self) {
        self.epoch.send_modify(|e| *e += 1);
    }

    /// Holds each new connection this long before connecting it through:
    /// the server looks slow (e.g. an SMTP relay taking its time).
    pub fn set_delay(&self, delay: Duration) {
        self.delay_ms.store(u64::try_from(delay.as_millis()).unwrap_or(u64::MAX), Ordering::SeqCst);
    }

    /// How many connections were let through so far (a slow server's
    /// counts as soon as it is accepted, before the delay).
    pub fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }

    /// Lets connections through again.
    pub fn restore(&self) {
        self.refusing.store(false, Ordering::SeqCst);
    }
}

impl Drop for ChaosProxy {
    fn drop(&mut self) {
        self.accept.abort();
        self.kill_connections();
    }
}

/// What the test changes while the proxy runs.
struct Gates {
    refusing: Arc<AtomicBool>,
    delay_ms: Arc<AtomicU64>,
    accepted: Arc<AtomicUsize>,
}

async fn accept_loop(listener: TcpListener, target: SocketAddr, gates: Gates, epoch: watch::Sender<u64>) {
    while let Ok((client, _)) = listener.accept().await {
        if gates.refusing.load(Ordering::SeqCst) {
            drop(client);
            continue;
        }
        gates.accepted.fetch_add(1, Ordering::SeqCst);
        let mut killed = epoch.subscribe();
        let delay = Duration::from_millis(gates.delay_ms.load(Ordering::SeqCst));
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            let Ok(server) = TcpStream::connect(target).await else {
                return;
            };
            let (mut client, mut server) = (client, server);
            tokio::select! {
                _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                _ = killed.changed() => {}
            }
        });
    }
}
