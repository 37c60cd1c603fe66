//! Helpers for tests and benchmarks: a real `redis-server` on a free loopback port.
//!
//! Used by this crate's tests, by `wallet-cli/tests/mediator_*.rs` and by the benchmark;
//! not meant for production code.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A `redis-server` child with AOF persistence and `appendfsync always` (the durability
/// setting spec/mediator.md §5 requires), killed on drop.
pub struct RedisServer {
    child: Child,
    /// `redis://127.0.0.1:PORT`
    pub url: String,
    _dir: TempDir,
}

/// A directory removed on drop (kept dependency-free on purpose).
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

impl RedisServer {
    /// Starts `redis-server` (from `$PATH`) and waits until it accepts connections.
    ///
    /// # Errors
    /// `redis-server` is missing or does not come up within 10 s.
    pub fn start() -> std::io::Result<Self> {
        let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let dir = std::env::temp_dir().join(format!(
            "mpc-did-redis-{}-{port}-{}",
            std::process::id(),
            super::store::now_ms()
        ));
        std::fs::create_dir_all(&dir)?;
        let dir = TempDir(dir);
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args([
                "--save",
                "",
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
            ])
            .arg("--dir")
            .arg(&dir.0)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        let mut server = Self {
            child,
            url: format!("redis://127.0.0.1:{port}"),
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return Ok(server);
            }
            if Instant::now() > deadline {
                let _ = server.child.kill();
                return Err(std::io::Error::other("redis-server did not start"));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
