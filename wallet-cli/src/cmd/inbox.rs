//! `mpc-did inbox [--watch]`: pick up messages queued at the identity's mediator
//! (Message Pickup 3.0), print them, then acknowledge them (`messages-received`) so the
//! mediator deletes them. `--watch` keeps a WebSocket open in live mode and prints
//! messages as they arrive, including those queued before it started; when the socket
//! drops (a mediator restart) it says so on stderr, re-connects with backoff and jitter,
//! says when it is back, and catches up from the queue.
//!
//! Messages are printed before they are acknowledged: a crash in between means the
//! message is shown again next time (at-least-once), never lost. Duplicates within one
//! run are suppressed by message id.

use std::collections::HashSet;
use std::io::Write as _;
use std::time::Duration;

use mpc_did_agent::client::{ClientError, Delivered, MediatorClient};

use crate::cmd::mediator::registered_client;
use crate::ctx::Ctx;

/// Read messages waiting at the mediator.
///
/// Examples:
///   mpc-did inbox            # everything waiting, then exit
///   mpc-did inbox --watch    # and keep printing new messages until ctrl-c
#[derive(clap::Args, Debug)]
pub struct InboxArgs {
    /// Stay connected (Pickup 3.0 live mode over WebSocket) and print new messages.
    #[arg(long)]
    pub watch: bool,
    /// Stop after this many messages.
    #[arg(long)]
    pub max: Option<usize>,
    /// Leave the messages queued (do not acknowledge).
    #[arg(long)]
    pub keep: bool,
    /// Identity [default: the default identity].
    #[arg(long = "id", value_name = "NAME")]
    pub identity: Option<String>,
}

pub async fn run(ctx: &Ctx, a: InboxArgs) -> anyhow::Result<()> {
    let (_id, client) = registered_client(ctx, a.identity.as_deref())?;
    let max = a.max.unwrap_or(usize::MAX);
    let mut seen = HashSet::new();
    let mut printed = 0usize;
    if !a.watch {
        loop {
            let batch = client.fetch(100).await?;
            let fresh: Vec<_> = batch
                .iter()
                .filter(|d| !seen.contains(&d.id))
                .cloned()
                .collect();
            if fresh.is_empty() {
                break;
            }
            let ids = show(ctx, &client, &fresh, &mut seen, &mut printed, max).await?;
            if a.keep {
                if printed >= max || batch.len() < 100 {
                    break;
                }
            } else {
                client.ack(&ids).await?;
            }
            if printed >= max {
                break;
            }
        }
        if !ctx.json && printed == 0 {
            println!("no messages");
        }
        return Ok(());
    }
    let mut live = client.live().await?;
    loop {
        // Keep-alive as the agent's (spec/mediator.md §8 "Keep-alive and opening"): a ping
        // when idle, so the mediator's idle timeout does not close a quiet watch, and a
        // connection that went silent is noticed and opened again.
        let keepalive = mpc_did_agent::KEEPALIVE;
        let batch = tokio::select! {
            () = tokio::time::sleep_until(live.keep_alive_at(keepalive)) => {
                live.keep_alive(keepalive).await.map(|()| Vec::new())
            }
            b = live.next_batch(keepalive) => b,
            _ = tokio::signal::ctrl_c() => break,
        };
        let batch = match batch {
            Ok(b) => b,
            Err(ClientError::Timeout) => continue,
            Err(e) => {
                live = match reconnect(&client, &e).await? {
                    Some(l) => l,
                    None => return Ok(()),
                };
                continue;
            }
        };
        let ids = show(ctx, &client, &batch, &mut seen, &mut printed, max).await?;
        if !a.keep {
            // Acknowledge everything pushed, including repeats we did not print again.
            let mut all = ids;
            all.extend(batch.iter().map(|d| d.id.clone()));
            all.sort();
            all.dedup();
            if let Err(e) = live.ack(&all).await {
                // Unacknowledged messages come again on the next connection; `seen` keeps
                // them from being printed twice, and they are acknowledged then.
                live = match reconnect(&client, &e).await? {
                    Some(l) => l,
                    None => return Ok(()),
                };
            }
        }
        if printed >= max {
            break;
        }
    }
    live.close().await;
    Ok(())
}

/// The live WebSocket dropped (a mediator restart, a network change): say so once, re-open
/// it with backoff and jitter until it works (or ctrl-c: `None`), and say when it is back.
/// The mediator delivers what was queued meanwhile on the new connection.
async fn reconnect(
    client: &MediatorClient,
    why: &ClientError,
) -> anyhow::Result<Option<mpc_did_agent::client::LiveConnection>> {
    eprintln!("mpc-did: connection to the mediator lost ({why}); re-connecting");
    let down = std::time::Instant::now();
    let live = tokio::select! {
        l = client.live_again(Duration::MAX) => l?,
        _ = tokio::signal::ctrl_c() => return Ok(None),
    };
    eprintln!(
        "mpc-did: connected to the mediator again after {:.1} s",
        down.elapsed().as_secs_f64()
    );
    Ok(Some(live))
}

/// Prints the messages not seen before; returns the ids that may be acknowledged.
async fn show(
    ctx: &Ctx,
    client: &MediatorClient,
    batch: &[Delivered],
    seen: &mut HashSet<String>,
    printed: &mut usize,
    max: usize,
) -> anyhow::Result<Vec<String>> {
    let mut ids = Vec::new();
    let mut out = crate::out::stdout();
    for d in batch {
        if *printed >= max {
            break;
        }
        ids.push(d.id.clone());
        if !seen.insert(d.id.clone()) {
            continue;
        }
        match client.unpack(&d.bytes).await {
            Ok((msg, meta)) => {
                *printed += 1;
                if ctx.json {
                    writeln!(
                        out,
                        "{}",
                        serde_json::json!({
                            "queue_id": d.id,
                            "id": msg.id,
                            "type": msg.type_,
                            "from": msg.from,
                            "authenticated": meta.authenticated,
                            "created_time": msg.created_time,
                            "body": msg.body,
                        })
                    )?;
                } else {
                    writeln!(
                        out,
                        "from {} [{}]\n  type {}\n  {}",
                        msg.from.as_deref().unwrap_or("(anonymous)"),
                        if meta.authenticated {
                            "authenticated"
                        } else {
                            "not authenticated"
                        },
                        msg.type_,
                        msg.body
                    )?;
                }
            }
            Err(e) => {
                // Undecryptable: report it and acknowledge, or it would block the queue.
                eprintln!("mpc-did: skipping queued message {}: {e}", d.id);
            }
        }
    }
    out.flush()?;
    Ok(ids)
}
