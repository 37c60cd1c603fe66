//! Real MPyC through the proxy over Noise sessions, as `run::run_over_sessions` runs it
//! (the data plane of a run, without the DIDComm lobby): three processes, each talking only
//! to its own proxy on loopback.
#![allow(clippy::unwrap_used)]

use std::path::PathBuf;
use std::time::Duration;

use mpc_did_mpc::run::run_over_sessions;
use mpc_did_proxy::launch::Output;

/// MPyC's Python (with numpy); `None`: skip (the test kit's policy, which fails instead
/// under `MPC_DID_REQUIRE_INTEROP=1`).
fn python() -> Option<PathBuf> {
    mpc_did_testkit::python(&["numpy"])
}

async fn run(program: &str, args: &[&str]) -> Vec<String> {
    let Some(python) = python() else {
        return Vec::new();
    };
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../examples")
        .join(program);
    let maps = mpc_did_testkit::local::local_mesh(3, |t| Box::new(t))
        .await
        .unwrap();
    let mut runs = Vec::new();
    for (i, sessions) in maps.into_iter().enumerate() {
        let me = u16::try_from(i).unwrap();
        let mut argv = vec![
            python.clone().into_os_string(),
            script.clone().into_os_string(),
        ];
        argv.extend(args.iter().map(Into::into));
        runs.push(tokio::spawn(async move {
            run_over_sessions(me, sessions, argv, Output::Capture, std::future::pending())
                .await
                .unwrap()
        }));
    }
    let mut outs = Vec::new();
    for r in runs {
        let o = tokio::time::timeout(Duration::from_secs(120), r)
            .await
            .expect("hung")
            .unwrap();
        assert!(o.status.success(), "{}", o.stdout);
        o.proxy.unwrap();
        outs.push(o.stdout);
    }
    outs
}

fn digest(out: &str) -> &str {
    out.lines()
        .find_map(|l| l.strip_prefix("result-digest: "))
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secret_santa_over_sessions() {
    let outs = run("secretsanta.py", &["--people", "3", "4", "5", "6"]).await;
    for o in &outs {
        assert!(o.contains("valid: True"), "{o}");
        assert_eq!(digest(o), digest(&outs[0]));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_messages_over_sessions() {
    let outs = run("innerproduct.py", &["--length", "100000"]).await;
    for o in &outs {
        assert!(o.contains("valid: True"), "{o}");
        assert_eq!(digest(o), digest(&outs[0]));
    }
}
