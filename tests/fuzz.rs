//! Property tests of everything leasedog reads from outside: values in etcd,
//! control-socket lines, configuration files, HTTP paths and queries. None
//! may panic; each gives a value or a clear error.

use leasedog::cluster::{KeyParse, Lsn, conn_host_port, parse_key, parse_time};
use proptest::prelude::*;
use std::path::Path;

const KEYS: &[&str] = &[
    "leader",
    "members/n1",
    "initialize",
    "config",
    "failover",
    "status",
    "history",
    "sync",
    "members/",
    "other/thing",
];

const GOOD: &str = "scope: demo\nname: n1\netcd3:\n  hosts: [\"127.0.0.1:2379\"]\nttl: 30\nloop_wait: 10\nretry_timeout: 10\nwatchdog:\n  mode: off\npostgresql:\n  data_dir: /var/lib/pg/data\n  bin_dir: /usr/lib/postgresql/15/bin\n  listen: 127.0.0.1:5432\n  connect_address: 127.0.0.1:5432\nrestapi:\n  listen: 127.0.0.1:8008\n  connect_address: 127.0.0.1:8008\n";

fn no_env(_: &str) -> Option<String> {
    None
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn etcd_values_never_panic(k in 0..KEYS.len(), value in proptest::collection::vec(any::<u8>(), 0..300)) {
        if let Ok(KeyParse::Member(m)) = parse_key(KEYS[k], &value) {
            // What is read back is what would be written.
            let json = serde_json::to_string(&m.info).unwrap();
            match parse_key(KEYS[k], json.as_bytes()) {
                Ok(KeyParse::Member(again)) => prop_assert_eq!(again.info, m.info),
                other => prop_assert!(false, "{:?}", other),
            }
        }
    }

    #[test]
    fn json_shaped_etcd_values_never_panic(k in 0..KEYS.len(), value in "\\{(\"[a-z_]{1,12}\": ?(-?[0-9]{1,20}|\"[^\"]{0,20}\"|true|null|\\[\\]|\\{\\}), ?){0,6}\\}") {
        let _ = parse_key(KEYS[k], value.as_bytes());
    }

    #[test]
    fn socket_lines_never_panic(line in "\\PC{0,200}") {
        let _ = leasedog::control::parse(&line);
    }

    #[test]
    fn socket_json_lines_get_answers(cmd in "[a-z]{0,12}", to in proptest::option::of("\\PC{0,20}")) {
        let line = serde_json::json!({"cmd": cmd, "to": to}).to_string();
        let r = leasedog::control::parse(&line);
        let known = ["status", "pause", "resume", "switchover"].contains(&cmd.as_str());
        prop_assert_eq!(r.is_ok(), known, "{:?}", r);
    }

    #[test]
    fn config_files_never_panic(text in "\\PC{0,400}") {
        let _ = leasedog::config::load_str(&text, Path::new("f.yml"), &no_env);
    }

    #[test]
    fn mutated_good_configs_never_panic(at in 0..GOOD.len(), cut in 0..40usize, insert in "[\\PC\\n ]{0,20}") {
        let mut t = GOOD.to_string();
        if t.is_char_boundary(at) {
            let end = (at + cut).min(t.len());
            if t.is_char_boundary(end) {
                t.replace_range(at..end, &insert);
            }
        }
        if let Err(errs) = leasedog::config::load_str(&t, Path::new("f.yml"), &no_env) {
            for e in errs {
                prop_assert!(!e.message.is_empty());
                prop_assert!(e.message.len() <= 1200, "{}", e.message.len());
            }
        }
    }

    #[test]
    fn odd_strings_never_panic(s in "\\PC{0,80}") {
        let _ = Lsn::parse(&s);
        let _ = conn_host_port(&s);
        let _ = parse_time(&s);
    }

    #[test]
    fn http_paths_and_queries_get_an_answer(path in "/[\\PC]{0,60}", query in "[\\PC]{0,40}", m in 0..4usize) {
        let method = [hyper::Method::GET, hyper::Method::HEAD, hyper::Method::OPTIONS, hyper::Method::POST][m].clone();
        let p = leasedog::snapshot::Published::new(leasedog::snapshot::Snapshot::new("demo", "n1"));
        let r = leasedog::api::route(&method, &path, &query, &p, std::time::Instant::now());
        prop_assert!((200..600).contains(&r.status));
    }
}
