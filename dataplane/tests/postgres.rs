//! `protocol = "postgres"` end to end: a real PostgreSQL server (plaintext, on loopback)
//! behind the real `zgate` binary, reached by real `psql` and `pgbench` with
//! `sslmode=verify-full` and a client SVID, plus raw-socket and rustls clients for the
//! preamble cases libpq 15 cannot produce (direct TLS, GSSENCRequest first, bytes
//! stuffed after the SSLRequest). The PostgreSQL binaries come from the Debian
//! `postgresql` package, which `tools/test` installs; when missing, the tests fail.
#![expect(
    clippy::disallowed_methods,
    reason = "tests wait on real processes: wall-clock deadlines and short sleeps are the point"
)]

#[cfg(test)]
mod common;

#[cfg(test)]
mod postgres {
    use std::io::{Read, Write};
    use std::net::{SocketAddr, TcpStream};
    use std::os::unix::fs::PermissionsExt;
    use std::os::unix::process::CommandExt;
    use std::path::{Path, PathBuf};
    use std::process::{Child, Command, Output, Stdio};
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    use rustls::pki_types::ServerName;
    use rustls::{ClientConfig, ClientConnection, StreamOwned};
    use zgate_devpki::ClientSpec;

    use super::common::pki::{client_config, trading_only, Pki, TRADING};
    use super::common::*;

    const OTHER: &str = "spiffe://corp.example/ns/marketing/sa/web";

    /// The newest PostgreSQL server binaries installed (`/usr/lib/postgresql/N/bin`).
    fn pg_bindir() -> PathBuf {
        let mut dirs: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
            .map(|rd| {
                rd.filter_map(Result::ok)
                    .filter_map(|e| {
                        let v = e.file_name().to_str()?.parse().ok()?;
                        let bin = e.path().join("bin");
                        bin.join("initdb").exists().then_some((v, bin))
                    })
                    .collect()
            })
            .unwrap_or_default();
        dirs.sort();
        dirs.pop()
            .unwrap_or_else(|| {
                panic!("PostgreSQL server binaries not found under /usr/lib/postgresql: install the `postgresql` package (tools/test does)")
            })
            .1
    }

    fn id_of(flag: &str, user: &str) -> u32 {
        let out = Command::new("id").args([flag, user]).output().unwrap();
        assert!(out.status.success(), "no `{user}` user");
        String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
    }

    /// A PostgreSQL server on a loopback port, trust authentication, killed on drop.
    /// PostgreSQL refuses to run as root: as root it runs as the `postgres` user the
    /// Debian package creates.
    struct Postgres {
        child: Child,
        addr: SocketAddr,
        _dir: tempfile::TempDir,
    }

    impl Postgres {
        fn start() -> Postgres {
            let bin = pg_bindir();
            let dir = tempfile::tempdir().unwrap();
            let data = dir.path().join("data");
            let postgres_user =
                running_as_root().then(|| (id_of("-u", "postgres"), id_of("-g", "postgres")));
            if let Some((uid, gid)) = postgres_user {
                std::os::unix::fs::chown(dir.path(), Some(uid), Some(gid)).unwrap();
            }
            let as_user = |cmd: &mut Command| {
                if let Some((uid, gid)) = postgres_user {
                    cmd.uid(uid).gid(gid);
                }
            };
            let mut initdb = Command::new(bin.join("initdb"));
            initdb
                .arg("-D")
                .arg(&data)
                .args(["-U", "postgres", "-A", "trust", "-E", "UTF8", "--no-sync"])
                .stdout(Stdio::null())
                .stderr(Stdio::piped());
            as_user(&mut initdb);
            let out = initdb.output().unwrap();
            assert!(
                out.status.success(),
                "initdb failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            let port = free_port();
            let mut server = Command::new(bin.join("postgres"));
            server
                .arg("-D")
                .arg(&data)
                .args(["-p", &port.to_string(), "-c", "listen_addresses=127.0.0.1"])
                .arg("-k")
                .arg(&data)
                .args(["-c", "fsync=off", "-c", "max_connections=40"])
                .stdout(Stdio::null())
                .stderr(Stdio::null());
            as_user(&mut server);
            let child = server.spawn().unwrap();
            let addr = SocketAddr::from(([127, 0, 0, 1], port));
            let deadline = Instant::now() + WAIT;
            while TcpStream::connect(addr).is_err() {
                assert!(Instant::now() < deadline, "postgres did not start");
                std::thread::sleep(Duration::from_millis(50));
            }
            Postgres {
                child,
                addr,
                _dir: dir,
            }
        }
    }

