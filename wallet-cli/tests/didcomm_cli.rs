//! `mpc-did didcomm pack|unpack` and `mpc-did invite` end to end: the real binary, two
//! wallets in temporary directories, messages round-tripped in every mode.
//! spec/didcomm.md §"CLI", §"Invitations".
#![allow(clippy::unwrap_used)]

use std::io::Write as _;
use std::path::Path;
use std::process::{Command, Output, Stdio};

use serde_json::Value;

mod common;

/// `mpc-did --home HOME ARGS…` fed `stdin` (or nothing), run to the end.
fn run(home: &Path, args: &[&str], stdin: Option<&[u8]>) -> Output {
    let mut child = common::cmd(home, args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    if let Some(s) = stdin {
        input.write_all(s).unwrap();
    }
    drop(input);
    child.wait_with_output().unwrap()
}

fn ok(home: &Path, args: &[&str], stdin: Option<&[u8]>) -> Vec<u8> {
    let out = run(home, args, stdin);
    assert!(
        out.status.success(),
        "mpc-did {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

fn identity(home: &Path, name: &str) -> String {
    ok(home, &["id", "create", "--name", name], None);
    let v: Value = serde_json::from_slice(&ok(home, &["--json", "id", "show"], None)).unwrap();
    v["did"].as_str().unwrap().to_owned()
}

#[test]
fn round_trip_between_two_wallets_in_every_mode() {
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let alice = identity(a.path(), "alice");
    let bob = identity(b.path(), "bob");
    let body = br#"{"question": "lunch?"}"#;
    let modes: &[(&[&str], bool, bool, bool)] = &[
        // (extra args, encrypted, authenticated, signed)
        (&["--mode", "authcrypt"], true, true, false),
        (
            &["--mode", "authcrypt", "--sign", "--protect-sender"],
            true,
            true,
            true,
        ),
        (&["--mode", "anoncrypt"], true, false, false),
        (
            &["--mode", "anoncrypt", "--enc", "XC20P"],
            true,
            false,
            false,
        ),
        (
            &["--mode", "anoncrypt", "--enc", "A256GCM"],
            true,
            false,
            false,
        ),
        (&["--mode", "signed"], false, true, true),
        (&["--mode", "plain"], false, false, false),
    ];
    for (extra, encrypted, authenticated, signed) in modes {
        let mut args = vec!["didcomm", "pack", "--to", bob.as_str()];
        args.extend_from_slice(extra);
        let packed = ok(a.path(), &args, Some(body));
        let out: Value = serde_json::from_slice(&ok(
            b.path(),
            &["--json", "didcomm", "unpack", "-"],
            Some(&packed),
        ))
        .unwrap();
        let (m, meta) = (&out["message"], &out["metadata"]);
        assert_eq!(m["body"]["question"], "lunch?", "{extra:?}");
        assert_eq!(m["to"][0], bob.as_str());
        assert_eq!(meta["encrypted"], *encrypted, "{extra:?}");
        assert_eq!(meta["authenticated"], *authenticated, "{extra:?}");
        assert_eq!(meta["non_repudiation"], *signed, "{extra:?}");
        if *authenticated {
            assert_eq!(m["from"], alice.as_str());
        }
        // Alice cannot read what she sent to Bob (she is not a recipient).
        if *encrypted {
            let r = run(a.path(), &["didcomm", "unpack", "-"], Some(&packed));
            assert!(!r.status.success());
            assert!(String::from_utf8_lossy(&r.stderr).contains("no secret"));
        }
    }
}

#[test]
fn tampered_message_is_rejected() {
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    identity(a.path(), "alice");
    let bob = identity(b.path(), "bob");
    let packed = ok(a.path(), &["didcomm", "pack", "--to", &bob], Some(b"hello"));
    let mut v: Value = serde_json::from_slice(&packed).unwrap();
    let ct = v["ciphertext"].as_str().unwrap().to_owned();
    let flipped = if ct.starts_with('A') { "B" } else { "A" };
    v["ciphertext"] = Value::String(format!("{flipped}{}", &ct[1..]));
    let r = run(
        b.path(),
        &["didcomm", "unpack"],
        Some(v.to_string().as_bytes()),
    );
    assert_eq!(r.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&r.stderr).contains("decryption or signature verification failed")
    );
    let r = run(b.path(), &["didcomm", "unpack"], Some(b"not json"));
    assert_eq!(r.status.code(), Some(1));
}

#[test]
fn invite_prints_url_json_qr_and_decodes() {
    let a = tempfile::tempdir().unwrap();
    let alice = identity(a.path(), "alice");
    let png = a.path().join("invite.png");
    let human = String::from_utf8(ok(
        a.path(),
        &[
            "invite",
            "--goal-code",
            "mpc-did.session.join",
            "--goal",
            "Secret Santa",
            "--qr-png",
            png.to_str().unwrap(),
        ],
        None,
    ))
    .unwrap();
    let url = human
        .lines()
        .find(|l| l.starts_with("https://didcomm.invalid/oob?_oob="))
        .unwrap()
        .to_owned();
    assert!(human.contains("\"type\": \"https://didcomm.org/out-of-band/2.0/invitation\""));
    let qr: String = human
        .split_once("modules):\n\n")
        .unwrap()
        .1
        .split("\nQR code written")
        .next()
        .unwrap()
        .to_owned();
    assert!(qr.contains('█') && qr.contains('▀'));
    assert!(std::fs::read(&png).unwrap().starts_with(b"\x89PNG"));

    let decoded: Value =
        serde_json::from_slice(&ok(a.path(), &["--json", "invite", "decode", &url], None)).unwrap();
    assert_eq!(decoded["from"], alice.as_str());
    assert_eq!(decoded["body"]["goal_code"], "mpc-did.session.join");
    assert_eq!(decoded["body"]["goal"], "Secret Santa");
    let text = String::from_utf8(ok(a.path(), &["invite", "decode", &url], None)).unwrap();
    assert!(text.contains("goal code:  mpc-did.session.join"));
    let bad = run(
        a.path(),
        &["invite", "decode", "https://x.example/?_oob=%%%"],
        None,
    );
    assert_eq!(bad.status.code(), Some(1));

    // Scannability: decode the PNG and the terminal drawing with zxing-cpp, an
    // independent QR reader, when the interop Python has it.
    let Some(py) = std::env::var("MPC_DID_PYTHON")
        .ok()
        .filter(|p| !p.is_empty())
    else {
        common::skipped("QR decoding (set MPC_DID_PYTHON to a python with zxing-cpp)");
        return;
    };
    let has_zxing = Command::new(&py)
        .args(["-c", "import zxingcpp"])
        .status()
        .is_ok_and(|s| s.success());
    if !has_zxing {
        assert!(
            std::env::var("MPC_DID_REQUIRE_QR_DECODE").as_deref() != Ok("1"),
            "MPC_DID_REQUIRE_QR_DECODE=1 but {py} has no zxingcpp"
        );
        common::skipped(&format!("QR decoding ({py} has no zxing-cpp)"));
        return;
    }
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../crates/didcomm/tests/interop/qr_decode.py"
    );
    let out = Command::new(&py)
        .args([script, "png", png.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8(out.stdout).unwrap().trim(), url);
    let mut child = Command::new(&py)
        .args([script, "terminal"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(qr.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    assert_eq!(String::from_utf8(out.stdout).unwrap().trim(), url);
}

/// A short-link server on a loopback port: answers each request by its path's first
/// segment (`/redirect`, `/json`, `/loop`, `/missing`, `/page`), as a sender's web server
/// would for `?_oobid=` links. Serves until the test ends.
fn short_link_server(full_url: String, json: String) -> u16 {
    use std::io::{BufRead as _, BufReader};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { return };
            let mut line = String::new();
            let mut reader = BufReader::new(conn.try_clone().unwrap());
            if reader.read_line(&mut line).is_err() {
                continue;
            }
            // Skip the headers.
            let mut h = String::new();
            while reader.read_line(&mut h).is_ok_and(|n| n > 2) {
                h.clear();
            }
            let path = line.split_whitespace().nth(1).unwrap_or("/").to_owned();
            let (status, headers, body) = match path.split('?').next().unwrap_or("") {
                // relative Location, as a sender may give
                "/redirect" => (
                    "302 Found",
                    format!(
                        "Location: {}\r\n",
                        &full_url[full_url.find("/oob").unwrap()..]
                    ),
                    String::new(),
                ),
                "/json" => (
                    "200 OK",
                    "Content-Type: application/json\r\n".to_owned(),
                    json.clone(),
                ),
                "/loop" => (
                    "302 Found",
                    "Location: /loop?_oobid=again\r\n".to_owned(),
                    String::new(),
                ),
                "/page" => (
                    "200 OK",
                    "Content-Type: text/html\r\n".to_owned(),
                    "<html>hello</html>".to_owned(),
                ),
                _ => ("404 Not Found", String::new(), String::new()),
            };
            let _ = write!(
                conn,
                "HTTP/1.1 {status}\r\n{headers}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    port
}

/// DIDComm v2.1 "Short URL Message Retrieval": a `?_oobid=` link is fetched with an HTTP GET
/// (a redirect to the full `_oob` URL, or the invitation's JSON as the answer) before it is
/// decoded, by `invite decode` and `join` alike; a link that loops, is missing or answers a
/// web page ends with an error that says so (spec/didcomm.md §5 "Invitations").
#[test]
fn short_links_are_fetched_before_decoding() {
    let a = tempfile::tempdir().unwrap();
    let alice = identity(a.path(), "alice");
    let human = String::from_utf8(ok(
        a.path(),
        &["invite", "--goal-code", "mpc-did.test", "--no-qr"],
        None,
    ))
    .unwrap();
    let url = human
        .lines()
        .find(|l| l.contains("?_oob="))
        .unwrap()
        .to_owned();
    let json =
        String::from_utf8(ok(a.path(), &["--json", "invite", "decode", &url], None)).unwrap();
    // The full URL's host is didcomm.invalid: serve it from loopback under the same path.
    let port = short_link_server(url.clone(), json);
    let base = format!("http://127.0.0.1:{port}");
    for link in [
        format!("{base}/redirect?_oobid=5f0e3ffb"),
        format!("{base}/json?_oobid=5f0e3ffc"),
    ] {
        let out = run(a.path(), &["--json", "invite", "decode", &link], None);
        assert!(
            out.status.success(),
            "{link}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(v["from"], alice.as_str(), "{link}");
        assert_eq!(v["body"]["goal_code"], "mpc-did.test", "{link}");
    }
    for (link, says) in [
        (format!("{base}/loop?_oobid=x"), "more than 5 redirects"),
        (format!("{base}/missing?_oobid=x"), "404"),
        (format!("{base}/page?_oobid=x"), "without an invitation"),
    ] {
        let out = run(a.path(), &["invite", "decode", &link], None);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{link}: {err}");
        assert!(err.contains(says), "{link}: {err}");
    }
}
