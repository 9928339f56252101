//! Message templates: subject, text and HTML bodies, and an optional
//! in-app title/body, rendered with minijinja. A variable a template uses
//! but the data lacks is an error, never a blank in a sent message.

use std::collections::HashMap;
use std::path::Path;

use minijinja::{AutoEscape, Environment, UndefinedBehavior};
use serde_json::Value;
use tenx_proto::notification::v1::Channel;

/// A template's category and whether it is critical (never muted).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Kind {
    pub category: &'static str,
    pub critical: bool,
}

/// Categories users can mute (critical ones excepted). `billing` is
/// critical: a failed payment needs the customer to act before service
/// stops, and a receipt is the customer's record of a charge (what card
/// networks and tax rules expect them to get), so neither can be muted.
pub const CATEGORIES: [Kind; 3] = [
    Kind { category: "account", critical: false },
    Kind { category: "security", critical: true },
    Kind { category: "billing", critical: true },
];

/// Built-in templates: name, kind, and the files in `templates/<name>/`.
macro_rules! builtin {
    ($name:literal, $kind:expr, in_app) => {
        ($name, $kind, builtin!(@files $name), Some(include_str!(concat!("../templates/", $name, "/in_app.txt"))))
    };
    ($name:literal, $kind:expr) => {
        ($name, $kind, builtin!(@files $name), None)
    };
    (@files $name:literal) => {
        [
            include_str!(concat!("../templates/", $name, "/subject.txt")),
            include_str!(concat!("../templates/", $name, "/body.txt")),
            include_str!(concat!("../templates/", $name, "/body.html")),
        ]
    };
}

type Builtin = (&'static str, Kind, [&'static str; 3], Option<&'static str>);

const ACCOUNT: Kind = CATEGORIES[0];
const SECURITY: Kind = CATEGORIES[1];
const BILLING: Kind = CATEGORIES[2];

fn builtins() -> [Builtin; 13] {
    [
        builtin!("welcome", ACCOUNT, in_app),
        builtin!("verify_email", SECURITY),
        builtin!("password_reset", SECURITY),
        builtin!("password_changed", SECURITY, in_app),
        builtin!("mfa_enabled", SECURITY, in_app),
        builtin!("mfa_disabled", SECURITY, in_app),
        builtin!("mfa_recovery_code_used", SECURITY, in_app),
        builtin!("mfa_codes_locked", SECURITY, in_app),
        builtin!("org_invitation", ACCOUNT),
        builtin!("org_role_changed", ACCOUNT, in_app),
        builtin!("billing_receipt", BILLING, in_app),
        builtin!("billing_payment_failed", BILLING, in_app),
        builtin!("billing_refund", BILLING, in_app),
    ]
}

/// A rendered message: the parts its channels need.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rendered {
    pub kind: Kind,
    /// When email was asked for.
    pub email: Option<EmailParts>,
    /// Title and body of the in-app item, when in-app was asked for and
    /// the template has one.
    pub in_app: Option<(String, String)>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EmailParts {
    pub subject: String,
    pub text: String,
    pub html: String,
}

#[derive(Debug, thiserror::Error)]
pub enum TemplateError {
    #[error("no template named {0:?}")]
    Unknown(String),
    #[error("template {template}: {reason}")]
    Render { template: String, reason: String },
}

pub struct Templates {
    env: Environment<'static>,
    kinds: HashMap<String, (Kind, bool)>,
}

impl std::fmt::Debug for Templates {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Templates").field("names", &self.kinds.keys().collect::<Vec<_>>()).finish()
    }
}

impl Templates {
    /// The built-ins, each file replaced by `dir/<name>/<file>` if present.
    pub fn load(dir: Option<&Path>) -> Result<Self, String> {
        let mut env = Environment::new();
        env.set_undefined_behavior(UndefinedBehavior::Strict);
        // Values in the HTML part are escaped: a display name must not
        // become a link in an email sent from our domain.
        env.set_auto_escape_callback(|name| {
            if name.ends_with("/html") { AutoEscape::Html } else { AutoEscape::None }
        });
        let mut kinds = HashMap::new();
        for (name, kind, files, in_app) in builtins() {
            let parts = [
                ("subject", Some(files[0])),
                ("text", Some(files[1])),
                ("html", Some(files[2])),
                ("in_app", in_app),
            ];
            for (part, builtin) in parts {
                let file = match part {
                    "subject" => "subject.txt",
                    "text" => "body.txt",
                    "html" => "body.html",
                    _ => "in_app.txt",
                };
                let custom = dir.map(|d| d.join(name).join(file)).filter(|p| p.is_file());
                let source = match (custom, builtin) {
                    (Some(path), _) => {
                        std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?
                    }
                    (None, Some(text)) => text.to_owned(),
                    (None, None) => continue,
                };
                env.add_template_owned(format!("{name}/{part}"), source)
                    .map_err(|e| format!("template {name}/{file}: {e}"))?;
            }
            kinds.insert(name.to_owned(), (kind, in_app.is_some()));
        }
        Ok(Self { env, kinds })
    }

