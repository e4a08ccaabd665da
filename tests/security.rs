//! Security end to end: hotlead against a real `redis-server` that speaks
//! only TLS (a certificate authority and server certificate made here with
//! `openssl`) and knows only an ACL user limited to hotlead's keys, with the
//! Redis password, the read API's token and a Kafka secret given as files.
//! Events are scored over that connection, the read API answers only with
//! the token, and the logs (at debug level) carry neither a secret nor a raw
//! contact id. A wrong password stops hotlead with an error that does not
//! show the password.

mod support;

use std::io::{Read as _, Write as _};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use hotlead::proto::interaction_event::Interaction;
use hotlead::proto::{FormSubmission, InteractionEvent, WebinarAttendance};
use support::{free_port, KillOnDrop, Stack};

const PASSWORD: &str = "pw-7Qx9-redis-secret";
const TOKEN: &str = "tok-3Hf8-api-secret";
const KAFKA_SECRET: &str = "kf-5Lm2-sasl-secret";

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl").args(args).current_dir(dir).output().expect("openssl (scripts/setup.sh)");
    assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

/// A CA and a server certificate for 127.0.0.1, signed by it.
fn certificates(dir: &Path) {
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=hotlead test CA",
            "-keyout",
            "ca.key",
            "-out",
            "ca.crt",
        ],
    );
    openssl(
        dir,
        &["req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=127.0.0.1", "-keyout", "srv.key", "-out", "srv.csr"],
    );
    std::fs::write(dir.join("san.ext"), "subjectAltName=IP:127.0.0.1,DNS:localhost\n").unwrap();
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            "srv.csr",
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            "san.ext",
            "-out",
            "srv.crt",
        ],
    );
}

/// A redis-server on a TLS port only, whose default user is off and whose
/// `hotlead` user may touch only `hl:*` keys.
fn tls_redis(dir: &Path) -> (KillOnDrop, u16) {
    let port = free_port();
    let log = std::fs::File::create(dir.join("redis.log")).unwrap();
    let child = Command::new("redis-server")
        .args(["--port", "0", "--tls-port", &port.to_string(), "--bind", "127.0.0.1"])
        .args(["--tls-cert-file", "srv.crt", "--tls-key-file", "srv.key", "--tls-ca-cert-file", "ca.crt"])
        .args(["--tls-auth-clients", "no", "--save", "", "--appendonly", "no"])
        .args(["--user", "default", "off"])
        .args(["--user", "hotlead", "on", &format!(">{PASSWORD}"), "~hl:*", "+@all"])
        .current_dir(dir)
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .stdin(Stdio::null())
        .spawn()
        .expect("redis-server (scripts/setup.sh)");
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "{}", std::fs::read_to_string(dir.join("redis.log")).unwrap_or_default());
        std::thread::sleep(Duration::from_millis(50));
    }
    (KillOnDrop(child), port)
}

fn get(port: u16, path: &str, token: Option<&str>) -> (u16, String) {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    let auth = token.map(|t| format!("Authorization: Bearer {t}\r\n")).unwrap_or_default();
    write!(s, "GET {path} HTTP/1.1\r\nHost: test\r\n{auth}Connection: close\r\n\r\n").unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw).unwrap();
    (raw[9..12].parse().unwrap(), raw.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default())
}

