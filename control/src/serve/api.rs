//! The HTTP/JSON API: the same routes on the operator socket (who: the peer's uid,
//! admitted by `--admit`) and, when enabled, on a loopback TCP address for SIEM, EDR
//! and UEBA systems (who: the name of the bearer token presented). Served by axum;
//! no hand-written HTTP.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use serde::Deserialize;
use serde_json::json;

use super::state::{Core, OpError, PostureUpdate};
use super::store::SubjectRecord;
use super::Admitted;

/// Who made a request, for the audit line.
#[derive(Debug, Clone)]
pub struct Who(pub String);

/// The peer of an operator-socket connection.
#[derive(Debug, Clone, Copy)]
pub struct UdsPeer {
    /// Its uid (`SO_PEERCRED`), `None` if the kernel would not say.
    pub uid: Option<u32>,
}

impl
    axum::extract::connect_info::Connected<
        axum::serve::IncomingStream<'_, tokio::net::UnixListener>,
    > for UdsPeer
{
    fn connect_info(stream: axum::serve::IncomingStream<'_, tokio::net::UnixListener>) -> Self {
        UdsPeer {
            uid: stream.io().peer_cred().ok().map(|c| c.uid()),
        }
    }
}

type Shared = Arc<Mutex<Core>>;

/// Every route, without authentication (each front end adds its own).
pub fn routes(core: Shared) -> Router {
    Router::new()
        .route("/v1/status", get(status))
        .route("/v1/history", get(history))
        .route("/v1/rollback", post(rollback))
        .route("/v1/revocations", get(revocations).post(revoke))
        .route("/v1/unrevoke", post(unrevoke))
        .route("/v1/posture", get(postures).post(posture))
        .route("/v1/posture/clear", post(posture_clear))
        .route("/v1/risk", get(risks).post(risk))
        .route("/v1/risk/clear", post(risk_clear))
        .route("/v1/grants", get(grants).post(grant))
        .route("/v1/ungrant", post(ungrant))
        .route("/v1/shadow", post(shadow))
        .route("/v1/shadow/clear", post(shadow_clear))
        .route("/v1/promote", post(promote))
        .route("/v1/impact", get(impact))
        .with_state(core)
}

/// The operator socket's gate: the peer's uid must be admitted.
pub async fn uds_auth(
    State(admitted): State<Arc<Admitted>>,
    ConnectInfo(peer): ConnectInfo<UdsPeer>,
    mut req: Request,
    next: Next,
) -> Response {
    match peer.uid {
        Some(uid) if admitted.uid(uid) => {
            req.extensions_mut().insert(Who(format!("uid {uid}")));
            next.run(req).await
        }
        Some(uid) => {
            eprintln!("zgate-control: operator socket: uid {uid} refused");
            error(
                StatusCode::FORBIDDEN,
                &format!("uid {uid} is not admitted (serve --admit)"),
            )
        }
        None => error(StatusCode::FORBIDDEN, "no peer credentials"),
    }
}

/// Bearer tokens for the TCP API: token → name.
#[derive(Debug, Default)]
pub struct Tokens(pub HashMap<String, String>);