    impl Drop for Postgres {
        fn drop(&mut self) {
            // SIGINT: PostgreSQL's fast shutdown (its backends exit with it).
            let _ = Command::new("kill")
                .args(["-INT", &self.child.id().to_string()])
                .status();
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = self.child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }

    /// Whether this process runs as root (PostgreSQL must then be run as `postgres`).
    fn running_as_root() -> bool {
        let out = Command::new("id").arg("-u").output().unwrap();
        String::from_utf8_lossy(&out.stdout).trim() == "0"
    }

    /// zgate with a `protocol = "postgres"` listener in front of `pg`.
    fn pg_gateway(pki: &Pki, pg: &Postgres) -> Gateway {
        let mut setup = Setup::new(pg.addr);
        setup.table = Some(trading_only());
        setup.listener_extra = format!("protocol = \"postgres\"\n{}", pki.listener_tls(""));
        Gateway::start(&setup)
    }

    /// Client certificate and key files for `id` (the key mode libpq insists on).
    fn client_files(pki: &Pki, name: &str, id: &str) -> (PathBuf, PathBuf) {
        let (cert, key) = pki.write_leaf(name, &pki.client(&ClientSpec::spiffe(id)));
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
        (cert, key)
    }

    fn conninfo(gw: &Gateway, pki: &Pki, cert: &Path, key: &Path, sslmode: &str) -> String {
        format!(
            "host=localhost hostaddr=127.0.0.1 port={} dbname=postgres user=postgres \
             sslmode={sslmode} sslrootcert={} sslcert={} sslkey={} connect_timeout=10 gssencmode=disable",
            gw.listen.port(),
            pki.path("ca.pem").display(),
            cert.display(),
            key.display()
        )
    }

    fn require(bin: &Path) {
        assert!(
            bin.exists(),
            "{} is missing: install the `postgresql` package (tools/test does)",
            bin.display()
        );
    }

    fn psql(conninfo: &str, sql: &str) -> Output {
        let bin = pg_bindir().join("psql");
        require(&bin);
        Command::new(bin)
            .args([
                "-X",
                "-A",
                "-t",
                "-v",
                "ON_ERROR_STOP=1",
                "-d",
                conninfo,
                "-c",
                sql,
            ])
            .stdin(Stdio::null())
            .output()
            .unwrap()
    }

    fn text(o: &Output) -> String {
        format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        )
    }

    #[test]
    fn psql_with_verify_full_and_an_allowed_svid_round_trips_values() {
        let pg = Postgres::start();
        let pki = Pki::new(&[]);
        let gw = pg_gateway(&pki, &pg);
        let (cert, key) = client_files(&pki, "pricer", TRADING);
        let ci = conninfo(&gw, &pki, &cert, &key, "verify-full");
        let out = psql(
            &ci,
            "CREATE TABLE quotes (sym text, px numeric); \
             INSERT INTO quotes VALUES ('ES', 5123.25), ('NQ', 18001.5); \
             SELECT string_agg(sym || '=' || px, ',' ORDER BY sym) FROM quotes;",
        );
        assert!(out.status.success(), "{}", text(&out));
        assert!(
            String::from_utf8_lossy(&out.stdout).contains("ES=5123.25,NQ=18001.5"),
            "{}",
            text(&out)
        );
        // Each psql run is its own TLS handshake and its own decision.
        let out = psql(&ci, "SELECT 1");
        assert!(out.status.success(), "{}", text(&out));
        assert!(gw.metric("zgate_tls_handshakes_total") >= 2);
        assert_eq!(gw.metric("zgate_connections_denied_total"), 0);
    }

