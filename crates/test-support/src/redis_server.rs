use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// A Redis server of the test's own (`redis-server`, no persistence) on a
/// free loopback port, which the test can kill (SIGKILL) and start again
/// on the same port: Redis failing for this test alone. Stopped on `Drop`.
#[derive(Debug)]
pub struct TestRedisServer {
    port: u16,
    child: Option<Child>,
}

impl TestRedisServer {
    pub async fn start() -> anyhow::Result<Self> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let mut server = Self { port, child: None };
        server.restart().await?;
        Ok(server)
    }

    /// `redis://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// SIGKILL: gone at once, with every key.
    pub fn kill(&mut self) -> anyhow::Result<()> {
        if let Some(mut child) = self.child.take() {
            child.kill()?;
            child.wait()?;
        }
        Ok(())
    }

    /// Starts it (again) on its port, empty; returns once it answers.
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        self.kill()?;
        let child = Command::new("redis-server")
            .args([
                "--port",
                &self.port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| anyhow::anyhow!("starting redis-server (make deps installs it): {e}"))?;
        self.child = Some(child);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let answered = async {
                let client = redis::Client::open(self.url())?;
                let mut conn = client.get_multiplexed_async_connection().await?;
                redis::cmd("PING").query_async::<String>(&mut conn).await
            };
            match answered.await {
                Ok(_) => return Ok(()),
                Err(_) if tokio::time::Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Err(error) => anyhow::bail!("redis-server on {} did not answer: {error}", self.port),
            }
        }
    }
}

impl Drop for TestRedisServer {
    fn drop(&mut self) {
        let _ = self.kill();
    }
}
