//! Email over SMTP to an ordered list of relays: a relay that refuses,
//! fails or times out hands the message to the next one.
//!
//! lettre speaks SMTP; the connections under it are our own, opened with
//! `TCP_NODELAY` and kept open between messages. lettre writes a message's
//! body and its final `.` as two writes: with Nagle on, the second waits
//! for the relay to acknowledge the first, and a relay with nothing to
//! answer yet delays that ACK (40 ms on Linux), so a connection carried at
//! most ≈ 25 messages a second. Implicit-TLS relays (`tls = "tls"`) still
//! get lettre's own connection (TLS comes before the greeting there).

use std::pin::Pin;
use std::sync::Mutex;
use std::time::Duration;

use lettre::Message;
use lettre::address::Envelope;
use lettre::message::{Mailbox, MultiPart};
use lettre::transport::smtp::authentication::{Credentials, Mechanism};
use lettre::transport::smtp::client::{
    AsyncSmtpConnection, AsyncTokioStream, Certificate, CertificateStore, TlsParameters,
};
use lettre::transport::smtp::extension::ClientId;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_io_timeout::TimeoutStream;

use crate::settings::{RelaySettingsSmtp, SmtpSettings, SmtpTls};

/// Open connections kept per relay between messages.
const IDLE_PER_RELAY: usize = 32;

pub struct Mailer {
    from: Mailbox,
    relays: Vec<Relay>,
}

impl std::fmt::Debug for Mailer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mailer")
            .field("relays", &self.relays.iter().map(|r| &r.name).collect::<Vec<_>>())
            .finish()
    }
}

/// An email to send.
#[derive(Debug, Clone)]
pub struct Email<'a> {
    pub to: &'a str,
    pub subject: &'a str,
    pub text: &'a str,
    pub html: &'a str,
    /// Stable per notification, so a resend after a crash can be spotted
    /// as a duplicate by mail systems.
    pub message_id: &'a str,
}

impl Mailer {
    pub fn new(settings: &SmtpSettings) -> Result<Self, String> {
        let from = settings.from.parse().map_err(|e| format!("smtp.from: {e}"))?;
        let ca_pem = match &settings.ca_file {
            Some(path) => {
                Some(std::fs::read(path).map_err(|e| format!("smtp.ca_file {}: {e}", path.display()))?)
            }
            None => None,
        };
        let relays =
            settings.relays.iter().map(|r| Relay::new(r, ca_pem.as_deref())).collect::<Result<_, _>>()?;
        Ok(Self { from, relays })
    }

    /// Sends through the first relay that accepts; returns its name, or
    /// every relay's error.
    pub async fn send(&self, email: &Email<'_>) -> Result<String, String> {
        let to: Mailbox = email.to.parse().map_err(|e| format!("bad recipient: {e}"))?;
        let message = Message::builder()
            .from(self.from.clone())
            .to(to)
            .subject(email.subject)
            .message_id(Some(email.message_id.to_owned()))
            .multipart(MultiPart::alternative_plain_html(email.text.to_owned(), email.html.to_owned()))
            .map_err(|e| format!("building the message: {e}"))?;
        let (envelope, bytes) = (message.envelope().clone(), message.formatted());
        let mut errors = Vec::new();
        for relay in &self.relays {
            match relay.send(&envelope, &bytes).await {
                Ok(()) => return Ok(relay.name.clone()),
                Err(error) => {
                    tracing::warn!(relay = %relay.name, %error, "SMTP relay failed; trying the next");
                    errors.push(format!("{}: {error}", relay.name));
                }
            }
        }
        Err(errors.join("; "))
    }
}

/// One relay: how to reach it, and its open connections.
struct Relay {
    name: String,
    host: String,
    port: u16,
    /// Each read and each write on the connection, and opening it.
    timeout: Duration,
    tls: SmtpTls,
    params: Option<TlsParameters>,
    credentials: Option<Credentials>,
    hello: ClientId,
    idle: Mutex<Vec<AsyncSmtpConnection>>,
}

