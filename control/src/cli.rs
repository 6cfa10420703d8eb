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

/// zgate-control: compile, check, explain and test zgate policy.
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
    }
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
