//! A mediator with a private CA, as an operator deploys one (issue 18; spec/mediator.md §10,
//! spec/identity.md §3.4): the party CLI — `mediator register`, `send`, `inbox`, `inbox
//! --watch` (live WebSocket over wss://) and a relay-only `pipe` (relay over wss://) —
//! works with `--ca-cert` / `MPC_DID_CA_CERT` and fails without, with an error that names
//! the flag. Three deployments, each following README "Running a public mediator":
//! 1. built-in TLS (`--tls-cert/--tls-key`, certificates made with the README's openssl
//!    commands), including a SIGHUP certificate reload;
//! 2. the shipped `deploy/Caddyfile` with `tls internal` (Caddy's own private CA);
//! 3. the shipped `deploy/nginx.conf` (both `/ws` and `/relay` upgraded).
//!
//! Needs `openssl`, `caddy` and `nginx` (test.sh installs them): missing ones fail under
//! `MPC_DID_REQUIRE_NETNS=1` / `MPC_DID_REQUIRE_INTEROP=1` and are SKIPPED otherwise.
#![allow(clippy::unwrap_used)]

mod common;

use std::io::{Read as _, Write as _};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{bin, mediator_bin, ok, skipped, wait_bounded, wait_until};

/// A mediator process started with `args`; its start-up line.
struct Med {
    child: Child,
    line: serde_json::Value,
}

impl Med {
    fn start(data: &Path, args: &[&str]) -> Self {
        let mut child = Command::new(mediator_bin())
            .args([
                "--log",
                "warn",
                "--admin-listen",
                "127.0.0.1:0",
                "--no-stun",
                "--data",
            ])
            .arg(data)
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let mut line = String::new();
        std::io::BufRead::read_line(
            &mut std::io::BufReader::new(child.stdout.take().unwrap()),
            &mut line,
        )
        .unwrap();
        let line = serde_json::from_str(&line).unwrap_or_else(|e| panic!("{line:?}: {e}"));
        Self { child, line }
    }

    fn get(&self, k: &str) -> String {
        self.line[k].as_str().unwrap().to_owned()
    }
}

