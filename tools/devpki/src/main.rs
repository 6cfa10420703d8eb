//! `zgate-devpki --out DIR`: write a throwaway PKI for tests, the demo and benchmarks.
//!
//! Files: `ca.pem`/`ca.key`; `server.pem`/`server.key` (SAN `localhost`, `127.0.0.1`);
//! one `client-N.pem`/`client-N.key` per `--client SPIFFE_ID`; with `--bad`, one
//! `bad-<class>.pem`/`.key` per bad class, `untrusted.pem`/`.key` (valid SVID from
//! another CA), `revoked.pem`/`.key` and `crl.pem` revoking it. With `--partner TD`, a
//! second trust domain's CA: `partner-ca.pem`/`.key`, `partner-client.pem`/`.key`
//! (`spiffe://TD/client`, from the partner CA) and `partner-forged.pem`/`.key` (the
//! first `--client` ID, issued by the partner CA: a listener with per-trust-domain
//! bundles must refuse it). Never for production.
#![forbid(unsafe_code)]

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{SystemTime, UNIX_EPOCH};

use clap::Parser;
use zgate_devpki::{Bad, Ca, ClientSpec, Leaf, PkiError};

#[derive(Parser)]
#[command(
    name = "zgate-devpki",
    about = "Write a throwaway dev PKI (never for production)"
)]
struct Cli {
    /// Directory to write into (created if missing).
    #[arg(long)]
    out: PathBuf,
    /// SPIFFE IDs to issue client certificates for.
    #[arg(long, default_value = "spiffe://zgate.test/client")]
    client: Vec<String>,
    /// Extra DNS names for the server certificate (`localhost` is always there).
    #[arg(long)]
    dns: Vec<String>,
    /// Also write every class of bad client certificate, an untrusted one, and a CRL.
    #[arg(long)]
    bad: bool,
    /// Also write a second CA for this trust domain (e.g. `partner.example`), one SVID
    /// it issues for its own domain and one it forges for the first `--client` ID.
    #[arg(long)]
    partner: Option<String>,
}

#[derive(Debug, thiserror::Error)]
enum Error {
    #[error(transparent)]
    Pki(#[from] PkiError),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

fn write(dir: &Path, name: &str, text: &str) -> Result<(), Error> {
    let path = dir.join(name);
    std::fs::write(&path, text).map_err(|source| Error::Io { path, source })
}

fn write_leaf(dir: &Path, stem: &str, leaf: &Leaf) -> Result<(), Error> {
    write(dir, &format!("{stem}.pem"), &leaf.chain_pem)?;
    write(dir, &format!("{stem}.key"), &leaf.key_pem)
}

fn run(cli: &Cli) -> Result<(), Error> {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(0))
        .unwrap_or(0);
    std::fs::create_dir_all(&cli.out).map_err(|source| Error::Io {
        path: cli.out.clone(),
        source,
    })?;
    let dir = cli.out.as_path();
    let ca = Ca::new("zgate dev CA", now)?;
    write(dir, "ca.pem", ca.cert_pem())?;
    write(dir, "ca.key", ca.key_pem())?;
    let mut dns: Vec<&str> = vec!["localhost"];
    dns.extend(cli.dns.iter().map(String::as_str));
    let server = ca.server(&dns, &[std::net::IpAddr::from([127, 0, 0, 1])], now)?;
    write_leaf(dir, "server", &server)?;
    for (i, id) in cli.client.iter().enumerate() {
        write_leaf(
            dir,
            &format!("client-{i}"),
            &ca.client(&ClientSpec::spiffe(id), now)?,
        )?;
    }
    if cli.bad {
        let id = cli
            .client
            .first()
            .map_or("spiffe://zgate.test/client", String::as_str);
        for b in Bad::ALL {
            write_leaf(
                dir,
                &format!("bad-{}", b.name()),
                &ca.client(&b.spec(id), now)?,
            )?;
        }
        let other = Ca::new("untrusted CA", now)?;
        write_leaf(
            dir,
            "untrusted",
            &other.client(&ClientSpec::spiffe(id), now)?,
        )?;
        let revoked = ca.client(&ClientSpec::spiffe(id), now)?;
        write_leaf(dir, "revoked", &revoked)?;
        write(dir, "crl.pem", &ca.crl(&[&revoked], now)?)?;
    }
    if let Some(td) = &cli.partner {
        let partner = Ca::new(&format!("{td} dev CA"), now)?;
        write(dir, "partner-ca.pem", partner.cert_pem())?;
        write(dir, "partner-ca.key", partner.key_pem())?;
        let own = format!("spiffe://{td}/client");
        write_leaf(
            dir,
            "partner-client",
            &partner.client(&ClientSpec::spiffe(&own), now)?,
        )?;
        let id = cli
            .client
            .first()
            .map_or("spiffe://zgate.test/client", String::as_str);
        write_leaf(
            dir,
            "partner-forged",
            &partner.client(&ClientSpec::spiffe(id), now)?,
        )?;
    }
    println!("zgate-devpki: wrote a dev PKI to {}", dir.display());
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(&cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("zgate-devpki: {e}");
            ExitCode::FAILURE
        }
    }
}
