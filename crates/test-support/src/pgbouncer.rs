use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::Context;
use tokio_postgres::NoTls;

use crate::pg::{pg_host, pg_port};
use crate::unique_suffix;

/// One database a [`TestPgBouncer`] serves, under the name `alias`.
#[derive(Debug, Clone)]
pub struct Bounced {
    pub alias: String,
    /// The Postgres database it stands for.
    pub database: String,
    /// On the replica rather than the primary.
    pub replica: bool,
    /// The schema every server connection is put in (`connect_query`),
    /// as `database.pooling = "transaction"` requires; `None` leaves it.
    pub schema: Option<String>,
}

/// A PgBouncer of this test's own in transaction mode, in front of the
/// test's databases: the real `pgbouncer` (Debian's 1.18 here, which keeps
/// no named prepared statement across transactions and takes no startup
/// options), two server connections per database so that every client
/// connection shares them. Stopped on `Drop`.
#[derive(Debug)]
pub struct TestPgBouncer {
    child: Child,
    port: u16,
    dir: PathBuf,
    binary: PathBuf,
}

impl TestPgBouncer {
    /// Starts it; the binary is `TENX_TEST_PGBOUNCER`, else `pgbouncer` on
    /// the PATH or in `/usr/sbin` (`make deps` installs it).
    pub async fn start(databases: &[Bounced]) -> anyhow::Result<Self> {
        let binary =
            binary().context("no pgbouncer binary (make deps installs it; or set TENX_TEST_PGBOUNCER)")?;
        let dir = std::env::temp_dir().join(format!("tenx-pgbouncer-{}", unique_suffix()));
        std::fs::create_dir_all(&dir)?;
        std::fs::write(dir.join("userlist.txt"), "\"postgres\" \"\"\n")?;
        let mut last_error = None;
        // The port is picked free and then handed over: another process
        // may take it in between, so a start that fails is retried.
        for _ in 0..5 {
            let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
            std::fs::write(dir.join("pgbouncer.ini"), ini(databases, port, &dir))?;
            let child = command(&binary, &dir)
                .stderr(std::fs::File::create(dir.join("pgbouncer.log"))?)
                .spawn()
                .with_context(|| format!("starting {}", binary.display()))?;
            let mut bouncer = Self { child, port, dir: dir.clone(), binary: binary.clone() };
            match bouncer.ready().await {
                Ok(()) => return Ok(bouncer),
                Err(error) => {
                    let log = std::fs::read_to_string(dir.join("pgbouncer.log")).unwrap_or_default();
                    last_error = Some(error.context(log));
                    let _ = bouncer.child.kill();
                    let _ = bouncer.child.wait();
                }
            }
        }
        Err(last_error.unwrap_or_else(|| anyhow::anyhow!("pgbouncer did not start")))
    }

    /// SIGKILL, then the same PgBouncer again on the same port: every
    /// client connection and transaction through it is cut.
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            self.child = command(&self.binary, &self.dir)
                .stderr(std::fs::File::create(self.dir.join("pgbouncer.log"))?)
                .spawn()?;
            match self.ready().await {
                Ok(()) => return Ok(()),
                // Its port may linger a moment after the kill.
                Err(_) if tokio::time::Instant::now() < deadline => {
                    let _ = self.child.kill();
                    let _ = self.child.wait();
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(error) => return Err(error),
            }
        }
    }

    /// The URL of database `alias` through this PgBouncer.
    pub fn url(&self, alias: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{alias}", self.port)
    }

    /// PgBouncer's `SHOW STATS` per database alias: transactions it has
    /// carried to a server.
    pub async fn transactions(&self, alias: &str) -> anyhow::Result<u64> {
        let (client, connection) = tokio_postgres::connect(&self.url("pgbouncer"), NoTls).await?;
        tokio::spawn(connection);
        for message in client.simple_query("SHOW STATS").await? {
            if let tokio_postgres::SimpleQueryMessage::Row(row) = message
                && row.get("database") == Some(alias)
            {
                return Ok(row.get("total_xact_count").unwrap_or("0").parse()?);
            }
        }
        Ok(0)
    }

    async fn ready(&mut self) -> anyhow::Result<()> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = self.child.try_wait()? {
                anyhow::bail!("pgbouncer exited: {status}");
            }
            match tokio_postgres::connect(&self.url("pgbouncer"), NoTls).await {
                Ok((client, connection)) => {
                    tokio::spawn(connection);
                    client.simple_query("SHOW VERSION").await?;
                    return Ok(());
                }
                Err(_) if tokio::time::Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(error) => return Err(error.into()),
            }
        }
    }
}

impl Drop for TestPgBouncer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// `pgbouncer <dir>/pgbouncer.ini`, as `nobody` when run as root.
fn command(binary: &std::path::Path, dir: &std::path::Path) -> Command {
    let mut command = Command::new(binary);
    if running_as_root() {
        // PgBouncer refuses to run as root; it drops to this user.
        command.args(["--user", "nobody"]);
    }
    command.arg(dir.join("pgbouncer.ini")).stdin(Stdio::null()).stdout(Stdio::null());
    command
}

fn running_as_root() -> bool {
    use std::os::unix::fs::MetadataExt;
    // /proc/self belongs to the process's effective user.
    std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

fn binary() -> Option<PathBuf> {
    if let Ok(path) = std::env::var("TENX_TEST_PGBOUNCER") {
        return Some(path.into());
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin")])
        .map(|dir| dir.join("pgbouncer"))
        .find(|candidate| candidate.is_file())
}

fn ini(databases: &[Bounced], port: u16, dir: &std::path::Path) -> String {
    let host = pg_host();
    let mut ini = String::from("[databases]\n");
    for db in databases {
        let server_port = pg_port(db.replica);
        ini.push_str(&format!("{} = host={host} port={server_port} dbname={}", db.alias, db.database));
        if let Some(schema) = &db.schema {
            ini.push_str(&format!(" connect_query='SET search_path TO {schema}, public'"));
        }
        ini.push('\n');
    }
    ini.push_str(&format!(
        "[pgbouncer]\n\
         listen_addr = 127.0.0.1\n\
         listen_port = {port}\n\
         unix_socket_dir =\n\
         auth_type = trust\n\
         auth_file = {auth}\n\
         admin_users = postgres\n\
         pool_mode = transaction\n\
         default_pool_size = 2\n\
         max_client_conn = 500\n\
         server_reset_query =\n\
         ignore_startup_parameters = extra_float_digits\n",
        auth = dir.join("userlist.txt").display()
    ));
    ini
}
