//! Test support: start `specrun serve` on an ephemeral loopback port and talk to it (shared by
//! tests/serve.rs and tests/real_models.rs).
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

pub fn repo(p: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(p)
}

/// A running server; killed when dropped.
pub struct Server {
    pub child: Child,
    pub base: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Start `specrun serve --port 0 ARGS…` and wait until `/health` says the models are loaded.
pub fn start(args: &[&str], env: &[(&str, &str)]) -> Server {
    let mut s = start_loading(args, env);
    let deadline = std::time::Instant::now() + Duration::from_secs(600);
    loop {
        match agent().get(&format!("{}/health", s.base)).call() {
            Ok(r) if r.status() == 200 => return s,
            _ if std::time::Instant::now() > deadline => panic!("the server did not become ready"),
            _ => {
                if let Ok(Some(status)) = s.child.try_wait() {
                    panic!("the server ended while loading: {status}");
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
}

/// Start `specrun serve --port 0 ARGS…` and return as soon as it listens (the port opens
/// before the models load).
pub fn start_loading(args: &[&str], env: &[(&str, &str)]) -> Server {
    let mut child = Command::new(assert_cmd::cargo::cargo_bin("specrun"))
        .args(["serve", "--port", "0"])
        .args(args)
        .env_remove("SPECRUN_API_KEY")
        .envs(env.iter().copied())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let mut seen = Vec::new();
    let base = loop {
        let Some(Ok(line)) = lines.next() else {
            panic!("the server ended before it listened:\n{}", seen.join("\n"));
        };
        if let Some(rest) = line.split("listening on ").nth(1) {
            break rest.split_whitespace().next().unwrap().to_string();
        }
        seen.push(line);
    };
    // keep draining stderr so that the server never blocks on it
    std::thread::spawn(move || for _ in lines {});
    Server { child, base }
}

pub fn agent() -> ureq::Agent {
    ureq::AgentBuilder::new().timeout(Duration::from_secs(60)).build()
}

/// POST JSON; the status and the body as JSON (or text for SSE).
pub fn post(s: &Server, path: &str, body: &str) -> (u16, String) {
    post_with(s, path, body, &[])
}

pub fn post_with(s: &Server, path: &str, body: &str, headers: &[(&str, &str)]) -> (u16, String) {
    let mut req = agent().post(&format!("{}{path}", s.base)).set("Content-Type", "application/json");
    for (k, v) in headers {
        req = req.set(k, v);
    }
    match req.send_string(body) {
        Ok(r) => (r.status(), r.into_string().unwrap()),
        Err(ureq::Error::Status(code, r)) => (code, r.into_string().unwrap()),
        Err(e) => panic!("{path}: {e}"),
    }
}

pub fn json(text: &str) -> serde_json::Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("{e}: {text}"))
}
