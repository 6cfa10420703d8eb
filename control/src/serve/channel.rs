//! The dataplanes' socket: each connection subscribes with `Hello`, gets the
//! enforced table, the facts and the shadow table, then every push in order, and
//! reports back. Frames are checked by `zgate-proto`; anything malformed closes that
//! one connection (the dataplane keeps enforcing and reconnects).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::broadcast::error::RecvError;
use zgate_proto::{Decoder, Encoder, Message, Side};

use super::state::{Core, Push};
use super::Admitted;

/// Largest frame a dataplane may send (reports and impact answers are small).
const MAX_FROM_DATAPLANE: u32 = 16 << 20;
/// A dataplane must say hello this soon after connecting.
const HELLO_TIMEOUT: Duration = Duration::from_secs(5);
/// How often each dataplane is told how fresh its facts are.
const FRESHNESS_EVERY: Duration = Duration::from_millis(500);

/// Accept dataplanes for ever.
pub async fn serve(listener: UnixListener, core: Arc<Mutex<Core>>, admitted: Arc<Admitted>) {
    loop {
        let stream = match listener.accept().await {
            Ok((s, _)) => s,
            Err(e) => {
                eprintln!("zgate-control: channel accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let uid = match stream.peer_cred() {
            Ok(c) => c.uid(),
            Err(e) => {
                eprintln!("zgate-control: channel: no peer credentials: {e}");
                continue;
            }
        };
        if !admitted.uid(uid) {
            eprintln!("zgate-control: channel: uid {uid} is not admitted; connection refused");
            refuse(stream, &format!("uid {uid} is not admitted")).await;
            continue;
        }
        let core = Arc::clone(&core);
        tokio::spawn(async move {
            let why = connection(stream, uid, &core).await;
            if let Some((id, why)) = why {
                if let Ok(mut c) = core.lock() {
                    c.unsubscribe(id, &why);
                }
            }
        });
    }
}

async fn refuse(mut stream: UnixStream, reason: &str) {
    let mut out = Vec::new();
    Encoder::new().encode(
        &Message::Refused {
            reason: reason.to_string(),
        },
        &mut out,
    );
    let _peer_may_be_gone = stream.write_all(&out).await;
}

/// Serve one dataplane; returns its id (once subscribed) and why it ended.
async fn connection(stream: UnixStream, uid: u32, core: &Mutex<Core>) -> Option<(u64, String)> {
    let (mut rd, mut wr) = stream.into_split();
    let mut dec = Decoder::new(Side::Dataplane, MAX_FROM_DATAPLANE);
    let mut enc = Encoder::new();
    let mut buf = vec![0u8; 64 << 10];
    // Hello first.
    let hello = loop {
        match dec.next() {
            Ok(Some(Message::Hello(h))) => break h,
            Ok(Some(other)) => {
                let reason = format!("expected Hello first, got {:?}", other.kind());
                eprintln!("zgate-control: channel (uid {uid}): {reason}");
                send_refused(&mut enc, &mut wr, &reason).await;
                return None;
            }
            Ok(None) => {}
            Err(e) => {
                eprintln!("zgate-control: channel (uid {uid}): {e}");
                send_refused(&mut enc, &mut wr, &e.to_string()).await;
                return None;
            }
        }
        match tokio::time::timeout(HELLO_TIMEOUT, rd.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return None,
            Ok(Ok(n)) => dec.push(buf.get(..n).unwrap_or(&[])),
            Err(_) => {
                send_refused(&mut enc, &mut wr, "no Hello within 5 s").await;
                return None;
            }
        }
    };
    let sub = match core.lock() {
        Ok(mut c) => c.subscribe(&hello, uid),
        Err(_) => return None,
    };
    let id = sub.id;
    let mut pushes = sub.pushes;
    let mut out = Vec::new();
    if let Some(t) = sub.table {
        enc.encode(&Message::Table(t), &mut out);
    }
    if let Some(f) = sub.facts {
        enc.encode(&Message::Facts(f), &mut out);
    }
    if let Some(s) = sub.shadow {
        enc.encode(&Message::Shadow(s), &mut out);
    }
    if let Err(e) = wr.write_all(&out).await {
        return Some((id, format!("write failed: {e}")));
    }
    let mut freshness = tokio::time::interval(FRESHNESS_EVERY);
    freshness.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = freshness.tick() => {
                let Some(f) = core.lock().ok().map(|c| c.freshness()) else {
                    return Some((id, "state lock poisoned".into()));
                };
                let mut out = Vec::new();
                enc.encode(&Message::Freshness(f), &mut out);
                if let Err(e) = wr.write_all(&out).await {
                    return Some((id, format!("write failed: {e}")));
                }
            }
            read = rd.read(&mut buf) => {
                let n = match read {
                    Ok(0) => return Some((id, "closed the channel".into())),
                    Ok(n) => n,
                    Err(e) => return Some((id, format!("read failed: {e}"))),
                };
                dec.push(buf.get(..n).unwrap_or(&[]));
                loop {
                    match dec.next() {
                        Ok(Some(m)) => {
                            if let Some(why) = received(id, m, core) {
                                return Some((id, why));
                            }
                        }
                        Ok(None) => break,
                        Err(e) => {
                            send_refused(&mut enc, &mut wr, &e.to_string()).await;
                            return Some((id, format!("refused: {e}")));
                        }
                    }
                }
            }
            push = pushes.recv() => {
                let m = match push {
                    Ok(Push::Table(t)) => Message::Table((*t).clone()),
                    Ok(Push::Delta(d)) => Message::Delta((*d).clone()),
                    Ok(Push::Shadow(s)) => Message::Shadow((*s).clone()),
                    Ok(Push::Impact(q)) => Message::ImpactQuery { id: q },
                    Ok(Push::Facts(f)) => Message::Facts((*f).clone()),
                    Err(RecvError::Lagged(n)) => {
                        // It fell behind by `n` pushes: it resyncs from a snapshot.
                        return Some((id, format!("{n} pushes behind; dropped so it resubscribes")));
                    }
                    Err(RecvError::Closed) => return Some((id, "control process stopping".into())),
                };
                let mut out = Vec::new();
                enc.encode(&m, &mut out);
                if let Err(e) = wr.write_all(&out).await {
                    return Some((id, format!("write failed: {e}")));
                }
            }
        }
    }
}

/// A message from a subscribed dataplane; `Some(why)` to close the connection.
fn received(id: u64, m: Message, core: &Mutex<Core>) -> Option<String> {
    let Ok(mut c) = core.lock() else {
        return Some("state lock poisoned".into());
    };
    match m {
        Message::Report(r) => c.report(id, &r),
        Message::Impact(r) => c.impact_answer(id, r),
        Message::Refused { reason } => return Some(format!("it refused: {reason}")),
        Message::Hello(_) => return Some("a second Hello".into()),
        // The decoder admits only what a dataplane sends.
        _ => {}
    }
    None
}

async fn send_refused(enc: &mut Encoder, wr: &mut tokio::net::unix::OwnedWriteHalf, reason: &str) {
    let mut out = Vec::new();
    enc.encode(
        &Message::Refused {
            reason: reason.to_string(),
        },
        &mut out,
    );
    let _peer_may_be_gone = wr.write_all(&out).await;
}
