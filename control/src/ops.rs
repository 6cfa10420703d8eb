//! The operator commands: each is one request to the running control process
//! ([`crate::client`]), printed for a person (or as JSON with `--json`).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Args, Subcommand};
use hyper::Method;
use serde_json::{json, Value};

use crate::cli::CliError;
use crate::client::{request, Body};

/// Where `serve` listens for operators by default.
pub const DEFAULT_SOCKET: &str = "/run/zgate-control/control.sock";

/// The operator socket to talk to.
#[derive(Debug, Args)]
pub struct Socket {
    /// The control process's operator socket.
    #[arg(long, global = true, env = "ZGATE_CONTROL_SOCKET", default_value = DEFAULT_SOCKET)]
    socket: PathBuf,
}

/// A principal or a certificate.
#[derive(Debug, Args)]
#[group(required = true, multiple = false)]
pub struct Revocable {
    /// SPIFFE ID.
    #[arg(long)]
    principal: Option<String>,
    /// SHA-256 of the certificate (64 hex digits, colons allowed).
    #[arg(long)]
    fingerprint: Option<String>,
}

impl Revocable {
    fn json(&self) -> Value {
        match (&self.principal, &self.fingerprint) {
            (Some(p), _) => json!({ "principal": p }),
            (_, Some(f)) => json!({ "fingerprint": f }),
            _ => json!({}),
        }
    }
}

/// A principal or a device.
#[derive(Debug, Args)]
#[group(required = true, multiple = false)]
pub struct Scored {
    /// SPIFFE ID.
    #[arg(long)]
    principal: Option<String>,
    /// Device id.
    #[arg(long)]
    device: Option<String>,
}

impl Scored {
    fn json(&self) -> Value {
        match (&self.principal, &self.device) {
            (Some(p), _) => json!({ "principal": p }),
            (_, Some(d)) => json!({ "device": d }),
            _ => json!({}),
        }
    }
}

/// `posture ...`.
#[derive(Debug, Subcommand)]
pub enum PostureOp {
    /// Report a device's posture: managed=, compliant=, edr_running=, compromised=
    /// (true/false), os_patch= (YYYY-MM-DD). Fields not given keep their value.
    Set {
        /// The device id.
        device: String,
        /// key=value pairs.
        #[arg(required = true)]
        fields: Vec<String>,
    },
    /// Forget a device's posture (it then meets no posture requirement).
    Clear {
        /// The device id.
        device: String,
    },
    /// The postures known.
    List,
}

/// `risk ...`.
#[derive(Debug, Subcommand)]
pub enum RiskOp {
    /// Set a risk score, 0 to 100.
    Set {
        #[command(flatten)]
        subject: Scored,
        /// The score.
        score: u8,
    },
    /// Forget a risk score (unknown risk counts as 0).
    Clear {
        #[command(flatten)]
        subject: Scored,
    },
    /// The scores known.
    List,
}

fn call(at: &Socket, method: Method, path: &str, body: Body) -> Result<Value, CliError> {
    Ok(request(&at.socket, method, path, body)?)
}

fn versions(v: &Value) -> String {
    format!(
        "table version {}, facts version {}",
        v.get("table_version")
            .and_then(Value::as_u64)
            .map_or("none".to_string(), |n| n.to_string()),
        v.get("facts_version").and_then(Value::as_u64).unwrap_or(0)
    )
}

fn time(secs: Option<i64>) -> String {
    secs.map_or("-".to_string(), crate::serve::state::rfc3339)
}