fn event(contact: &str, at: i64, n: u32, interaction: Interaction) -> InteractionEvent {
    InteractionEvent {
        event_id: format!("sec-{contact}-{n}"),
        contact_id: contact.into(),
        occurred_at: Some(hotlead::decode::timestamp(at)),
        interaction: Some(interaction),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_over_tls_with_an_acl_user_and_no_secret_or_contact_id_in_the_logs() {
    let stack = Stack::start();
    let topics = stack.topics(2).await;
    let dir = tempfile::tempdir().unwrap();
    certificates(dir.path());
    let (_redis, port) = tls_redis(dir.path());
    std::fs::write(dir.path().join("redis-password"), format!("{PASSWORD}\n")).unwrap();
    std::fs::write(dir.path().join("api-token"), TOKEN).unwrap();
    std::fs::write(dir.path().join("kafka-secret"), KAFKA_SECRET).unwrap();
    let rules = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/rules.yaml");
    let http = free_port();
    let log_path = dir.path().join("hotlead.log");
    let env = |password_file: &str| {
        let mut env = stack.env(&topics, &rules);
        env.retain(|(k, _)| k != "HOTLEAD_REDIS__URL" && k != "HOTLEAD_HTTP__LISTEN");
        env.extend([
            ("HOTLEAD_REDIS__URL".to_string(), format!("rediss://127.0.0.1:{port}")),
            ("HOTLEAD_REDIS__USERNAME".to_string(), "hotlead".to_string()),
            ("HOTLEAD_REDIS__PASSWORD_FILE".to_string(), dir.path().join(password_file).display().to_string()),
            ("HOTLEAD_REDIS__TLS_CA_FILE".to_string(), dir.path().join("ca.crt").display().to_string()),
            ("HOTLEAD_HTTP__LISTEN".to_string(), format!("127.0.0.1:{http}")),
            ("HOTLEAD_HTTP__TOKEN_FILE".to_string(), dir.path().join("api-token").display().to_string()),
            ("HOTLEAD_KAFKA__SASL_USERNAME".to_string(), "hotlead".to_string()),
            ("HOTLEAD_KAFKA__SASL_PASSWORD_FILE".to_string(), dir.path().join("kafka-secret").display().to_string()),
            ("RUST_LOG".to_string(), "debug".to_string()),
        ]);
        env
    };
    let log = std::fs::File::create(&log_path).unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_hotlead"))
        .arg("run")
        .envs(env("redis-password"))
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    let mut hotlead = KillOnDrop(child);

    // Contact ids that would identify people if they reached a log.
    let t = hotlead::decode::now_ms() - 60_000;
    let contacts = ["jane.roe@example.com", "max.mustermann@example.de"];
    let mut events = Vec::new();
    for c in contacts {
        events.push(event(c, t, 1, Interaction::FormSubmission(FormSubmission::default())));
        events.push(event(
            c,
            t + 1000,
            2,
            Interaction::WebinarAttendance(WebinarAttendance { attended: true, ..Default::default() }),
        ));
    }
    stack.produce_events(&topics.input, &events).await;

    // Scored through TLS and the ACL user: the read API shows both contacts.
    let deadline = Instant::now() + Duration::from_secs(60);
    for c in contacts {
        loop {
            let (status, body) = get(http, &format!("/v1/contacts/{c}"), Some(TOKEN));
            if status == 200 && body.contains("\"tier\":\"warm\"") {
                break;
            }
            let log = std::fs::read_to_string(&log_path).unwrap_or_default();
            assert!(Instant::now() < deadline, "{c} not scored warm in 60 s: {status} {body}\n{log}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    assert_eq!(get(http, &format!("/v1/contacts/{}", contacts[0]), None).0, 401, "the token from its file applies");
    let alerts = stack.read_all(&topics.alerts, 2, Duration::from_secs(20)).await;
    assert_eq!(alerts.len(), 2, "one warm alert per contact");

    // The state is in the TLS Redis, readable only as the ACL user.
    let ca = std::fs::read(dir.path().join("ca.crt")).unwrap();
    let tls = || redis::TlsCertificates { client_tls: None, root_cert: Some(ca.clone()) };
    let client = redis::Client::build_with_tls(format!("rediss://127.0.0.1:{port}"), tls()).unwrap();
    assert!(client.get_connection().and_then(|mut c| redis::cmd("PING").query::<String>(&mut c)).is_err());
    let client = redis::Client::build_with_tls(format!("rediss://hotlead:{PASSWORD}@127.0.0.1:{port}"), tls()).unwrap();
    let mut r = client.get_connection().unwrap();
    let mut stored = Vec::new();
    for key in redis::cmd("KEYS").arg("hl:*:states").query::<Vec<String>>(&mut r).unwrap() {
        stored.extend(redis::cmd("HKEYS").arg(&key).query::<Vec<String>>(&mut r).unwrap());
    }
    stored.sort_unstable();
    assert_eq!(stored, contacts, "both contacts' states");

    signal(&hotlead, "-TERM");
    let _ = hotlead.0.wait();

    // A wrong password: a clear error that does not show it.
    std::fs::write(dir.path().join("wrong-password"), "not-the-password-9Zz").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_hotlead"))
        .args(["score", contacts[0]])
        .envs(env("wrong-password"))
        .output()
        .unwrap();
    let wrong = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(!out.status.success(), "a wrong password is refused: {wrong}");
    assert!(wrong.to_lowercase().contains("pass") || wrong.contains("WRONGPASS"), "{wrong}");
    assert!(!wrong.contains("not-the-password-9Zz"), "{wrong}");

    // Nothing secret and no raw contact id in the logs; contacts appear hashed.
    let logs = std::fs::read_to_string(&log_path).unwrap() + &wrong;
    assert!(logs.lines().count() > 10, "debug logs were written");
    for secret in [PASSWORD, TOKEN, KAFKA_SECRET, contacts[0], contacts[1], "jane.roe", "mustermann"] {
        assert!(!logs.contains(secret), "`{secret}` appears in the logs");
    }
    let hashed = hotlead::telemetry::contact_hash(contacts[0]);
    assert!(logs.contains(&hashed), "the logs name contacts by their hash ({hashed})");
}

fn signal(child: &KillOnDrop, sig: &str) {
    let _ = Command::new("kill").args([sig, &child.0.id().to_string()]).status();
}
