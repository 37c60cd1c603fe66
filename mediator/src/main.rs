//! `mpc-did-mediator`: the DIDComm v2 mediator binary.
#![forbid(unsafe_code)]

fn main() -> std::process::ExitCode {
    eprintln!("mpc-did-mediator: the mediator is not built yet (issue 4)");
    std::process::ExitCode::FAILURE
}