    #[test]
    fn psql_with_an_identity_the_policy_does_not_allow_is_refused() {
        let pg = Postgres::start();
        let pki = Pki::new(&[]);
        let gw = pg_gateway(&pki, &pg);
        let (cert, key) = client_files(&pki, "web", OTHER);
        let out = psql(&conninfo(&gw, &pki, &cert, &key, "verify-full"), "SELECT 1");
        assert!(!out.status.success(), "{}", text(&out));
        assert_eq!(gw.wait_metric("zgate_connections_denied_total", 1), 1);
    }

    #[test]
    fn psql_without_tls_gets_a_postgres_error_saying_tls_is_required() {
        let pg = Postgres::start();
        let pki = Pki::new(&[]);
        let gw = pg_gateway(&pki, &pg);
        let (cert, key) = client_files(&pki, "pricer", TRADING);
        let out = psql(&conninfo(&gw, &pki, &cert, &key, "disable"), "SELECT 1");
        assert!(!out.status.success());
        assert!(
            text(&out).contains("zgate: this listener requires TLS"),
            "{}",
            text(&out)
        );
        assert_eq!(
            gw.wait_metric(
                "zgate_postgres_preamble_refused_total{reason=\"plaintext-startup\"}",
                1
            ),
            1
        );
    }

    #[test]
    fn pgbench_through_zgate_completes_every_transaction() {
        let pg = Postgres::start();
        let pki = Pki::new(&[]);
        let gw = pg_gateway(&pki, &pg);
        let (cert, key) = client_files(&pki, "pricer", TRADING);
        let bin = pg_bindir().join("pgbench");
        require(&bin);
        let ci = conninfo(&gw, &pki, &cert, &key, "verify-full");
        let run = |args: &[&str]| {
            Command::new(&bin)
                .args(args)
                .arg(&ci)
                .stdin(Stdio::null())
                .output()
                .unwrap()
        };
        let init = run(&["-i", "-s", "1", "-q"]);
        assert!(init.status.success(), "{}", text(&init));
        let bench = run(&["-c", "4", "-j", "2", "-t", "50", "-n"]);
        let out = text(&bench);
        assert!(bench.status.success(), "{out}");
        assert!(
            out.contains("number of transactions actually processed: 200/200"),
            "{out}"
        );
        assert!(
            out.contains("number of failed transactions: 0 (0.000%)"),
            "{out}"
        );
        assert_eq!(gw.metric("zgate_connections_denied_total"), 0);
    }

    /// A protocol 3.0 StartupMessage for user and database `postgres`.
    fn startup_message() -> Vec<u8> {
        let mut body = 196_608u32.to_be_bytes().to_vec();
        body.extend_from_slice(b"user\0postgres\0database\0postgres\0\0");
        let mut m = u32::try_from(body.len() + 4)
            .unwrap()
            .to_be_bytes()
            .to_vec();
        m.extend_from_slice(&body);
        m
    }

    fn request(code: u32) -> [u8; 8] {
        let mut r = [0u8; 8];
        r[..4].copy_from_slice(&8u32.to_be_bytes());
        r[4..].copy_from_slice(&code.to_be_bytes());
        r
    }

    const SSL_REQUEST: u32 = 80_877_103;
    const GSSENC_REQUEST: u32 = 80_877_104;

    fn tls_client(pki: &Pki, alpn: &[&str]) -> Arc<ClientConfig> {
        let leaf = pki.client(&ClientSpec::spiffe(TRADING));
        let mut cfg = (*client_config(pki, Some(&leaf))).clone();
        cfg.alpn_protocols = alpn.iter().map(|a| a.as_bytes().to_vec()).collect();
        Arc::new(cfg)
    }

    /// Over an established TLS stream: send the StartupMessage, return PostgreSQL's
    /// first reply byte (`R`: authentication; trust answers AuthenticationOk).
    fn first_reply(mut s: StreamOwned<ClientConnection, TcpStream>) -> std::io::Result<u8> {
        s.write_all(&startup_message())?;
        s.flush()?;
        let mut b = [0u8; 1];
        s.read_exact(&mut b)?;
        Ok(b[0])
    }

    fn tls_over(
        cfg: Arc<ClientConfig>,
        tcp: TcpStream,
    ) -> StreamOwned<ClientConnection, TcpStream> {
        let conn = ClientConnection::new(cfg, ServerName::try_from("localhost").unwrap()).unwrap();
        StreamOwned::new(conn, tcp)
    }