impl Tokens {
    /// The name of `token`, comparing every known token in constant time.
    fn name_of(&self, token: &str) -> Option<&str> {
        let mut found = None;
        for (t, name) in &self.0 {
            if constant_time_eq(t.as_bytes(), token.as_bytes()) {
                found = Some(name.as_str());
            }
        }
        found
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The TCP API's gate: `Authorization: Bearer TOKEN` with a known token.
pub async fn token_auth(
    State(tokens): State<Arc<Tokens>>,
    mut req: Request,
    next: Next,
) -> Response {
    let presented = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    match presented.and_then(|t| tokens.name_of(t)) {
        Some(name) => {
            let who = Who(format!("token {name}"));
            req.extensions_mut().insert(who);
            next.run(req).await
        }
        None => {
            eprintln!(
                "zgate-control: API: request to {} refused: {}",
                req.uri().path(),
                if presented.is_some() {
                    "unknown token"
                } else {
                    "no bearer token"
                }
            );
            error(StatusCode::UNAUTHORIZED, "a valid bearer token is required")
        }
    }
}

fn error(status: StatusCode, msg: &str) -> Response {
    (status, Json(json!({ "ok": false, "error": msg }))).into_response()
}

fn op_error(e: &OpError) -> Response {
    let status = match e {
        OpError::Invalid(_) => StatusCode::BAD_REQUEST,
        OpError::NotFound(_) => StatusCode::NOT_FOUND,
        OpError::Store(_) => StatusCode::INTERNAL_SERVER_ERROR,
    };
    error(status, &e.to_string())
}

fn locked(core: &Shared) -> Result<std::sync::MutexGuard<'_, Core>, Response> {
    core.lock()
        .map_err(|_| error(StatusCode::INTERNAL_SERVER_ERROR, "state lock poisoned"))
}

/// A read: `f`'s JSON of the state, under the lock.
fn read(core: &Shared, f: impl FnOnce(&Core) -> serde_json::Value) -> Response {
    match locked(core) {
        Ok(c) => Json(f(&c)).into_response(),
        Err(r) => r,
    }
}

/// One list of facts with the version it belongs to.
fn facts_list(
    core: &Shared,
    key: &str,
    f: impl FnOnce(&super::store::Facts) -> serde_json::Value,
) -> Response {
    read(
        core,
        |c| json!({ "facts_version": c.facts_version(), key: f(c.facts()) }),
    )
}

/// The versions after a change.
fn done(core: &Core, extra: serde_json::Value) -> Response {
    let mut v = json!({
        "ok": true,
        "table_version": core.enforced(),
        "facts_version": core.facts_version(),
        "accepted_unix_us": core.last_accepted_us(),
    });
    if let (Some(obj), serde_json::Value::Object(more)) = (v.as_object_mut(), extra) {
        obj.extend(more);
    }
    Json(v).into_response()
}

macro_rules! change {
    ($core:expr, |$c:ident| $op:expr) => {{
        let planned = {
            let mut $c = match locked(&$core) {
                Ok(c) => c,
                Err(r) => return r,
            };
            match $op {
                Ok(_) => Ok($c.take_outbox()),
                Err(e) => Err(e),
            }
        };
        match planned {
            Err(e) => op_error(&e),
            Ok(writes) => finish(&$core, writes).await,
        }
    }};
}

/// After an operation: with a shared store, write what it planned there, wait until
/// the store's watch has applied it here (so this host's dataplanes enforce it when
/// the caller gets its answer), and audit it; without, it is already applied.
async fn finish(core: &Shared, writes: Vec<super::shared::PendingWrite>) -> Response {
    if writes.is_empty() {
        return match locked(core) {
            Ok(c) => done(&c, json!({})),
            Err(r) => r,
        };
    }
    let (store, mut applied) = match locked(core) {
        Ok(c) => (c.shared_store(), c.applied()),
        Err(r) => return r,
    };
    let Some(store) = store else {
        return error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "no shared store to write to",
        );
    };
    // Accepted: etcd committed it (the same instant the file store's fsync marks).
    let (revision, committed_us) = match super::shared::write_all(&*store, &writes).await {
        Ok(r) => r,
        Err(e) => {
            return error(
                StatusCode::SERVICE_UNAVAILABLE,
                &format!("the shared store did not take the change: {e}"),
            )
        }
    };
    let waited = tokio::time::timeout(
        Duration::from_secs(10),
        applied.wait_for(|v| *v >= revision),
    )
    .await;
    let mut c = match locked(core) {
        Ok(c) => c,
        Err(r) => return r,
    };
    c.audit_writes(&writes, committed_us);
    match waited {
        Ok(Ok(_)) => done(&c, json!({ "store_revision": revision })),
        _ => error(
            StatusCode::GATEWAY_TIMEOUT,
            &format!("written to the shared store (revision {revision}) but not applied here within 10 s: is its watch down?"),
        ),
    }
}

async fn status(State(core): State<Shared>) -> Response {
    read(&core, |c| json!(c.status()))
}

async fn history(State(core): State<Shared>) -> Response {
    read(&core, |c| {
        let (tables, enforced) = c.history();
        json!({ "enforced": enforced, "tables": tables })
    })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RollbackReq {
    version: Option<u64>,
}

async fn rollback(
    State(core): State<Shared>,
    Extension(who): Extension<Who>,
    Json(r): Json<RollbackReq>,
) -> Response {
    change!(core, |c| c.rollback(r.version, &who.0))
}

/// A subject in a request: exactly one of the fields.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SubjectReq {
    principal: Option<String>,
    fingerprint: Option<String>,
    device: Option<String>,
}

