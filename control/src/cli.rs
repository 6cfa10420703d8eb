//! Command-line surface and the commands behind it.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use zgate_table::DecisionTable;

use crate::cases::{self, FlowSpec};
use crate::explain;
use crate::load;

/// Largest table file `inspect` reads: far above any real table (100,000 rules is a
/// few tens of MiB), low enough that a wrong path cannot eat the machine's memory.
const MAX_TABLE_FILE_BYTES: u64 = 1024 * 1024 * 1024;

/// zgate-control: the control process (`serve`) and its CLI; compile, check, explain
/// and test zgate policy.
#[derive(Debug, Parser)]
#[command(name = "zgate-control", version, about)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Validate a policy directory and print every error and warning.
    Check {
        /// Policy directory (every *.toml file below it).
        dir: PathBuf,
        /// Treat warnings as errors (exit 65 when there are any).
        #[arg(long)]
        deny_warnings: bool,
    },
    /// Compile a policy directory into a binary decision table.
    Compile {
        /// Policy directory.
        dir: PathBuf,
        /// Output table file.
        #[arg(short, long)]
        output: PathBuf,
        /// Policy version stamped into the table (monotonic; the dataplane reports it).
        #[arg(long, default_value_t = 1)]
        policy_version: u64,
    },
    /// Decide one flow and say why each other candidate rule did not match.
    Explain {
        /// Policy directory.
        dir: PathBuf,
        #[command(flatten)]
        flow: Box<FlowArgs>,
    },
    /// Run policy unit tests: flows with expected decisions.
    Test {
        /// Policy directory.
        dir: PathBuf,
        /// Cases file (TOML, see docs/policy.md).
        cases: PathBuf,
    },
    /// Verify a table file and print its header.
    Inspect {
        /// Table file written by `compile`.
        table: PathBuf,
    },
    /// Run the control process: watch and compile the policy, keep live facts, serve
    /// the dataplanes and the operators.
    Serve(Box<ServeArgs>),
    /// What the control process enforces, its last policy error, and every connected
    /// gateway with the versions it enforces.
    Status {
        #[command(flatten)]
        at: crate::ops::Socket,
        /// Print the raw JSON.
        #[arg(long)]
        json: bool,
    },
    /// The compiled tables kept (for `rollback`).
    History {
        #[command(flatten)]
        at: crate::ops::Socket,
    },
    /// Re-publish a kept table under a new version (default: the one before the
    /// enforced one).
    Rollback {
        #[command(flatten)]
        at: crate::ops::Socket,
        /// The version to go back to.
        version: Option<u64>,
    },
    /// Revoke a principal or a certificate: its live flows are closed at once.
    Revoke {
        #[command(flatten)]
        at: crate::ops::Socket,
        #[command(flatten)]
        subject: crate::ops::Revocable,
        /// Why (kept and audited).
        #[arg(long)]
        reason: Option<String>,
        /// Lift it by itself at this instant (RFC 3339).
        #[arg(long, conflicts_with = "for_")]
        until: Option<String>,
        /// Lift it by itself after this long (90s, 15m, 2h, 7d).
        #[arg(long = "for")]
        for_: Option<String>,
    },
    /// Lift a revocation.
    Unrevoke {
        #[command(flatten)]
        at: crate::ops::Socket,
        #[command(flatten)]
        subject: crate::ops::Revocable,
    },
    /// The revocations in force.
    Revocations {
        #[command(flatten)]
        at: crate::ops::Socket,
    },
    /// Device posture: `set DEVICE key=value...`, `clear DEVICE`, `list`.
    Posture {
        #[command(flatten)]
        at: crate::ops::Socket,
        #[command(subcommand)]
        op: crate::ops::PostureOp,
    },
    /// Risk scores: `set (--principal ID | --device D) SCORE`, `clear ...`, `list`.
    Risk {
        #[command(flatten)]
        at: crate::ops::Socket,
        #[command(subcommand)]
        op: crate::ops::RiskOp,
    },
    /// Just-in-time access: the principal may reach the service for a while, then
    /// its flows are closed.
    Grant {
        #[command(flatten)]
        at: crate::ops::Socket,
        /// SPIFFE ID.
        #[arg(long)]
        principal: String,
        /// Service (listener name).
        #[arg(long)]
        service: String,
        /// How long (90s, 15m, 2h).
        #[arg(long = "for")]
        for_: String,
        /// The ticket it answers.
        #[arg(long)]
        reason: String,
    },
    /// The grants in force.
    Grants {
        #[command(flatten)]
        at: crate::ops::Socket,
    },
    /// End a grant now.
    Ungrant {
        #[command(flatten)]
        at: crate::ops::Socket,
        /// SPIFFE ID.
        #[arg(long)]
        principal: String,
        /// Service.
        #[arg(long)]
        service: String,
    },
    /// Evaluate a candidate policy in shadow on every gateway (nothing enforced).
    Apply {
        #[command(flatten)]
        at: crate::ops::Socket,
        /// The candidate policy directory (compiled here, then sent).
        #[arg(long)]
        shadow: PathBuf,
    },
    /// Stop evaluating the shadow table.
    ShadowClear {
        #[command(flatten)]
        at: crate::ops::Socket,
    },
    /// The live flows the shadow table would close, on every gateway.
    Impact {
        #[command(flatten)]
        at: crate::ops::Socket,
        /// Print the raw JSON.
        #[arg(long)]
        json: bool,
    },
    /// Enforce the shadow table.
    Promote {
        #[command(flatten)]
        at: crate::ops::Socket,
    },
}