/// `status`.
pub fn status(at: &Socket, raw: bool) -> Result<ExitCode, CliError> {
    let v = call(at, Method::GET, "/v1/status", Body::Empty)?;
    if raw {
        println!("{v:#}");
        return Ok(ExitCode::SUCCESS);
    }
    let s = |k: &str| v.get(k).cloned().unwrap_or(Value::Null);
    println!("policy:     {}", s("policy_dir").as_str().unwrap_or("?"));
    println!(
        "enforcing:  table version {}, facts version {} ({} revocation(s), {} posture(s), {} risk score(s), {} grant(s))",
        s("table_version").as_u64().map_or("none".to_string(), |n| n.to_string()),
        s("facts_version"),
        s("revocations"),
        s("postures"),
        s("risk_scores"),
        s("grants"),
    );
    if let Some(sh) = v.get("shadow").filter(|x| !x.is_null()) {
        println!(
            "shadow:     table version {} ({} rules), set by {}",
            sh.get("version").unwrap_or(&Value::Null),
            sh.get("rules").unwrap_or(&Value::Null),
            sh.get("by").and_then(Value::as_str).unwrap_or("?")
        );
    }
    if let Some(pe) = v.get("policy_error").filter(|x| !x.is_null()) {
        println!(
            "policy REFUSED at {} (the enforced table stays):",
            time(pe.get("at").and_then(Value::as_i64))
        );
        for e in pe
            .get("errors")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            println!("  {}", e.as_str().unwrap_or("?"));
        }
    }
    let dps = v
        .get("dataplanes")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    println!("gateways:   {}", dps.len());
    for d in dps {
        let r = d.get("report").cloned().unwrap_or(Value::Null);
        let g = |k: &str| r.get(k).cloned().unwrap_or(Value::Null);
        println!(
            "  {} (pid {}, uid {}): table {}, facts {}, shadow {}, {} flow(s), {} closed by policy{}",
            d.get("name").and_then(Value::as_str).unwrap_or("?"),
            d.get("pid").unwrap_or(&Value::Null),
            d.get("uid").unwrap_or(&Value::Null),
            g("table_version"),
            g("facts_version"),
            g("shadow_version"),
            g("flows"),
            g("closed_by_policy"),
            g("last_error")
                .as_str()
                .map_or(String::new(), |e| format!("; last error: {e}")),
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// `history`.
pub fn history(at: &Socket) -> Result<ExitCode, CliError> {
    let v = call(at, Method::GET, "/v1/history", Body::Empty)?;
    let enforced = v.get("enforced").and_then(Value::as_u64);
    for t in v
        .get("tables")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let ver = t.get("version").and_then(Value::as_u64);
        println!(
            "{} {:>6}  {}  {:>6} rules  {}  {}{}",
            if ver == enforced { "*" } else { " " },
            ver.unwrap_or(0),
            time(t.get("at").and_then(Value::as_i64)),
            t.get("rules").and_then(Value::as_u64).unwrap_or(0),
            t.get("policy_sha256")
                .and_then(Value::as_str)
                .map_or("?", |h| h.get(..12).unwrap_or(h)),
            t.get("source").and_then(Value::as_str).unwrap_or("?"),
            t.get("git_commit")
                .and_then(Value::as_str)
                .map_or(String::new(), |c| format!(
                    " (git {})",
                    c.get(..12).unwrap_or(c)
                )),
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// `rollback`.
pub fn rollback(at: &Socket, version: Option<u64>) -> Result<ExitCode, CliError> {
    let v = call(
        at,
        Method::POST,
        "/v1/rollback",
        Body::Json(json!({ "version": version })),
    )?;
    println!("rolled back: now enforcing {}", versions(&v));
    Ok(ExitCode::SUCCESS)
}

/// `revoke`.
pub fn revoke(
    at: &Socket,
    subject: Revocable,
    reason: Option<String>,
    until: Option<String>,
    for_: Option<String>,
) -> Result<ExitCode, CliError> {
    let mut body = subject.json();
    if let Some(o) = body.as_object_mut() {
        o.insert("reason".into(), json!(reason));
        o.insert("until".into(), json!(until));
        o.insert("for".into(), json!(for_));
    }
    let v = call(at, Method::POST, "/v1/revocations", Body::Json(body))?;
    println!("revoked: {}", versions(&v));
    Ok(ExitCode::SUCCESS)
}

/// `unrevoke`.
pub fn unrevoke(at: &Socket, subject: Revocable) -> Result<ExitCode, CliError> {
    let v = call(at, Method::POST, "/v1/unrevoke", Body::Json(subject.json()))?;
    println!("revocation lifted: {}", versions(&v));
    Ok(ExitCode::SUCCESS)
}

/// A listing, printed as JSON (these feed scripts as often as eyes).
pub fn list(at: &Socket, path: &str) -> Result<ExitCode, CliError> {
    let v = call(at, Method::GET, path, Body::Empty)?;
    println!("{v:#}");
    Ok(ExitCode::SUCCESS)
}

/// `posture ...`.
pub fn posture(at: &Socket, op: PostureOp) -> Result<ExitCode, CliError> {
    let v = match op {
        PostureOp::List => return list(at, "/v1/posture"),
        PostureOp::Clear { device } => call(
            at,
            Method::POST,
            "/v1/posture/clear",
            Body::Json(json!({ "device": device })),
        )?,
        PostureOp::Set { device, fields } => {
            let mut body = json!({ "device": device });
            for f in &fields {
                let (k, val) = parse_field(f)?;
                if let Some(o) = body.as_object_mut() {
                    o.insert(k, val);
                }
            }
            call(at, Method::POST, "/v1/posture", Body::Json(body))?
        }
    };
    println!("posture recorded: {}", versions(&v));
    Ok(ExitCode::SUCCESS)
}

/// `key=value` of `posture set`.
fn parse_field(f: &str) -> Result<(String, Value), CliError> {
    let bad = |why: &str| CliError::Usage(format!("posture field `{f}`: {why}"));
    let (k, v) = f.split_once('=').ok_or_else(|| bad("expected key=value"))?;
    match k {
        "managed" | "compliant" | "edr_running" | "compromised" => match v {
            "true" | "yes" | "1" => Ok((k.into(), json!(true))),
            "false" | "no" | "0" => Ok((k.into(), json!(false))),
            _ => Err(bad("expected true or false")),
        },
        "os_patch" => {
            let digits: String = v.chars().filter(|c| *c != '-').collect();
            let n: u32 = digits
                .parse()
                .ok()
                .filter(|_| digits.len() == 8)
                .ok_or_else(|| bad("expected a date, YYYY-MM-DD"))?;
            Ok((k.into(), json!(n)))
        }
        _ => Err(bad(
            "unknown key; known: managed, compliant, edr_running, compromised, os_patch",
        )),
    }
}

/// `risk ...`.
pub fn risk(at: &Socket, op: RiskOp) -> Result<ExitCode, CliError> {
    let v = match op {
        RiskOp::List => return list(at, "/v1/risk"),
        RiskOp::Set { subject, score } => {
            let mut body = subject.json();
            if let Some(o) = body.as_object_mut() {
                o.insert("score".into(), json!(score));
            }
            call(at, Method::POST, "/v1/risk", Body::Json(body))?
        }
        RiskOp::Clear { subject } => call(
            at,
            Method::POST,
            "/v1/risk/clear",
            Body::Json(subject.json()),
        )?,
    };
    println!("risk recorded: {}", versions(&v));
    Ok(ExitCode::SUCCESS)
}

/// `grant`.
pub fn grant(
    at: &Socket,
    principal: &str,
    service: &str,
    for_: &str,
    reason: &str,
) -> Result<ExitCode, CliError> {
    let v = call(
        at,
        Method::POST,
        "/v1/grants",
        Body::Json(
            json!({ "principal": principal, "service": service, "for": for_, "reason": reason }),
        ),
    )?;
    println!(
        "granted {principal} on `{service}` for {for_}: {}",
        versions(&v)
    );
    Ok(ExitCode::SUCCESS)
}

/// `ungrant`.
pub fn ungrant(at: &Socket, principal: &str, service: &str) -> Result<ExitCode, CliError> {
    let v = call(
        at,
        Method::POST,
        "/v1/ungrant",
        Body::Json(json!({ "principal": principal, "service": service })),
    )?;
    println!("grant ended: {}", versions(&v));
    Ok(ExitCode::SUCCESS)
}

/// `apply --shadow DIR` (compiled by the caller).
pub fn apply_shadow(at: &Socket, dir: &Path, table: Vec<u8>) -> Result<ExitCode, CliError> {
    let v = call(at, Method::POST, "/v1/shadow", Body::Bytes(table))?;
    println!(
        "`{}` evaluated in shadow as table version {} (nothing enforced); see `zgate-control impact`",
        dir.display(),
        v.get("shadow_version").unwrap_or(&Value::Null)
    );
    Ok(ExitCode::SUCCESS)
}

/// `shadow-clear`.
pub fn shadow_clear(at: &Socket) -> Result<ExitCode, CliError> {
    call(at, Method::POST, "/v1/shadow/clear", Body::Empty)?;
    println!("shadow table withdrawn");
    Ok(ExitCode::SUCCESS)
}

/// `impact`.
pub fn impact(at: &Socket, raw: bool) -> Result<ExitCode, CliError> {
    let v = call(at, Method::GET, "/v1/impact", Body::Empty)?;
    if raw {
        println!("{v:#}");
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "the shadow table would close {} live flow(s)",
        v.get("would_close").and_then(Value::as_u64).unwrap_or(0)
    );
    for d in v
        .get("dataplanes")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let name = d.get("dataplane").and_then(Value::as_str).unwrap_or("?");
        for f in d
            .get("flows")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let g = |k: &str| f.get(k).and_then(Value::as_str).unwrap_or("-");
            println!(
                "  {name}  listener {}  {}  from {}  rule {} ({})",
                g("listener"),
                g("principal"),
                g("source"),
                g("rule"),
                g("reason")
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `promote`.
pub fn promote(at: &Socket) -> Result<ExitCode, CliError> {
    let v = call(at, Method::POST, "/v1/promote", Body::Empty)?;
    println!("shadow table promoted: now enforcing {}", versions(&v));
    Ok(ExitCode::SUCCESS)
}
