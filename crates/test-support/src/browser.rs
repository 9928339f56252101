//! A headless Chromium driven over WebDriver (Debian's `chromium` and
//! `chromium-driver`, which `make test` installs), for page tests: load a
//! page, type, click, read text, take a screenshot.
//!
//! The few W3C WebDriver commands it needs are JSON over HTTP/1.1 to the
//! chromedriver it starts; a WebDriver client crate would bring a second
//! HTTP stack for six requests. Missing binaries are an error, never a
//! skip. `TENX_CHROMEDRIVER` and `TENX_CHROMIUM` move them.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::process::{Child, Command};

/// The W3C key of an element reference in WebDriver's JSON.
const ELEMENT_KEY: &str = "element-6066-11e4-a52e-4f735466cecf";

/// One browser session; [`Browser::close`] ends it (Drop kills the driver,
/// which takes Chromium with it).
#[derive(Debug)]
pub struct Browser {
    driver: Child,
    addr: SocketAddr,
    session: String,
}

/// An element of the page, as WebDriver names it.
#[derive(Debug, Clone)]
pub struct Element(String);

impl Browser {
    /// Starts chromedriver on a free port and a headless Chromium session.
    pub async fn start() -> anyhow::Result<Self> {
        let driver_bin = std::env::var("TENX_CHROMEDRIVER").unwrap_or_else(|_| "chromedriver".into());
        let chromium = std::env::var("TENX_CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
        let port = {
            let probe = std::net::TcpListener::bind("127.0.0.1:0")?;
            probe.local_addr()?.port()
        };
        let driver = Command::new(&driver_bin)
            .arg(format!("--port={port}"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| {
                format!("starting {driver_bin} (Debian's chromium-driver; `make test` installs it)")
            })?;
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        let mut browser = Self { driver, addr, session: String::new() };
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            match browser.request("GET", "/status", None).await {
                Ok(status) if status["ready"] == json!(true) => break,
                _ if tokio::time::Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(100)).await
                }
                outcome => anyhow::bail!("chromedriver never became ready: {outcome:?}"),
            }
        }
        let capabilities = json!({ "capabilities": { "alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": chromium,
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                         "--window-size=1400,1600", "--no-first-run"],
            },
        }}});
        let created = browser.request("POST", "/session", Some(capabilities)).await?;
        browser.session = created["sessionId"]
            .as_str()
            .ok_or_else(|| anyhow::anyhow!("no session id in {created}"))?
            .to_owned();
        Ok(browser)
    }

    fn path(&self, rest: &str) -> String {
        format!("/session/{}{rest}", self.session)
    }

    pub async fn goto(&self, url: &str) -> anyhow::Result<()> {
        self.request("POST", &self.path("/url"), Some(json!({ "url": url }))).await.map(drop)
    }

    /// The first element matching the CSS `selector`, if any now.
    pub async fn find(&self, selector: &str) -> anyhow::Result<Option<Element>> {
        let body = json!({ "using": "css selector", "value": selector });
        let found = self.request("POST", &self.path("/elements"), Some(body)).await?;
        Ok(found
            .as_array()
            .and_then(|a| a.first())
            .and_then(|e| e[ELEMENT_KEY].as_str())
            .map(|id| Element(id.to_owned())))
    }

    /// Waits up to `timeout` for an element matching `selector`.
    pub async fn wait_for(&self, selector: &str, timeout: Duration) -> anyhow::Result<Element> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Some(element) = self.find(selector).await? {
                return Ok(element);
            }
            anyhow::ensure!(
                tokio::time::Instant::now() < deadline,
                "no `{selector}` on the page within {timeout:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits up to `timeout` until no element matches `selector`.
    pub async fn wait_gone(&self, selector: &str, timeout: Duration) -> anyhow::Result<()> {
        let deadline = tokio::time::Instant::now() + timeout;
        while self.find(selector).await?.is_some() {
            anyhow::ensure!(
                tokio::time::Instant::now() < deadline,
                "`{selector}` still on the page after {timeout:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Ok(())
    }

    pub async fn click(&self, element: &Element) -> anyhow::Result<()> {
        self.request("POST", &self.path(&format!("/element/{}/click", element.0)), Some(json!({})))
            .await
            .map(drop)
    }

    pub async fn type_into(&self, element: &Element, text: &str) -> anyhow::Result<()> {
        let body = json!({ "text": text });
        self.request("POST", &self.path(&format!("/element/{}/value", element.0)), Some(body)).await.map(drop)
    }

    /// The element's rendered text.
    pub async fn text(&self, element: &Element) -> anyhow::Result<String> {
        let text = self.request("GET", &self.path(&format!("/element/{}/text", element.0)), None).await?;
        Ok(text.as_str().unwrap_or_default().to_owned())
    }

    /// The whole page's text.
    pub async fn page_text(&self) -> anyhow::Result<String> {
        let body = self.wait_for("body", Duration::from_secs(5)).await?;
        self.text(&body).await
    }

    /// A PNG of the viewport.
    pub async fn screenshot(&self) -> anyhow::Result<Vec<u8>> {
        use base64::Engine;
        let encoded = self.request("GET", &self.path("/screenshot"), None).await?;
        Ok(base64::engine::general_purpose::STANDARD.decode(encoded.as_str().unwrap_or_default())?)
    }

    /// Ends the session (Chromium quits) and stops the driver.
    pub async fn close(mut self) -> anyhow::Result<()> {
        let ended = self.request("DELETE", &self.path(""), None).await;
        let _ = self.driver.kill().await;
        ended.map(drop)
    }

    /// One WebDriver command: its `value`, or its error as an error.
    async fn request(&self, method: &str, path: &str, body: Option<Value>) -> anyhow::Result<Value> {
        let body = body.map(|b| b.to_string()).unwrap_or_default();
        let mut stream = tokio::net::TcpStream::connect(self.addr).await?;
        let head = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json; charset=utf-8\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n",
            self.addr,
            body.len()
        );
        stream.write_all(head.as_bytes()).await?;
        stream.write_all(body.as_bytes()).await?;
        // chromedriver says `Connection: close` but keeps the socket open:
        // read the head, then exactly Content-Length bytes.
        let read = async {
            let mut response = Vec::new();
            let mut chunk = [0u8; 16 * 1024];
            loop {
                if let Some(end) = response.windows(4).position(|w| w == b"\r\n\r\n") {
                    let head = String::from_utf8_lossy(&response[..end]).into_owned();
                    let length = head
                        .lines()
                        .filter_map(|l| l.split_once(':'))
                        .find(|(k, _)| k.trim().eq_ignore_ascii_case("content-length"))
                        .and_then(|(_, v)| v.trim().parse::<usize>().ok())
                        .unwrap_or(0);
                    if response.len() >= end + 4 + length {
                        let body = String::from_utf8(response[end + 4..end + 4 + length].to_vec())?;
                        return anyhow::Ok((head, body));
                    }
                }
                let n = stream.read(&mut chunk).await?;
                anyhow::ensure!(n > 0, "connection closed mid-answer");
                response.extend_from_slice(&chunk[..n]);
            }
        };
        let (head, body) = tokio::time::timeout(Duration::from_secs(60), read)
            .await
            .with_context(|| format!("WebDriver {method} {path}: no answer"))??;
        let status: u16 = head.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
        let value: Value = serde_json::from_str(&body)
            .with_context(|| format!("WebDriver {method} {path}: {status} {body}"))?;
        let value = value.get("value").cloned().unwrap_or(Value::Null);
        anyhow::ensure!(status == 200, "WebDriver {method} {path}: {status} {value}");
        Ok(value)
    }
}

/// Where a test keeps what it made for a person to look at (a
/// screenshot): `target/test-artifacts/<name>`, created as needed.
pub fn artifact(name: &str) -> anyhow::Result<PathBuf> {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target"));
    let dir = target.join("test-artifacts");
    std::fs::create_dir_all(&dir)?;
    Ok(dir.join(name))
}