/// `serve`'s flags.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Policy directory to watch.
    #[arg(long)]
    policy_dir: PathBuf,
    /// State directory: facts, table history, audit.
    #[arg(long)]
    state_dir: PathBuf,
    /// Operator socket (the CLI and scripts).
    #[arg(long, default_value = crate::ops::DEFAULT_SOCKET)]
    socket: PathBuf,
    /// Channel socket the gateways subscribe on.
    #[arg(long, default_value = "/run/zgate-control/channel.sock")]
    channel: PathBuf,
    /// Admit this user (name or uid) on both sockets, beside root and our own uid.
    #[arg(long)]
    admit: Vec<String>,
    /// Serve the HTTP/JSON API on this loopback address (needs --api-tokens).
    #[arg(long)]
    api: Option<std::net::SocketAddr>,
    /// The API's bearer tokens: `NAME TOKEN` per line, mode 600.
    #[arg(long)]
    api_tokens: Option<PathBuf>,
    /// Compiled tables kept for rollback.
    #[arg(long, default_value_t = 20)]
    keep: usize,
    /// Audit file (default STATE_DIR/audit.jsonl).
    #[arg(long)]
    audit: Option<PathBuf>,
    /// Where the facts live: `file` (STATE_DIR/facts.json, one control process) or
    /// `etcd` (shared by a fleet; build with `--features etcd`).
    #[arg(long, default_value = "file")]
    store: String,
    /// etcd client URLs, comma separated (with --store etcd).
    #[arg(long, value_delimiter = ',')]
    etcd_endpoints: Vec<String>,
    /// Key prefix in etcd.
    #[arg(long, default_value = "/zgate")]
    etcd_prefix: String,
    /// PEM CA bundle the etcd members' certificates chain to (with https:// endpoints).
    #[arg(long)]
    etcd_ca: Option<PathBuf>,
    /// PEM certificate this control process shows etcd (its --client-cert-auth).
    #[arg(long, requires = "etcd_key")]
    etcd_cert: Option<PathBuf>,
    /// PEM private key of --etcd-cert.
    #[arg(long, requires = "etcd_cert")]
    etcd_key: Option<PathBuf>,
}

/// One flow described on the command line.
#[derive(Debug, Args)]
struct FlowArgs {
    /// Service (listener name).
    #[arg(long)]
    service: String,
    /// Client source address (IP, or IP:port).
    #[arg(long)]
    source: String,
    /// Client SPIFFE ID; omit for an anonymous client.
    #[arg(long)]
    principal: Option<String>,
    /// DNS SAN of the client certificate (repeatable).
    #[arg(long = "dns")]
    dns_sans: Vec<String>,
    /// Subject common name of the client certificate.
    #[arg(long)]
    cn: Option<String>,
    /// SHA-256 fingerprint of the client certificate (64 hex digits).
    #[arg(long)]
    fingerprint: Option<String>,
    /// TLS SNI the client sent.
    #[arg(long)]
    sni: Option<String>,
    /// Negotiated ALPN protocol.
    #[arg(long)]
    alpn: Option<String>,
    /// Device id from the certificate.
    #[arg(long)]
    device: Option<String>,
    /// Certificate age, e.g. 2h.
    #[arg(long)]
    cert_age: Option<String>,
    /// Decision instant, RFC 3339 (default: now).
    #[arg(long)]
    at: Option<String>,
}

