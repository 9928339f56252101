//! Email over SMTP to an ordered list of relays: a relay that refuses,
//! fails or times out hands the message to the next one.

use std::time::Duration;

use lettre::message::{Mailbox, MultiPart};
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};

use crate::settings::SmtpSettings;

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
        let relays = settings
            .relays
            .iter()
            .map(|r| {
                let transport = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(&r.host)
                    .port(r.port)
                    .timeout(Some(Duration::from_millis(r.timeout_ms)))
                    .build();
                (format!("{}:{}", r.host, r.port), transport)
            })
            .collect();
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