    pub fn kind(&self, name: &str) -> Option<Kind> {
        self.kinds.get(name).map(|(kind, _)| *kind)
    }

    /// Every part: the email and, if the template has one, the in-app item.
    pub fn render(&self, name: &str, data: &Value) -> Result<Rendered, TemplateError> {
        self.render_for(name, data, &[Channel::Email, Channel::InApp])
    }

    /// Only the parts `channels` need: an in-app notification neither
    /// pays for rendering an email (most of a template's work) nor needs
    /// the email's variables.
    pub fn render_for(
        &self,
        name: &str,
        data: &Value,
        channels: &[Channel],
    ) -> Result<Rendered, TemplateError> {
        let (kind, has_in_app) =
            *self.kinds.get(name).ok_or_else(|| TemplateError::Unknown(name.to_owned()))?;
        let render = |part: &str| -> Result<String, TemplateError> {
            self.env
                .get_template(&format!("{name}/{part}"))
                .and_then(|t| t.render(data))
                .map(|s| s.trim().to_owned())
                .map_err(|e| TemplateError::Render { template: name.to_owned(), reason: e.to_string() })
        };
        let in_app = if has_in_app && channels.contains(&Channel::InApp) {
            let text = render("in_app")?;
            let (title, body) = text.split_once('\n').unwrap_or((text.as_str(), ""));
            Some((title.trim().to_owned(), body.trim().to_owned()))
        } else {
            None
        };
        let email = if channels.contains(&Channel::Email) {
            Some(EmailParts { subject: render("subject")?, text: render("text")?, html: render("html")? })
        } else {
            None
        };
        Ok(Rendered { kind, email, in_app })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    impl Rendered {
        fn mail(&self) -> &EmailParts {
            self.email.as_ref().expect("the email part was rendered")
        }
    }

    #[test]
    fn every_builtin_renders_with_its_variables_and_fails_without_them() {
        let templates = Templates::load(None).expect("built-ins load");
        let data = serde_json::json!({
            "email": "ada@example.com", "display_name": "Ada", "code": "ABCD2345", "expires_in_minutes": 30,
            // billing_receipt
            "invoice_number": "7QX2KM4B-0001", "amount_paid": "USD 20.00", "paid_on": "2026-03-01",
            "plan_name": "Pro", "period_start": "2026-03-01", "period_end": "2026-04-01",
            "lines": [{ "description": "Pro (monthly)", "amount": "USD 20.00" }],
            "card": { "brand": "Visa", "last4": "4242" },
            // billing_payment_failed
            "amount_due": "USD 20.00", "reason": "your card was declined", "card_last4": "0002",
            "attempt_count": 1, "next_retry": "2026-03-04", "final": false,
            // billing_refund
            "amount_refunded": "USD 15.00",
            // mfa_recovery_code_used
            "recovery_codes_remaining": 9,
            // org_invitation, org_role_changed
            "organization_name": "Acme", "inviter_email": "grace@example.com", "role": "billing",
            "previous_role": "member", "expires_in_hours": 168,
            "accept_link": "https://app.example.com/invitations/accept?token=inv_x"
        });
        for (name, ..) in builtins() {
            let rendered = templates.render(name, &data).expect("renders");
            let mail = rendered.mail();
            assert!(!mail.subject.is_empty() && !mail.text.is_empty() && !mail.html.is_empty());
            assert!(
                templates.render(name, &serde_json::json!({})).is_err(),
                "{name} rendered without variables"
            );
        }
        let hostile =
            serde_json::json!({ "email": "a@b.co", "display_name": "<a href=\"https://evil\">x</a>" });
        let html = templates.render("welcome", &hostile).expect("renders").mail().html.clone();
        assert!(!html.contains("<a href") && html.contains("&lt;a href="), "{html}");
        let welcome = templates.render("welcome", &data).expect("renders");
        // Subjects carry no user-chosen text (a display name is an
        // attacker's headline) and no secret (a code would sit in every
        // mail log and lock-screen preview).
        assert_eq!(welcome.mail().subject, "Welcome to tenx");
        let phishing = serde_json::json!({ "email": "a@b.co", "display_name": "Your account is suspended" });
        assert_eq!(
            templates.render("welcome", &phishing).expect("renders").mail().subject,
            "Welcome to tenx"
        );
        let code = serde_json::json!({ "email": "a@b.co", "code": "ABCD2345", "expires_in_minutes": 30 });
        let verify = templates.render("verify_email", &code).expect("renders");
        assert!(!verify.mail().subject.contains("ABCD2345") && verify.mail().text.contains("ABCD2345"));
        assert_eq!(welcome.in_app.map(|(t, _)| t).as_deref(), Some("Welcome to tenx"));
    }

    #[test]
    fn a_delivery_renders_only_the_parts_of_its_channels() {
        let templates = Templates::load(None).expect("built-ins load");
        // The welcome email names the address; its in-app item does not.
        let none = serde_json::json!({});
        let in_app =
            templates.render_for("welcome", &none, &[Channel::InApp]).expect("in-app needs no email");
        assert_eq!(in_app.email, None);
        assert_eq!(in_app.in_app.map(|(t, _)| t).as_deref(), Some("Welcome to tenx"));
        assert!(
            templates.render_for("welcome", &none, &[Channel::Email]).is_err(),
            "the email needs `email`"
        );
        let data = serde_json::json!({ "email": "ada@example.com", "display_name": "Ada" });
        let email = templates.render_for("welcome", &data, &[Channel::Email]).expect("renders");
        assert_eq!(email.in_app, None);
        assert!(email.mail().text.contains("ada@example.com"), "{}", email.mail().text);
    }

    #[test]
    fn billing_templates_say_what_was_paid_or_what_failed() {
        let templates = Templates::load(None).expect("built-ins load");
        let mut receipt = serde_json::json!({
            "email": "ada@example.com", "invoice_number": "7QX2KM4B-0001", "amount_paid": "USD 19.83",
            "paid_on": "2026-03-01", "plan_name": "Pro", "period_start": "2026-03-01", "period_end": "2026-04-01",
            "lines": [
                { "description": "Pro (monthly)", "amount": "USD 20.00" },
                { "description": "Unused time on <b>Basic</b>", "amount": "USD -0.17" }
            ],
            "card": { "brand": "Visa", "last4": "4242" }
        });
        let r = templates.render("billing_receipt", &receipt).expect("renders");
        assert_eq!(r.kind, Kind { category: "billing", critical: true });
        assert_eq!(r.mail().subject, "Receipt for invoice 7QX2KM4B-0001");
        for expected in [
            "Amount paid: USD 19.83",
            "Plan: Pro",
            "Period: 2026-03-01 to 2026-04-01",
            "Pro (monthly): USD 20.00",
            "Unused time on <b>Basic</b>: USD -0.17",
            "Charged to: Visa ending in 4242",
        ] {
            assert!(r.mail().text.contains(expected), "{expected:?} in {}", r.mail().text);
        }
        assert!(
            r.mail().html.contains("Unused time on &lt;b&gt;Basic&lt;")
                && !r.mail().html.contains("<b>Basic"),
            "{}",
            r.mail().html
        );
        assert_eq!(r.in_app.as_ref().map(|(t, _)| t.as_str()), Some("Payment received"));
        // Without a plan, period or card the lines simply go.
        receipt["plan_name"] = "".into();
        receipt["card"] = serde_json::Value::Null;
        receipt["period_start"] = serde_json::Value::Null;
        let r = templates.render("billing_receipt", &receipt).expect("renders");
        assert!(
            !r.mail().text.contains("Plan:")
                && !r.mail().text.contains("Charged to")
                && !r.mail().text.contains("Period:")
        );

        let mut failed = serde_json::json!({
            "email": "ada@example.com", "invoice_number": "7QX2KM4B-0002", "amount_due": "JPY 1,490",
            "reason": "your card was declined", "plan_name": "Pro", "card_last4": "0002", "attempt_count": 1,
            "next_retry": "2026-03-04", "final": false
        });
        let r = templates.render("billing_payment_failed", &failed).expect("renders");
        assert_eq!(r.mail().subject, "Payment failed for invoice 7QX2KM4B-0002");
        assert!(r.mail().text.contains("We could not collect JPY 1,490 for invoice 7QX2KM4B-0002 (Pro plan): your card was declined (card ending in 0002)."), "{}", r.mail().text);
        assert!(r.mail().text.contains("We will try again on 2026-03-04."), "{}", r.mail().text);
        assert!(!r.mail().text.contains("last automatic attempt"));
        failed["next_retry"] = serde_json::Value::Null;
        let r = templates.render("billing_payment_failed", &failed).expect("renders");
        assert!(
            !r.mail().text.contains("try again") && r.mail().text.contains("pay the invoice"),
            "{}",
            r.mail().text
        );
        failed["final"] = true.into();
        let r = templates.render("billing_payment_failed", &failed).expect("renders");
        assert_eq!(r.mail().subject, "Final notice: payment for invoice 7QX2KM4B-0002 failed");
        assert!(
            r.mail()
                .text
                .contains("This was our last automatic attempt, so your subscription has been stopped.")
        );
        assert_eq!(r.in_app.map(|(t, _)| t).as_deref(), Some("Final notice: payment failed"));
    }
}
