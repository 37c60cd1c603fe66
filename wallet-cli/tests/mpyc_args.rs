//! spec/lobby.md §2 (`mpyc_args`) and spec/security.md §10 against the real parser: every
//! program argument that MPyC's own argparse parser reads as a networking option, given
//! the launcher's arguments after it, is refused in an offer.
//!
//! MPyC's parser (`mpyc._get_arg_parser`, MPyC 0.11 under the Python the tests use) is
//! the independent implementation here: Python generates the candidates — every
//! single-dash argument of up to four characters over flags, reserved and value-taking
//! letters, `=` and a digit, and every prefix of every long option of the parser, bare
//! and with `=7` — parses `[candidate, <launcher's arguments>]`, and says which ones end
//! with networking different from the launcher's alone. Needs Python with MPyC
//! (`MPC_DID_PYTHON`); skipped with a message without it.
#![allow(clippy::unwrap_used)]

use mpc_did_lobby::{Offer, Program};

/// What `mpc-did-proxy` passes after the program's arguments for party 1 of 3.
const CLASSIFY: &str = r#"
import itertools, json, sys
sys.argv = [sys.argv[0]]
import mpyc
parser = mpyc._get_arg_parser()
launcher = ['-M3', '-I1', '-P', 'mpc-did-link.invalid:1', '-P', ':-1',
            '-P', 'mpc-did-link.invalid:2']
NET = ('M', 'index', 'parties', 'config', 'base_port', 'ssl')
def net(args):
    try:
        ns, _ = parser.parse_known_args(args)
    except SystemExit:
        return None  # argparse refused: MPyC exits before it networks
    return tuple(repr(getattr(ns, k)) for k in NET)
base = net(launcher)
cands = set()
for n in range(1, 5):
    for t in itertools.product('hHVvBIMPCTLf=7', repeat=n):
        cands.add('-' + ''.join(t))
longs = [o for o in parser._option_string_actions if o.startswith('--')]
for o in longs:
    for k in range(2, len(o) + 1):
        cands.add(o[:k])
        cands.add(o[:k] + '=7')
out = []
for c in sorted(cands):
    got = net([c] + launcher)
    out.append([c, got is not None and got != base])
sys.stdout.write('\nRESULT ' + json.dumps(out) + '\n')
"#;

#[test]
fn every_argument_argparse_reads_as_mpyc_networking_is_refused() {
    let Some(python) = mpc_did_testkit::python(&[]) else {
        return;
    };
    let out = std::process::Command::new(python)
        .args(["-c", CLASSIFY])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8(out.stdout).unwrap();
    let json = stdout
        .lines()
        .find_map(|l| l.strip_prefix("RESULT "))
        .unwrap();
    let verdicts: Vec<(String, bool)> = serde_json::from_str(json).unwrap();
    let program = Program::from_bytes("p.py", b"");
    let offer = |arg: &str| {
        Offer::new(
            "did:key:z6MkA".into(),
            3,
            program.clone(),
            vec![arg.into()],
            2_000_000_000,
        )
    };
    let reaching: Vec<&str> = verdicts
        .iter()
        .filter(|(_, reaches)| *reaches)
        .map(|(a, _)| a.as_str())
        .collect();
    // The generator covers the forms the filter once missed.
    for known in ["-hB7", "-h=B7", "-VB7", "--base=7", "--"] {
        assert!(
            reaching.contains(&known),
            "{known} not generated or not reaching"
        );
    }
    let let_through: Vec<&str> = reaching
        .iter()
        .copied()
        .filter(|a| offer(a).is_ok())
        .collect();
    assert!(
        let_through.is_empty(),
        "{} of {} arguments that set MPyC's networking pass the offer check: {:?}",
        let_through.len(),
        reaching.len(),
        &let_through[..let_through.len().min(20)]
    );
    // Not everything is refused: plain program arguments and MPyC's other options pass.
    for ok in ["-L7", "-fB7", "--no-prss", "--bit-length=7", "people"] {
        offer(ok).unwrap();
    }
}