    #[test]
    fn direct_tls_with_alpn_postgresql_reaches_postgres_and_without_it_is_refused() {
        let pg = Postgres::start();
        let pki = Pki::new(&[]);
        let gw = pg_gateway(&pki, &pg);
        let s = tls_over(tls_client(&pki, &["postgresql"]), gw.connect());
        assert_eq!(first_reply(s).unwrap(), b'R');

        let s = tls_over(tls_client(&pki, &[]), gw.connect());
        assert!(!matches!(first_reply(s), Ok(b'R')));
        assert_eq!(
            gw.wait_metric(
                "zgate_postgres_preamble_refused_total{reason=\"direct-tls-without-alpn\"}",
                1
            ),
            1
        );
        // A client offering only other protocols is refused in the handshake.
        let s = tls_over(tls_client(&pki, &["h2"]), gw.connect());
        assert!(first_reply(s).is_err());
        assert_eq!(
            gw.wait_metric(
                "zgate_tls_handshake_failures_total{reason=\"no-application-protocol\"}",
                1
            ),
            1
        );
    }

    #[test]
    fn gssenc_request_is_answered_n_then_ssl_request_s_as_postgres_does() {
        let pg = Postgres::start();
        let pki = Pki::new(&[]);
        let gw = pg_gateway(&pki, &pg);
        let mut tcp = gw.connect();
        let mut b = [0u8; 1];
        tcp.write_all(&request(GSSENC_REQUEST)).unwrap();
        tcp.read_exact(&mut b).unwrap();
        assert_eq!(b[0], b'N');
        // Split across two writes: the gateway waits for the whole request.
        let ssl = request(SSL_REQUEST);
        tcp.write_all(&ssl[..3]).unwrap();
        std::thread::sleep(Duration::from_millis(50));
        tcp.write_all(&ssl[3..]).unwrap();
        tcp.read_exact(&mut b).unwrap();
        assert_eq!(b[0], b'S');
        let s = tls_over(tls_client(&pki, &[]), tcp);
        assert_eq!(first_reply(s).unwrap(), b'R');
    }

    /// A client that connects and says nothing (or half a request) is closed after the
    /// listener's handshake_timeout (1s here), like a stalled TLS handshake.
    #[test]
    fn a_silent_or_stalled_preamble_is_closed_after_the_handshake_timeout() {
        let pg = Postgres::start();
        let pki = Pki::new(&[]);
        let gw = pg_gateway(&pki, &pg);
        let mut silent = gw.connect();
        let mut half = gw.connect();
        half.write_all(&request(SSL_REQUEST)[..5]).unwrap();
        assert!(ends_without_data(&mut silent));
        assert!(ends_without_data(&mut half));
        assert_eq!(
            gw.wait_metric(
                "zgate_tls_handshake_failures_total{reason=\"handshake-timeout\"}",
                2
            ),
            2
        );
    }

    #[test]
    fn bytes_stuffed_after_the_ssl_request_are_refused_before_any_answer() {
        let pg = Postgres::start();
        let pki = Pki::new(&[]);
        let gw = pg_gateway(&pki, &pg);
        for (what, bytes, reason) in [
            (
                "stuffed",
                [&request(SSL_REQUEST)[..], &startup_message()[..]].concat(),
                "data-after-ssl-request",
            ),
            (
                "cancel",
                [
                    &16u32.to_be_bytes()[..],
                    &80_877_102u32.to_be_bytes(),
                    &[0; 8],
                ]
                .concat(),
                "plaintext-cancel",
            ),
            ("http", b"GET / HTTP/1.1\r\n\r\n".to_vec(), "malformed"),
        ] {
            let mut tcp = gw.connect();
            tcp.write_all(&bytes).unwrap();
            assert!(ends_without_data(&mut tcp), "{what}: got an answer");
            assert_eq!(
                gw.wait_metric(
                    &format!("zgate_postgres_preamble_refused_total{{reason=\"{reason}\"}}"),
                    1
                ),
                1,
                "{what}"
            );
        }
        // Nothing reached PostgreSQL's TLS-less port through the gateway.
        assert_eq!(gw.metric("zgate_tls_handshakes_total"), 0);
    }
}
