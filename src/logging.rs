//! Log output: to stderr with syslog priority prefixes (`<3>` error ... `<7>`
//! debug) when run by systemd (journald reads them), with a timestamp
//! otherwise; to syslog when asked and /dev/log exists.

use log::{Level, LevelFilter, Log, Metadata, Record};
use std::io::Write;

struct StderrLog {
    journald: bool,
}

fn priority(l: Level) -> u8 {
    match l {
        Level::Error => 3,
        Level::Warn => 4,
        Level::Info => 6,
        Level::Debug | Level::Trace => 7,
    }
}

impl Log for StderrLog {
    fn enabled(&self, _: &Metadata) -> bool {
        true
    }
    fn log(&self, r: &Record) {
        // Only our own crate logs above debug; dependencies are noisy.
        if !r.target().starts_with("leasedog") && r.level() > Level::Warn {
            return;
        }
        let mut out = std::io::stderr().lock();
        let _ = if self.journald {
            writeln!(out, "<{}>{}", priority(r.level()), r.args())
        } else {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default();
            let secs = now.as_secs();
            writeln!(
                out,
                "{:02}:{:02}:{:02}.{:03} {:5} {}",
                (secs / 3600) % 24,
                (secs / 60) % 60,
                secs % 60,
                now.subsec_millis(),
                r.level(),
                r.args()
            )
        };
    }
    fn flush(&self) {}
}

/// Parses a level name from the config (`error` ... `trace`).
pub fn level(name: &str) -> LevelFilter {
    name.parse().unwrap_or(LevelFilter::Info)
}

/// Installs the logger once; later calls only change the level.
pub fn init(level: LevelFilter) {
    let journald = std::env::var_os("JOURNAL_STREAM").is_some();
    let use_syslog = std::env::var("LEASEDOG_LOG").is_ok_and(|v| v == "syslog");
    if use_syslog {
        let formatter = syslog::Formatter3164 {
            facility: syslog::Facility::LOG_DAEMON,
            hostname: None,
            process: "leasedog".into(),
            pid: std::process::id(),
        };
        if let Ok(logger) = syslog::unix(formatter) {
            if log::set_boxed_logger(Box::new(syslog::BasicLogger::new(logger))).is_ok() {
                log::set_max_level(level);
            }
            return;
        }
        // No /dev/log: fall through to stderr.
    }
    // A second init (config reload) keeps the installed logger.
    let _ = log::set_boxed_logger(Box::new(StderrLog { journald }));
    log::set_max_level(level);
}
