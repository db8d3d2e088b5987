//! The real simulator binary on an ephemeral loopback port, for the HTTP tests (`http.rs`,
//! `shapes.rs`); each adds the requests it needs as methods of its own.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use reqwest::blocking::Client;

pub struct Server {
    pub child: Child,
    pub base: String,
    pub client: Client,
}

impl Server {
    /// Starts the binary with `args` and waits for its "listening on" line.
    pub fn start(args: &[&str]) -> Server {
        let mut child = Command::new(env!("CARGO_BIN_EXE_orders_sync_simulator"))
            .args(["--listen", "127.0.0.1:0"])
            .args(args)
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn simulator");
        let stdout = child.stdout.take().expect("stdout");
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line).expect("read listening line");
        let addr = line
            .trim_end()
            .strip_prefix("listening on ")
            .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
            .to_owned();
        assert!(addr.starts_with("127.0.0.1:") && !addr.ends_with(":0"), "{addr}");
        Server {
            child,
            base: format!("http://{addr}"),
            client: Client::builder().timeout(Duration::from_secs(30)).build().expect("client"),
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        // Only our own child; harmless if it already exited.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
