//! moto's S3-compatible server on loopback, started from the project's pinned Python
//! environment (`scripts/pyenv.sh`), for the object-storage test and benchmark.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running moto server, stopped when dropped.
pub struct Moto {
    child: Child,
    /// Its loopback port.
    pub port: u16,
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The project's Python (set up on first use, as the test command does).
pub fn python() -> PathBuf {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let o = Command::new("bash")
        .arg(root.join("scripts/pyenv.sh"))
        .arg(root.join("scripts/requirements-test.txt"))
        .output()
        .expect("run scripts/pyenv.sh");
    assert!(
        o.status.success(),
        "scripts/pyenv.sh failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    PathBuf::from(String::from_utf8_lossy(&o.stdout).trim())
}

fn http(port: u16, request: &str) -> std::io::Result<String> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    s.write_all(request.as_bytes())?;
    let mut buf = [0u8; 512];
    let n = s.read(&mut buf)?;
    Ok(String::from_utf8_lossy(&buf[..n]).into_owned())
}

impl Moto {
    /// Starts a server on a free port and waits until it answers.
    pub fn start() -> Moto {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let child = Command::new(python())
            .args([
                "-m",
                "moto.server",
                "-H",
                "127.0.0.1",
                "-p",
                &port.to_string(),
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start moto");
        let moto = Moto { child, port };
        let t0 = Instant::now();
        while http(port, "GET / HTTP/1.0\r\n\r\n").is_err() {
            assert!(
                t0.elapsed() < Duration::from_secs(60),
                "moto did not start on port {port}"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        moto
    }

    /// Creates a bucket (one unauthenticated PUT on moto).
    pub fn bucket(&self, name: &str) {
        let port = self.port;
        let r = http(
            port,
            &format!("PUT /{name} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"),
        )
        .expect("create bucket");
        assert!(r.starts_with("HTTP/1.1 200"), "create bucket: {r}");
    }

    /// The environment that points `s3://` URLs at this server.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            (
                "AWS_ENDPOINT_URL",
                format!("http://127.0.0.1:{}", self.port),
            ),
            ("AWS_ALLOW_HTTP", "true".into()),
            ("AWS_ACCESS_KEY_ID", "test".into()),
            ("AWS_SECRET_ACCESS_KEY", "test".into()),
            ("AWS_REGION", "us-east-1".into()),
        ]
    }
}