/// Everything that can stop a command, with the input it was about.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// A file or directory could not be read.
    #[error("cannot read `{path}`: {source}")]
    Read {
        /// What we tried to read.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The policy path is not a directory.
    #[error("`{0}` is not a directory: a policy is a directory of *.toml files")]
    NotADirectory(PathBuf),
    /// No policy files at all: refusing to compile an empty (deny-all) policy by accident.
    #[error("`{0}` holds no *.toml policy files")]
    EmptyPolicyDir(PathBuf),
    /// A file is not UTF-8 text.
    #[error("`{0}` is not UTF-8 text")]
    NotUtf8(PathBuf),
    /// A file is larger than we are willing to read.
    #[error("`{path}` is {size} bytes, more than the {limit} bytes allowed")]
    TooLarge {
        /// The file.
        path: PathBuf,
        /// Its size.
        size: u64,
        /// The limit.
        limit: u64,
    },
    /// The policy has errors (already printed, one per line).
    #[error("policy `{dir}` is invalid: {count} error(s)")]
    InvalidPolicy {
        /// Policy directory.
        dir: PathBuf,
        /// How many errors were printed.
        count: usize,
    },
    /// `check --deny-warnings` found warnings.
    #[error("policy `{dir}` has {count} warning(s) and --deny-warnings is set")]
    Warnings {
        /// Policy directory.
        dir: PathBuf,
        /// How many warnings were printed.
        count: usize,
    },
    /// The compiler refused the policy.
    #[error("cannot compile policy `{dir}`: {source}")]
    Compile {
        /// Policy directory.
        dir: PathBuf,
        /// Why.
        source: zgate_table::CompileError,
    },
    /// The output file could not be written.
    #[error("cannot write `{path}`: {source}")]
    Write {
        /// The output path.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// A table file failed verification.
    #[error("table `{path}` rejected: {source}")]
    BadTable {
        /// The table file.
        path: PathBuf,
        /// Why.
        source: zgate_table::LoadError,
    },
    /// A flow argument or a cases file is malformed.
    #[error("{0}")]
    Input(#[from] cases::InputError),
    /// The control process refused or could not be reached.
    #[error(transparent)]
    Client(#[from] crate::client::ClientError),
    /// `serve` could not run.
    #[error(transparent)]
    Serve(#[from] crate::serve::ServeError),
    /// A command-line value is wrong.
    #[error("{0}")]
    Usage(String),
    /// Some policy tests failed (already reported).
    #[error("{failed} of {total} policy test case(s) failed")]
    TestsFailed {
        /// Failed cases.
        failed: usize,
        /// All cases.
        total: usize,
    },
}

impl CliError {
    /// The process exit code for this error (sysexits).
    pub fn exit_code(&self) -> u8 {
        match self {
            CliError::TestsFailed { .. } => 1,
            CliError::Read { .. } | CliError::NotADirectory(_) => 66,
            CliError::Write { .. } => 73,
            CliError::Client(e) => e.exit_code(),
            CliError::Serve(e) => e.exit_code(),
            CliError::Usage(_) => 2,
            _ => 65,
        }
    }
}

/// Runs the parsed command line.
pub fn run(cli: Cli) -> Result<ExitCode, CliError> {
    match cli.command {
        Command::Check { dir, deny_warnings } => check(&dir, deny_warnings),
        Command::Compile {
            dir,
            output,
            policy_version,
        } => compile(&dir, &output, policy_version),
        Command::Explain { dir, flow } => {
            let spec = flow_spec_from_args(*flow)?;
            explain_flow(&dir, &spec)
        }
        Command::Test { dir, cases } => run_tests(&dir, &cases),
        Command::Inspect { table } => inspect(&table),
        Command::Serve(a) => serve(*a),
        Command::Status { at, json } => crate::ops::status(&at, json),
        Command::History { at } => crate::ops::history(&at),
        Command::Rollback { at, version } => crate::ops::rollback(&at, version),
        Command::Revoke {
            at,
            subject,
            reason,
            until,
            for_,
        } => crate::ops::revoke(&at, subject, reason, until, for_),
        Command::Unrevoke { at, subject } => crate::ops::unrevoke(&at, subject),
        Command::Revocations { at } => crate::ops::list(&at, "/v1/revocations"),
        Command::Posture { at, op } => crate::ops::posture(&at, op),
        Command::Risk { at, op } => crate::ops::risk(&at, op),
        Command::Grant {
            at,
            principal,
            service,
            for_,
            reason,
        } => crate::ops::grant(&at, &principal, &service, &for_, &reason),
        Command::Grants { at } => crate::ops::list(&at, "/v1/grants"),
        Command::Ungrant {
            at,
            principal,
            service,
        } => crate::ops::ungrant(&at, &principal, &service),
        Command::Apply { at, shadow } => {
            let (_, table) = compile_table(&shadow, 0)?;
            crate::ops::apply_shadow(&at, &shadow, table.encode())
        }
        Command::ShadowClear { at } => crate::ops::shadow_clear(&at),
        Command::Impact { at, json } => crate::ops::impact(&at, json),
        Command::Promote { at } => crate::ops::promote(&at),
    }
}

/// TLS to etcd, from the flags: `https://` endpoints need the CA, plain ones take no
/// TLS flag (one scheme for all, so no member is reached in the clear by mistake).
fn etcd_tls(a: &ServeArgs) -> Result<Option<crate::serve::EtcdTls>, CliError> {
    let https = a
        .etcd_endpoints
        .iter()
        .filter(|e| e.starts_with("https://"))
        .count();
    let usage = |m: &str| Err(CliError::Usage(m.into()));
    if https != 0 && https != a.etcd_endpoints.len() {
        return usage("--etcd-endpoints: all https:// or none");
    }
    match (&a.etcd_ca, https > 0) {
        (None, false) if a.etcd_cert.is_none() => Ok(None),
        (None, false) => usage("--etcd-cert is for https:// endpoints"),
        (Some(_), false) => usage("--etcd-ca is for https:// endpoints"),
        (None, true) => {
            usage("https:// endpoints need --etcd-ca (the CA of the members' certificates)")
        }
        (Some(ca), true) => Ok(Some(crate::serve::EtcdTls {
            ca: ca.clone(),
            identity: a.etcd_cert.clone().zip(a.etcd_key.clone()),
        })),
    }
}

fn serve(a: ServeArgs) -> Result<ExitCode, CliError> {
    let mut admit = Vec::with_capacity(a.admit.len());
    for u in &a.admit {
        admit.push(
            crate::serve::resolve_user(u)
                .ok_or_else(|| CliError::Usage(format!("--admit `{u}`: no such user")))?,
        );
    }
    let store = match a.store.as_str() {
        "file" => crate::serve::StoreChoice::File,
        "etcd" if a.etcd_endpoints.is_empty() => {
            return Err(CliError::Usage(
                "--store etcd needs --etcd-endpoints".into(),
            ))
        }
        "etcd" => crate::serve::StoreChoice::Etcd {
            endpoints: a.etcd_endpoints.clone(),
            prefix: a.etcd_prefix.clone(),
            tls: etcd_tls(&a)?,
        },
        other => {
            return Err(CliError::Usage(format!(
                "--store `{other}`: expected `file` or `etcd`"
            )))
        }
    };
    crate::serve::run(crate::serve::ServeOptions {
        policy_dir: a.policy_dir,
        state_dir: a.state_dir,
        socket: a.socket,
        channel: a.channel,
        admit,
        api: a.api,
        api_tokens: a.api_tokens,
        keep: a.keep,
        audit: a.audit,
        store,
    })?;
    Ok(ExitCode::SUCCESS)
}

fn print_warnings(dir: &Path, warnings: &[zgate_policy::Warning]) {
    for w in warnings {
        eprintln!("{}/{w}", dir.display());
    }
}

fn check(dir: &Path, deny_warnings: bool) -> Result<ExitCode, CliError> {
    let checked = load::load_policy(dir)?;
    print_warnings(dir, &checked.warnings);
    let policy = &checked.policy;
    println!(
        "policy `{}` is valid: {} rule(s), {} group(s), {} declared service(s), {} warning(s)",
        dir.display(),
        policy.rules.len(),
        policy.groups.len(),
        policy.services.len(),
        checked.warnings.len()
    );
    if deny_warnings && !checked.warnings.is_empty() {
        return Err(CliError::Warnings {
            dir: dir.to_path_buf(),
            count: checked.warnings.len(),
        });
    }
    Ok(ExitCode::SUCCESS)
}

fn compile_table(
    dir: &Path,
    version: u64,
) -> Result<(zgate_policy::Checked, DecisionTable), CliError> {
    let checked = load::load_policy(dir)?;
    print_warnings(dir, &checked.warnings);
    let table =
        DecisionTable::compile(&checked.policy, version).map_err(|source| CliError::Compile {
            dir: dir.to_path_buf(),
            source,
        })?;
    Ok((checked, table))
}

fn compile(dir: &Path, output: &Path, version: u64) -> Result<ExitCode, CliError> {
    let (_, table) = compile_table(dir, version)?;
    let bytes = table.encode();
    write_atomically(output, &bytes)?;
    println!(
        "wrote `{}`: {} rule(s), policy version {}, policy sha256 {}, {} bytes",
        output.display(),
        table.rule_count(),
        table.version(),
        hex(table.policy_hash()),
        bytes.len()
    );
    Ok(ExitCode::SUCCESS)
}

/// Writes to a temporary file beside `path`, syncs, then renames over it, so a
/// dataplane reloading the table never reads a half-written file.
fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), CliError> {
    let write_err = |source| CliError::Write {
        path: path.to_path_buf(),
        source,
    };
    let mut tmp_name = path.file_name().unwrap_or_default().to_os_string();
    tmp_name.push(".tmp");
    let tmp = path.with_file_name(tmp_name);
    let mut file = fs::File::create(&tmp).map_err(write_err)?;
    file.write_all(bytes).map_err(write_err)?;
    file.sync_all().map_err(write_err)?;
    fs::rename(&tmp, path).map_err(write_err)
}

fn inspect(path: &Path) -> Result<ExitCode, CliError> {
    let bytes = load::read_bytes(path, MAX_TABLE_FILE_BYTES)?;
    let table = DecisionTable::decode(&bytes).map_err(|source| CliError::BadTable {
        path: path.to_path_buf(),
        source,
    })?;
    println!("table `{}` verified", path.display());
    println!("  policy version: {}", table.version());
    println!("  policy sha256:  {}", hex(table.policy_hash()));
    println!("  rules:          {}", table.rule_count());
    let services: Vec<&str> = table.service_names().collect();
    println!("  services:       {}", services.join(", "));
    println!("  memory:         {} bytes", table.heap_bytes());
    Ok(ExitCode::SUCCESS)
}

fn flow_spec_from_args(a: FlowArgs) -> Result<FlowSpec, CliError> {
    Ok(FlowSpec::parse(cases::RawFlow {
        service: Some(a.service),
        source: Some(a.source),
        principal: a.principal,
        dns: a.dns_sans,
        cn: a.cn,
        fingerprint: a.fingerprint,
        sni: a.sni,
        alpn: a.alpn,
        device: a.device,
        cert_age: a.cert_age,
        at: a.at,
    })?)
}

fn explain_flow(dir: &Path, spec: &FlowSpec) -> Result<ExitCode, CliError> {
    let (checked, table) = compile_table(dir, 0)?;
    let live = zgate_table::LiveFacts::default();
    let report = explain::explain(&checked.policy, &table, spec, &live);
    print!("{report}");
    Ok(ExitCode::SUCCESS)
}

fn run_tests(dir: &Path, cases_path: &Path) -> Result<ExitCode, CliError> {
    let (checked, table) = compile_table(dir, 0)?;
    let text = load::read_text(cases_path, 64 * 1024 * 1024)?;
    let file_name = cases_path.display().to_string();
    let cases = cases::parse_cases(&file_name, &text)?;
    let total = cases.len();
    let mut failed = 0;
    for case in &cases {
        match explain::run_case(&checked.policy, &table, case) {
            Ok(()) => println!("ok   {}", case.name),
            Err(report) => {
                failed += 1;
                println!("FAIL {} ({file_name}:{})", case.name, case.line);
                print!("{report}");
            }
        }
    }
    println!("{} passed, {failed} failed", total - failed);
    if failed > 0 {
        return Err(CliError::TestsFailed { failed, total });
    }
    Ok(ExitCode::SUCCESS)
}

/// Lowercase hex of a byte string.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