impl Drop for Med {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A child killed on drop (Caddy, nginx).
struct Guard(Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn required() -> bool {
    ["MPC_DID_REQUIRE_NETNS", "MPC_DID_REQUIRE_INTEROP"]
        .iter()
        .any(|v| std::env::var(v).is_ok_and(|x| x == "1"))
}

/// Whether `tool` runs; if not, fails under the REQUIRE variables, else prints SKIPPED.
fn have(tool: &str) -> bool {
    let found = Command::new(tool)
        .arg("-v")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok()
        || Command::new(tool)
            .arg("version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok();
    if !found {
        assert!(!required(), "{tool} is required (test.sh installs it)");
        skipped(&format!("{tool} is not installed"));
    }
    found
}

fn sh(script: &str, dir: &Path) {
    let out = Command::new("sh")
        .arg("-ec")
        .arg(script)
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{script}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The README's commands for a private CA and a server certificate for `localhost` /
/// 127.0.0.1 (README "Running a public mediator", TLS).
fn make_ca(dir: &Path) {
    sh(
        "openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 3650 \
           -subj '/CN=mpc-did test CA' -keyout ca.key -out ca.pem 2>/dev/null",
        dir,
    );
    make_leaf(dir, "server");
}

fn make_leaf(dir: &Path, name: &str) {
    sh(
        &format!(
            "openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
               -subj '/CN=localhost' -keyout {name}.key -out {name}.csr 2>/dev/null
             printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\\nextendedKeyUsage=serverAuth\\n' > {name}.ext
             openssl x509 -req -in {name}.csr -CA ca.pem -CAkey ca.key -CAcreateserial \
               -days 825 -extfile {name}.ext -out {name}.pem 2>/dev/null"
        ),
        dir,
    );
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A wallet with identity `name`.
fn wallet(name: &str) -> (tempfile::TempDir, String) {
    let h = tempfile::tempdir().unwrap();
    let did = mpc_did_wallet::Wallet::open(h.path())
        .unwrap()
        .create_identity(name, mpc_did_wallet::Method::Key)
        .unwrap()
        .did;
    (h, did)
}

/// The party CLI against a mediator whose certificate chains to `ca`: refused without
/// it (the error names --ca-cert), then register (flag and environment), send, inbox,
/// inbox --watch over wss://, and a relay-only pipe over wss:// — all with the CA.
fn party_cli_works_only_with_the_ca(invitation: &str, ca: &Path) {
    let (a, a_did) = wallet("alice");
    let (b, b_did) = wallet("bob");
    let ca = ca.to_str().unwrap();

    // Without the CA: a clear error naming the flag.
    let out = common::mpc_did(a.path(), &["mediator", "register", invitation]);
    assert!(
        !out.status.success(),
        "register without --ca-cert succeeded"
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--ca-cert") && err.contains("MPC_DID_CA_CERT"),
        "error does not name the flag: {err}"
    );
    assert!(!err.contains("panicked"), "{err}");

    // With it: the global flag, and the environment variable.
    ok(
        a.path(),
        &["--ca-cert", ca, "mediator", "register", invitation],
    );
    let out = common::cmd(b.path(), &["mediator", "register", invitation])
        .env("MPC_DID_CA_CERT", ca)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "register with MPC_DID_CA_CERT: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    // send + inbox (HTTPS).
    ok(
        a.path(),
        &[
            "--ca-cert",
            ca,
            "send",
            &b_did,
            "--body",
            r#"{"n":1}"#,
            "--via",
            invitation,
        ],
    );
    let inbox = ok(b.path(), &["--ca-cert", ca, "--json", "inbox"]);
    assert!(inbox.contains("\"n\":1"), "inbox: {inbox}");

    // inbox --watch (live delivery over wss://).
    let watch = common::cmd(
        b.path(),
        &["--ca-cert", ca, "--json", "inbox", "--watch", "--max", "1"],
    )
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .spawn()
    .unwrap();
    ok(
        a.path(),
        &[
            "--ca-cert",
            ca,
            "send",
            &b_did,
            "--body",
            r#"{"n":2}"#,
            "--via",
            invitation,
        ],
    );
    let out = wait_bounded(watch, Duration::from_secs(30));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && text.contains("\"n\":2"),
        "inbox --watch: {text} {}",
        String::from_utf8_lossy(&out.stderr)
    );

    // A relay-only pipe in both directions (relay over wss://).
    let url = invitation.split("/oob").next().unwrap().to_owned();
    let spawn = |home: &Path, peer: &str| {
        bin()
            .arg("--home")
            .arg(home)
            .args(["--ca-cert", ca, "pipe", peer, "--peer-mediator", &url])
            .args(["--listen", "127.0.0.1:0", "--timeout", "30", "--relay-only"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let mut pa = spawn(a.path(), &b_did);
    let mut pb = spawn(b.path(), &a_did);
    let mut ia = pa.stdin.take().unwrap();
    let mut ib = pb.stdin.take().unwrap();
    ia.write_all(b"from alice through the relay\n").unwrap();
    ib.write_all(b"from bob through the relay\n").unwrap();
    drop((ia, ib));
    let oa = wait_bounded(pa, Duration::from_secs(60));
    let ob = wait_bounded(pb, Duration::from_secs(60));
    assert!(
        oa.status.success() && ob.status.success(),
        "pipe: {} / {}",
        String::from_utf8_lossy(&oa.stderr),
        String::from_utf8_lossy(&ob.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&ob.stdout),
        "from alice through the relay\n"
    );
    assert_eq!(
        String::from_utf8_lossy(&oa.stdout),
        "from bob through the relay\n"
    );
}

/// The serial number of the certificate `addr` presents.
fn served_serial(addr: &str, dir: &Path) -> String {
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "openssl s_client -connect {addr} -servername localhost </dev/null 2>/dev/null \
             | openssl x509 -noout -serial"
        ))
        .current_dir(dir)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

fn file_serial(pem: &Path) -> String {
    let out = Command::new("openssl")
        .args(["x509", "-noout", "-serial", "-in"])
        .arg(pem)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// Built-in TLS with a private CA; SIGHUP swaps the certificate without a restart.
#[test]
fn builtin_tls_with_a_private_ca() {
    if !have("openssl") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    make_ca(dir.path());
    let data = dir.path().join("data");
    let cert = dir.path().join("server.pem");
    let key = dir.path().join("server.key");
    let m = Med::start(
        &data,
        &[
            "--listen",
            "127.0.0.1:0",
            "--tls-cert",
            cert.to_str().unwrap(),
            "--tls-key",
            key.to_str().unwrap(),
        ],
    );
    let addr = m.get("addr");
    assert!(m.get("invitation_url").starts_with("https://127.0.0.1:"));
    party_cli_works_only_with_the_ca(&m.get("invitation_url"), &dir.path().join("ca.pem"));

    // The wallet's own trust setting: ca-certs.pem in the wallet directory.
    let (c, _) = wallet("carol");
    std::fs::copy(dir.path().join("ca.pem"), c.path().join("ca-certs.pem")).unwrap();
    ok(
        c.path(),
        &["mediator", "register", &m.get("invitation_url")],
    );

    // did:web over the same TLS: the mediator serves its own (did:key) document at
    // /.well-known/did.json, so with the CA the fetch succeeds and the id check refuses it;
    // without the CA it fails at TLS, naming the flag.
    let port = addr.rsplit(':').next().unwrap();
    let did_web = format!("did:web:localhost%3A{port}");
    let ca = dir.path().join("ca.pem");
    let with = common::mpc_did(
        c.path(),
        &[
            "--ca-cert",
            ca.to_str().unwrap(),
            "resolve",
            &did_web,
            "--allow-private-hosts",
        ],
    );
    let err = String::from_utf8_lossy(&with.stderr);
    assert!(err.contains("does not match the resolved DID"), "{err}");
    let (d, _) = wallet("dave");
    let without = common::mpc_did(d.path(), &["resolve", &did_web, "--allow-private-hosts"]);
    let err = String::from_utf8_lossy(&without.stderr);
    assert!(
        !without.status.success() && err.contains("--ca-cert"),
        "{err}"
    );

    // Renewal: new files in place, SIGHUP, the next handshake presents the new one.
    assert_eq!(served_serial(&addr, dir.path()), file_serial(&cert));
    make_leaf(dir.path(), "renewed");
    // The old modification times are kept, so the file watcher sees no change: only the
    // signal can make the mediator read the new files.
    sh(
        "cp -p server.pem orig.pem; cp -p server.key orig.key
         cp renewed.pem server.pem; cp renewed.key server.key
         touch -r orig.pem server.pem; touch -r orig.key server.key",
        dir.path(),
    );
    std::thread::sleep(Duration::from_secs(6)); // one watcher period: it must not reload
    assert_ne!(
        served_serial(&addr, dir.path()),
        file_serial(&cert),
        "reloaded without a signal although the modification times did not change"
    );
    let want = file_serial(&cert);
    let pid = m.child.id().to_string();
    assert!(Command::new("kill")
        .args(["-HUP", &pid])
        .status()
        .unwrap()
        .success());
    assert!(
        wait_until(
            || served_serial(&addr, dir.path()) == want,
            Instant::now() + Duration::from_secs(15)
        ),
        "the renewed certificate is not served after SIGHUP"
    );
    let mut m = m;
    assert!(
        m.child.try_wait().unwrap().is_none(),
        "SIGHUP ended the mediator"
    );

    // And without a signal: a changed file is picked up by the watcher (every 5 s).
    make_leaf(dir.path(), "third");
    std::fs::copy(dir.path().join("third.key"), &key).unwrap();
    std::fs::copy(dir.path().join("third.pem"), &cert).unwrap();
    let want = file_serial(&cert);
    assert!(
        wait_until(
            || served_serial(&addr, dir.path()) == want,
            Instant::now() + Duration::from_secs(20)
        ),
        "a changed certificate file was not picked up"
    );
}

/// The shipped Caddyfile with `tls internal`: Caddy's own private CA.
#[test]
fn behind_caddy_with_its_internal_ca() {
    if !have("caddy") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let public = format!("https://localhost:{port}");
    let m = Med::start(
        &dir.path().join("data"),
        &["--listen", "127.0.0.1:0", "--public-url", &public],
    );
    let upstream = m.get("addr");
    let shipped = include_str!("../../mediator/deploy/Caddyfile");
    let caddyfile = format!(
        "{{\n\tadmin off\n\tskip_install_trust\n\thttp_port {}\n\thttps_port {port}\n}}\n{}",
        free_port(),
        shipped
            .replace(
                "mediator.example.org {",
                &format!("localhost:{port} {{\n\ttls internal")
            )
            .replace("127.0.0.1:8080", &upstream)
    );
    std::fs::write(dir.path().join("Caddyfile"), caddyfile).unwrap();
    let caddy = Guard(
        Command::new("caddy")
            .args(["run", "--adapter", "caddyfile", "--config", "Caddyfile"])
            .current_dir(dir.path())
            .env("XDG_DATA_HOME", dir.path().join("xdg-data"))
            .env("XDG_CONFIG_HOME", dir.path().join("xdg-config"))
            .env("HOME", dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let root = dir
        .path()
        .join("xdg-data/caddy/pki/authorities/local/root.crt");
    let up = wait_until(
        || root.exists() && std::net::TcpStream::connect(("127.0.0.1", port)).is_ok(),
        Instant::now() + Duration::from_secs(30),
    );
    assert!(up, "caddy did not start");
    party_cli_works_only_with_the_ca(&m.get("invitation_url"), &root);
    assert_no_public_metrics(&public, &root);
    drop(caddy);
}

/// The shipped nginx server block: `/ws` and `/relay` both upgraded.
#[test]
fn behind_nginx_as_shipped() {
    if !have("openssl") || !have("nginx") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    make_ca(dir.path());
    let port = free_port();
    let public = format!("https://localhost:{port}");
    let m = Med::start(
        &dir.path().join("data"),
        &["--listen", "127.0.0.1:0", "--public-url", &public],
    );
    let upstream = m.get("addr");
    let p = dir.path().display().to_string();
    let site = include_str!("../../mediator/deploy/nginx.conf")
        .replace("listen 443 ssl", &format!("listen 127.0.0.1:{port} ssl"))
        .replace("server_name mediator.example.org", "server_name localhost")
        .replace(
            "/etc/letsencrypt/live/mediator.example.org/fullchain.pem",
            &format!("{p}/server.pem"),
        )
        .replace(
            "/etc/letsencrypt/live/mediator.example.org/privkey.pem",
            &format!("{p}/server.key"),
        )
        .replace("127.0.0.1:8080", &upstream);
    // The site as shipped inside a minimal main configuration (what
    // /etc/nginx/nginx.conf provides on Debian).
    let conf = format!(
        "worker_processes 1;\nerror_log {p}/error.log;\npid {p}/nginx.pid;\n\
         events {{ worker_connections 256; }}\n\
         http {{\n access_log off;\n client_body_temp_path {p}/body;\n proxy_temp_path {p}/proxy;\n\
         fastcgi_temp_path {p}/fcgi;\n uwsgi_temp_path {p}/uwsgi;\n scgi_temp_path {p}/scgi;\n{site}\n}}\n"
    );
    std::fs::write(dir.path().join("nginx.conf"), conf).unwrap();
    let nginx = Guard(
        Command::new("nginx")
            .args([
                "-p",
                &p,
                "-c",
                &format!("{p}/nginx.conf"),
                "-g",
                "daemon off;",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let up = wait_until(
        || std::net::TcpStream::connect(("127.0.0.1", port)).is_ok(),
        Instant::now() + Duration::from_secs(20),
    );
    if !up {
        let mut e = String::new();
        let _ =
            std::fs::File::open(dir.path().join("error.log")).map(|mut f| f.read_to_string(&mut e));
        panic!("nginx did not start: {e}");
    }
    let ca = dir.path().join("ca.pem");
    party_cli_works_only_with_the_ca(&m.get("invitation_url"), &ca);
    assert_no_public_metrics(&public, &ca);
    // The operator listener has them.
    let admin = m.get("admin");
    let mut s = std::net::TcpStream::connect(&admin).unwrap();
    s.write_all(b"GET /metrics HTTP/1.0\r\n\r\n").unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    assert!(text.contains("mpcdid_mediator_build_info"), "{text}");
    drop(nginx);
}

/// `/metrics`, `/metrics/relay` and `/readyz` are not served through the public URL.
fn assert_no_public_metrics(public: &str, ca: &Path) {
    let pem = std::fs::read(ca).unwrap();
    let client = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(&pem).unwrap())
        .build()
        .unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        for path in ["/metrics", "/metrics/relay", "/readyz"] {
            let r = client.get(format!("{public}{path}")).send().await.unwrap();
            assert_eq!(r.status().as_u16(), 404, "{path} is public");
        }
        let r = client
            .get(format!("{public}/healthz"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 200);
    });
}
