//! The HTTP API over TLS with basic authentication (`restapi.certfile`,
//! `keyfile`, `cafile`, `verify_client: required`, `authentication`) on a
//! real node: health checks open, the rest behind the password, client
//! certificates required, and neither plain HTTP nor a silent client on
//! the TLS port disturbs the agent.

mod common;

use common::cluster::{Cluster, Opts, wait_for};
use std::io::{Read, Write};
use std::process::Command;
use std::time::{Duration, Instant};

const BOOT: Duration = Duration::from_secs(90);
const PASSWORD: &str = "api-secret-7f3a";

/// curl's status code for `https://127.0.0.1:port{path}` (0 when no
/// response), and its body.
fn curl(
    c: &Cluster,
    port: u16,
    path: &str,
    client_cert: bool,
    auth: Option<&str>,
) -> (u16, String) {
    let certs = c.nodes[0].dir.parent().expect("cluster dir").join("certs");
    let mut cmd = Command::new("curl");
    cmd.args([
        "-sS",
        "--max-time",
        "10",
        "-w",
        "\n%{http_code}",
        "--cacert",
    ])
    .arg(certs.join("ca.pem"));
    if client_cert {
        cmd.arg("--cert")
            .arg(certs.join("client.pem"))
            .arg("--key")
            .arg(certs.join("client.key"));
    }
    if let Some(a) = auth {
        cmd.args(["-u", a]);
    }
    let out = cmd
        .arg(format!("https://127.0.0.1:{port}{path}"))
        .output()
        .expect("curl");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
    (code.trim().parse().unwrap_or(0), body.to_string())
}

#[test]
fn api_over_tls_with_basic_authentication_and_client_certificates() {
    let mut c = Cluster::start(
        1,
        Opts {
            restapi_extra: format!(
                "  certfile: {{certs}}/server.pem\n  keyfile: {{certs}}/server.key\n  cafile: {{certs}}/ca.pem\n  verify_client: required\n  authentication:\n    username: admin\n    password: {PASSWORD}\n"
            ),
            ..Default::default()
        },
    );
    let port = c.nodes[0].api_port;
    c.wait_healthy(BOOT);
    let user = format!("admin:{PASSWORD}");
    wait_for("/primary 200 over https", BOOT, || {
        (curl(&c, port, "/primary", true, None).0 == 200).then_some(())
    });
    // Health checks: no password needed.
    for p in ["/health", "/liveness", "/readiness", "/read-write", "/?x=1"] {
        assert_eq!(curl(&c, port, p, true, None).0, 200, "{p}");
    }
    assert_eq!(curl(&c, port, "/replica", true, None).0, 503);
    // Everything else: 401 without, or with wrong, credentials.
    for p in ["/patroni", "/cluster", "/metrics"] {
        assert_eq!(curl(&c, port, p, true, None).0, 401, "{p}");
        assert_eq!(curl(&c, port, p, true, Some("admin:wrong")).0, 401, "{p}");
        assert_eq!(curl(&c, port, p, true, Some(&user)).0, 200, "{p}");
    }
    // The member key advertises https.
    let api_url = format!("https://127.0.0.1:{port}/patroni");
    wait_for("api_url https in /cluster", BOOT, || {
        curl(&c, port, "/cluster", true, Some(&user))
            .1
            .contains(&api_url)
            .then_some(())
    });
    // verify_client: required: no client certificate, no answer.
    assert_eq!(curl(&c, port, "/health", false, None).0, 0);
    // Plain HTTP on the TLS port: closed without an HTTP answer.
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut got = Vec::new();
    let _ = s.read_to_end(&mut got);
    assert!(
        !String::from_utf8_lossy(&got).contains("HTTP/1"),
        "{}",
        String::from_utf8_lossy(&got)
    );
    // A client that never starts its handshake is dropped after the
    // handshake timeout (5 s).
    let mut idle = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
    idle.set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let t = Instant::now();
    let mut buf = [0u8; 64];
    let n = idle.read(&mut buf).unwrap_or(0);
    assert_eq!(n, 0, "closed without a byte");
    assert!(
        t.elapsed() < Duration::from_secs(15),
        "closed after {:?}",
        t.elapsed()
    );
    // The agent goes on serving, and leading.
    assert_eq!(curl(&c, port, "/primary", true, None).0, 200);
    assert_eq!(c.nodes[0].is_primary(), Some(true));
    assert!(c.nodes[0].agent_pid().is_some());
    let log = c.nodes[0].agent_log_text();
    assert!(!log.contains(PASSWORD), "the password is never logged");
    assert!(
        log.contains("TLS handshake"),
        "handshake failures logged at debug"
    );

    // check-config names the key and the file of a missing certificate.
    let bad = c.nodes[0].dir.join("bad.yml");
    let text = std::fs::read_to_string(&c.nodes[0].config).unwrap();
    std::fs::write(&bad, text.replace("server.key", "nothere.key")).unwrap();
    let out = c.leasedog_with(&bad).arg("check-config").output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains("restapi.keyfile") && err.contains("nothere.key"),
        "{err}"
    );

    // verify_client: optional: a client without a certificate is served,
    // still behind the password for the rest.
    assert_eq!(c.stop_agent(0, Duration::from_secs(30)), Some(0));
    std::fs::write(
        &c.nodes[0].config,
        text.replace("verify_client: required", "verify_client: optional"),
    )
    .unwrap();
    c.start_agent(0);
    wait_for("/health 200 without a client certificate", BOOT, || {
        (curl(&c, port, "/health", false, None).0 == 200).then_some(())
    });
    assert_eq!(curl(&c, port, "/patroni", false, None).0, 401);
    assert_eq!(curl(&c, port, "/patroni", false, Some(&user)).0, 200);
    assert_eq!(curl(&c, port, "/patroni", true, Some(&user)).0, 200);
    c.stop_agent(0, Duration::from_secs(30));
}
