use crate::{cleanup_blocking, env_or, unique_suffix};

/// A Redis key prefix of this test's own; its keys are deleted on `Drop`.
#[derive(Debug)]
pub struct TestRedis {
    url: String,
    prefix: String,
}

impl TestRedis {
    pub fn new() -> Self {
        Self {
            url: env_or("TENX_TEST_REDIS_URL", "redis://127.0.0.1:6379"),
            prefix: format!("{}:", unique_suffix()),
        }
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    /// Every key the test writes starts with this (ends in `:`).
    pub fn prefix(&self) -> &str {
        &self.prefix
    }
}

impl Default for TestRedis {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for TestRedis {
    fn drop(&mut self) {
        let url = self.url.clone();
        let pattern = format!("{}*", self.prefix);
        cleanup_blocking("redis keys", move || async move {
            let client = redis::Client::open(url)?;
            let mut conn = client.get_multiplexed_async_connection().await?;
            let mut cursor: u64 = 0;
            loop {
                let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
                    .arg(cursor)
                    .arg("MATCH")
                    .arg(&pattern)
                    .arg("COUNT")
                    .arg(500)
                    .query_async(&mut conn)
                    .await?;
                if !keys.is_empty() {
                    let _: () = redis::cmd("DEL").arg(&keys).query_async(&mut conn).await?;
                }
                if next == 0 {
                    return Ok(());
                }
                cursor = next;
            }
        });
    }
}
