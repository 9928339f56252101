//! Email over SMTP to an ordered list of relays: a relay that refuses,
//! fails or times out hands the message to the next one.

use std::time::Duration;

use lettre::message::{Mailbox, MultiPart};
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};

use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Certificate, CertificateStore, Tls, TlsParameters};

use crate::settings::{RelaySettingsSmtp, SmtpSettings, SmtpTls};

pub struct Mailer {
    from: Mailbox,
    relays: Vec<(String, AsyncSmtpTransport<Tokio1Executor>)>,
}

impl std::fmt::Debug for Mailer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mailer")
            .field("relays", &self.relays.iter().map(|(n, _)| n).collect::<Vec<_>>())
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
        let relays = settings
            .relays
            .iter()
            .map(|r| Ok((format!("{}:{}", r.host, r.port), transport(r, ca_pem.as_deref())?)))
            .collect::<Result<_, String>>()?;
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
        let mut errors = Vec::new();
        for (name, relay) in &self.relays {
            match relay.send(message.clone()).await {
                Ok(_) => return Ok(name.clone()),
                Err(error) => {
                    tracing::warn!(relay = %name, %error, "SMTP relay failed; trying the next");
                    errors.push(format!("{name}: {error}"));
                }
            }
        }
        Err(errors.join("; "))
    }
}

/// The transport of one relay: its TLS mode (Mozilla's roots plus the
/// configured CA) and credentials.
fn transport(
    relay: &RelaySettingsSmtp,
    ca_pem: Option<&[u8]>,
) -> Result<AsyncSmtpTransport<Tokio1Executor>, String> {
    let tls = match relay.tls {
        SmtpTls::None => Tls::None,
        mode => {
            let mut params =
                TlsParameters::builder(relay.host.clone()).certificate_store(CertificateStore::WebpkiRoots);
            if let Some(pem) = ca_pem {
                params = params.add_root_certificate(
                    Certificate::from_pem(pem).map_err(|e| format!("smtp.ca_file: {e}"))?,
                );
            }
            let params = params.build_rustls().map_err(|e| format!("smtp relay {}: {e}", relay.host))?;
            if mode == SmtpTls::Tls { Tls::Wrapper(params) } else { Tls::Required(params) }
        }
    };
    let mut builder = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(&relay.host)
        .port(relay.port)
        .tls(tls)
        .timeout(Some(Duration::from_millis(relay.timeout_ms)));
    if let (Some(user), Some(password)) = (&relay.username, &relay.password) {
        builder = builder.credentials(Credentials::new(user.clone(), password.expose().clone()));
    }
    Ok(builder.build())
}
