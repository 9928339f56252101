/// One message the local SMTP sink kept (`make deps`: a Maildir under
/// `TENX_TEST_SMTP_MAILDIR`, default `/tmp/tenx-smtp-sink/maildir`).
#[derive(Debug, Clone)]
pub struct Mail {
    /// The `To` header, lowercased, without angle brackets.
    pub to: String,
    /// The `Message-ID` header, lowercased; empty without one.
    pub message_id: String,
    /// The whole message as the sink stored it.
    pub raw: String,
}

/// Every message the SMTP sink kept so far.
pub fn mails() -> anyhow::Result<Vec<Mail>> {
    let maildir = crate::env_or("TENX_TEST_SMTP_MAILDIR", "/tmp/tenx-smtp-sink/maildir");
    let mut found = Vec::new();
    for sub in ["new", "cur"] {
        let Ok(entries) = std::fs::read_dir(std::path::Path::new(&maildir).join(sub)) else { continue };
        for entry in entries {
            let raw = std::fs::read_to_string(entry?.path()).unwrap_or_default();
            let header = |name: &str| {
                raw.lines().take_while(|l| !l.is_empty()).find_map(|l| {
                    let (key, value) = l.split_once(':')?;
                    key.eq_ignore_ascii_case(name).then(|| value.trim().to_ascii_lowercase())
                })
            };
            let to = header("To").map(|t| t.trim_matches(['<', '>']).to_owned());
            if let Some(to) = to {
                let message_id = header("Message-ID").unwrap_or_default();
                found.push(Mail { to, message_id, raw });
            }
        }
    }
    Ok(found)
}