impl Relay {
    fn new(relay: &RelaySettingsSmtp, ca_pem: Option<&[u8]>) -> Result<Self, String> {
        let params = match relay.tls {
            SmtpTls::None => None,
            _ => {
                let mut params = TlsParameters::builder(relay.host.clone())
                    .certificate_store(CertificateStore::WebpkiRoots);
                if let Some(pem) = ca_pem {
                    params = params.add_root_certificate(
                        Certificate::from_pem(pem).map_err(|e| format!("smtp.ca_file: {e}"))?,
                    );
                }
                Some(params.build_rustls().map_err(|e| format!("smtp relay {}: {e}", relay.host))?)
            }
        };
        let credentials = match (&relay.username, &relay.password) {
            (Some(user), Some(password)) => Some(Credentials::new(user.clone(), password.expose().clone())),
            _ => None,
        };
        Ok(Self {
            name: format!("{}:{}", relay.host, relay.port),
            host: relay.host.clone(),
            port: relay.port,
            timeout: Duration::from_millis(relay.timeout_ms),
            tls: relay.tls,
            params,
            credentials,
            hello: ClientId::default(),
            idle: Mutex::new(Vec::new()),
        })
    }

    /// Hands the message over on an open connection (checked with a NOOP
    /// first: the relay may have closed it meanwhile) or a new one; keeps
    /// the connection open for the next message unless it failed.
    async fn send(&self, envelope: &Envelope, bytes: &[u8]) -> Result<(), String> {
        let mut connection = loop {
            let parked = self.idle.lock().unwrap_or_else(|p| p.into_inner()).pop();
            match parked {
                Some(mut connection) => {
                    if connection.test_connected().await {
                        break connection;
                    }
                    connection.abort().await;
                }
                None => break self.connect().await?,
            }
        };
        match connection.send(envelope, bytes).await {
            Ok(_) => {
                let spare = {
                    let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
                    if idle.len() < IDLE_PER_RELAY {
                        idle.push(connection);
                        None
                    } else {
                        Some(connection)
                    }
                };
                if let Some(mut spare) = spare {
                    let _ = spare.quit().await;
                }
                Ok(())
            }
            Err(error) => {
                connection.abort().await;
                Err(error.to_string())
            }
        }
    }

    /// A new connection: greeted, STARTTLS when asked for, authenticated
    /// when credentials are set.
    async fn connect(&self) -> Result<AsyncSmtpConnection, String> {
        let opened = tokio::time::timeout(self.timeout, async {
            let mut connection = match (self.tls, &self.params) {
                (SmtpTls::Tls, Some(params)) => AsyncSmtpConnection::connect_tokio1(
                    (self.host.as_str(), self.port),
                    Some(self.timeout),
                    &self.hello,
                    Some(params.clone()),
                    None,
                )
                .await
                .map_err(|e| e.to_string())?,
                _ => {
                    let tcp = TcpStream::connect((self.host.as_str(), self.port))
                        .await
                        .map_err(|e| format!("connecting: {e}"))?;
                    tcp.set_nodelay(true).map_err(|e| format!("TCP_NODELAY: {e}"))?;
                    let mut timed = TimeoutStream::new(tcp);
                    timed.set_read_timeout(Some(self.timeout));
                    timed.set_write_timeout(Some(self.timeout));
                    let stream = Box::new(Timed(Box::pin(timed)));
                    let mut connection = AsyncSmtpConnection::connect_with_transport(stream, &self.hello)
                        .await
                        .map_err(|e| e.to_string())?;
                    if let (SmtpTls::Starttls, Some(params)) = (self.tls, &self.params) {
                        if !connection.can_starttls() {
                            connection.abort().await;
                            return Err("the relay does not offer STARTTLS, which is required".to_owned());
                        }
                        connection.starttls(params.clone(), &self.hello).await.map_err(|e| e.to_string())?;
                    }
                    connection
                }
            };
            if let Some(credentials) = &self.credentials {
                connection
                    .auth(&[Mechanism::Plain, Mechanism::Login], credentials)
                    .await
                    .map_err(|e| e.to_string())?;
            }
            Ok(connection)
        })
        .await;
        opened.unwrap_or_else(|_| Err("timed out connecting".to_owned()))
    }
}

/// A TCP stream whose reads and writes each time out.
#[derive(Debug)]
struct Timed(Pin<Box<TimeoutStream<TcpStream>>>);

impl AsyncRead for Timed {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        self.0.as_mut().poll_read(cx, buf)
    }
}

impl AsyncWrite for Timed {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        self.0.as_mut().poll_write(cx, buf)
    }

    fn poll_flush(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        self.0.as_mut().poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        self.0.as_mut().poll_shutdown(cx)
    }
}

impl AsyncTokioStream for Timed {
    fn peer_addr(&self) -> std::io::Result<std::net::SocketAddr> {
        self.0.get_ref().peer_addr()
    }
}
