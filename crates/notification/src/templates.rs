//! Message templates: subject, text and HTML bodies, and an optional
//! in-app title/body, rendered with minijinja. A variable a template uses
//! but the data lacks is an error, never a blank in a sent message.

use std::collections::HashMap;
use std::path::Path;

use minijinja::{AutoEscape, Environment, UndefinedBehavior};
use serde_json::Value;

/// A template's category and whether it is critical (never muted).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Kind {
    pub category: &'static str,
    pub critical: bool,
}

/// Categories users can mute (critical ones excepted).
pub const CATEGORIES: [Kind; 2] =
    [Kind { category: "account", critical: false }, Kind { category: "security", critical: true }];

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

fn builtins() -> [Builtin; 4] {
    [
        builtin!("welcome", ACCOUNT, in_app),
        builtin!("verify_email", SECURITY),
        builtin!("password_reset", SECURITY),
        builtin!("password_changed", SECURITY, in_app),
    ]
}

/// A rendered message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rendered {
    pub kind: Kind,
    pub subject: String,
    pub text: String,
    pub html: String,
    /// Title and body of the in-app item, when the template has one.
    pub in_app: Option<(String, String)>,
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

    pub fn render(&self, name: &str, data: &Value) -> Result<Rendered, TemplateError> {
        let (kind, has_in_app) =
            *self.kinds.get(name).ok_or_else(|| TemplateError::Unknown(name.to_owned()))?;
        let render = |part: &str| -> Result<String, TemplateError> {
            self.env
                .get_template(&format!("{name}/{part}"))
                .and_then(|t| t.render(data))
                .map(|s| s.trim().to_owned())
                .map_err(|e| TemplateError::Render { template: name.to_owned(), reason: e.to_string() })
        };
        let in_app = if has_in_app {
            let text = render("in_app")?;
            let (title, body) = text.split_once('\n').unwrap_or((text.as_str(), ""));
            Some((title.trim().to_owned(), body.trim().to_owned()))
        } else {
            None
        };
        Ok(Rendered {
            kind,
            subject: render("subject")?,
            text: render("text")?,
            html: render("html")?,
            in_app,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_builtin_renders_with_its_variables_and_fails_without_them() {
        let templates = Templates::load(None).expect("built-ins load");
        let data = serde_json::json!({
            "email": "ada@example.com", "display_name": "Ada", "code": "ABCD2345", "expires_in_minutes": 30
        });
        for (name, ..) in builtins() {
            let rendered = templates.render(name, &data).expect("renders");
            assert!(!rendered.subject.is_empty() && !rendered.text.is_empty() && !rendered.html.is_empty());
            assert!(
                templates.render(name, &serde_json::json!({})).is_err(),
                "{name} rendered without variables"
            );
        }
        let hostile =
            serde_json::json!({ "email": "a@b.co", "display_name": "<a href=\"https://evil\">x</a>" });
        let html = templates.render("welcome", &hostile).expect("renders").html;
        assert!(!html.contains("<a href") && html.contains("&lt;a href="), "{html}");
        let welcome = templates.render("welcome", &data).expect("renders");
        assert_eq!(welcome.subject, "Welcome to tenx, Ada!");
        assert_eq!(welcome.in_app.map(|(t, _)| t).as_deref(), Some("Welcome to tenx"));
    }
}