impl SubjectReq {
    fn subject(self) -> Result<SubjectRecord, OpError> {
        match (self.principal, self.fingerprint, self.device) {
            (Some(p), None, None) => Ok(SubjectRecord::Principal(p)),
            (None, Some(f), None) => Ok(SubjectRecord::Fingerprint(f)),
            (None, None, Some(d)) => Ok(SubjectRecord::Device(d)),
            _ => Err(OpError::Invalid(
                "name exactly one of `principal`, `fingerprint`, `device`".into(),
            )),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RevokeReq {
    principal: Option<String>,
    fingerprint: Option<String>,
    reason: Option<String>,
    /// RFC 3339.
    until: Option<String>,
    /// A duration (`90s`, `15m`, `2h`, `7d`).
    #[serde(rename = "for")]
    for_: Option<String>,
}

async fn revoke(
    State(core): State<Shared>,
    Extension(who): Extension<Who>,
    Json(r): Json<RevokeReq>,
) -> Response {
    let subject = SubjectReq {
        principal: r.principal,
        fingerprint: r.fingerprint,
        device: None,
    }
    .subject();
    let until = match (r.until, r.for_) {
        (None, None) => Ok(None),
        (Some(t), None) => t
            .parse::<jiff::Timestamp>()
            .map(|t| Some(t.as_second()))
            .map_err(|e| OpError::Invalid(format!("`until` `{t}`: {e}"))),
        (None, Some(d)) => parse_duration(&d)
            .map(|s| {
                Some(super::state::now_unix().saturating_add(i64::try_from(s).unwrap_or(i64::MAX)))
            })
            .ok_or_else(|| {
                OpError::Invalid(format!("`for` `{d}`: expected a duration like 15m, 2h, 7d"))
            }),
        (Some(_), Some(_)) => Err(OpError::Invalid("give `until` or `for`, not both".into())),
    };
    let (subject, until) = match (subject, until) {
        (Ok(s), Ok(u)) => (s, u),
        (Err(e), _) | (_, Err(e)) => return op_error(&e),
    };
    change!(core, |c| c.revoke(subject, r.reason, until, &who.0))
}

async fn unrevoke(
    State(core): State<Shared>,
    Extension(who): Extension<Who>,
    Json(r): Json<SubjectReq>,
) -> Response {
    let subject = match r.subject() {
        Ok(s) => s,
        Err(e) => return op_error(&e),
    };
    change!(core, |c| c.unrevoke(subject, &who.0))
}

async fn revocations(State(core): State<Shared>) -> Response {
    facts_list(&core, "revocations", |f| json!(f.revocations))
}

async fn posture(
    State(core): State<Shared>,
    Extension(who): Extension<Who>,
    Json(p): Json<PostureUpdate>,
) -> Response {
    change!(core, |c| c.set_posture(p, &who.0))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DeviceReq {
    device: String,
}

async fn posture_clear(
    State(core): State<Shared>,
    Extension(who): Extension<Who>,
    Json(d): Json<DeviceReq>,
) -> Response {
    change!(core, |c| c.clear_posture(&d.device, &who.0))
}

async fn postures(State(core): State<Shared>) -> Response {
    facts_list(&core, "posture", |f| json!(f.posture))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RiskReq {
    principal: Option<String>,
    device: Option<String>,
    score: u8,
}

async fn risk(
    State(core): State<Shared>,
    Extension(who): Extension<Who>,
    Json(r): Json<RiskReq>,
) -> Response {
    let subject = match (SubjectReq {
        principal: r.principal,
        fingerprint: None,
        device: r.device,
    })
    .subject()
    {
        Ok(s) => s,
        Err(e) => return op_error(&e),
    };
    change!(core, |c| c.set_risk(subject, r.score, &who.0))
}

async fn risk_clear(
    State(core): State<Shared>,
    Extension(who): Extension<Who>,
    Json(r): Json<SubjectReq>,
) -> Response {
    let subject = match r.subject() {
        Ok(s) => s,
        Err(e) => return op_error(&e),
    };
    change!(core, |c| c.clear_risk(subject, &who.0))
}

async fn risks(State(core): State<Shared>) -> Response {
    facts_list(&core, "risk", |f| json!(f.risk))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct GrantReq {
    principal: String,
    service: String,
    /// A duration (`90s`, `15m`, `2h`).
    #[serde(rename = "for")]
    for_: String,
    reason: String,
}

async fn grant(
    State(core): State<Shared>,
    Extension(who): Extension<Who>,
    Json(g): Json<GrantReq>,
) -> Response {
    let Some(secs) = parse_duration(&g.for_) else {
        return op_error(&OpError::Invalid(format!(
            "`for` `{}`: expected a duration like 90s, 15m, 2h",
            g.for_
        )));
    };
    change!(core, |c| c.grant(
        &g.service,
        &g.principal,
        secs,
        &g.reason,
        &who.0
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UngrantReq {
    principal: String,
    service: String,
}

async fn ungrant(
    State(core): State<Shared>,
    Extension(who): Extension<Who>,
    Json(g): Json<UngrantReq>,
) -> Response {
    change!(core, |c| c.ungrant(&g.service, &g.principal, &who.0))
}

async fn grants(State(core): State<Shared>) -> Response {
    facts_list(&core, "grants", |f| json!(f.grants))
}

async fn shadow(
    State(core): State<Shared>,
    Extension(who): Extension<Who>,
    body: Bytes,
) -> Response {
    let mut c = match locked(&core) {
        Ok(c) => c,
        Err(r) => return r,
    };
    match c.set_shadow(&body, &who.0) {
        Ok(v) => done(&c, json!({ "shadow_version": v })),
        Err(e) => op_error(&e),
    }
}

async fn shadow_clear(State(core): State<Shared>, Extension(who): Extension<Who>) -> Response {
    change!(core, |c| c.clear_shadow(&who.0))
}

async fn promote(State(core): State<Shared>, Extension(who): Extension<Who>) -> Response {
    change!(core, |c| c.promote(&who.0))
}

/// Dataplanes have this long to answer an impact query (they walk their flows in
/// slices of a few hundred microseconds).
const IMPACT_TIMEOUT: Duration = Duration::from_secs(10);

async fn impact(State(core): State<Shared>) -> Response {
    let rx = match locked(&core).map(|mut c| c.start_impact()) {
        Ok(Ok(rx)) => rx,
        Ok(Err(e)) => return op_error(&e),
        Err(r) => return r,
    };
    match tokio::time::timeout(IMPACT_TIMEOUT, rx).await {
        Ok(Ok(answers)) => {
            let total: u64 = answers.iter().map(|a| a.total).sum();
            Json(json!({ "ok": true, "would_close": total, "dataplanes": answers })).into_response()
        }
        Ok(Err(_)) => error(StatusCode::INTERNAL_SERVER_ERROR, "the query was dropped"),
        Err(_) => error(
            StatusCode::GATEWAY_TIMEOUT,
            "not every dataplane answered within 10 s",
        ),
    }
}

/// `90s`, `15m`, `2h`, `7d` (one number, one unit) in seconds.
pub fn parse_duration(text: &str) -> Option<u64> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit())?;
    let (n, unit) = t.split_at(split);
    let n: u64 = n.parse().ok()?;
    let mul = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3_600,
        "d" => 86_400,
        _ => return None,
    };
    n.checked_mul(mul).filter(|s| *s > 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_and_tokens() {
        assert_eq!(parse_duration("90s"), Some(90));
        assert_eq!(parse_duration("15m"), Some(900));
        assert_eq!(parse_duration("2h"), Some(7_200));
        assert_eq!(parse_duration("0s"), None);
        assert_eq!(parse_duration("2"), None);
        assert_eq!(parse_duration("h"), None);
        assert_eq!(parse_duration("2w"), None);
        let t = Tokens(HashMap::from([(
            "s3cret-token-value".to_string(),
            "siem".to_string(),
        )]));
        assert_eq!(t.name_of("s3cret-token-value"), Some("siem"));
        assert_eq!(t.name_of("s3cret-token-valuf"), None);
        assert_eq!(t.name_of(""), None);
    }
}
