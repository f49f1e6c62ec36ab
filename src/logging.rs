//! Log output: to stderr with syslog priority prefixes (`<3>` error ... `<7>`
//! debug) when run by systemd (journald reads them), with a timestamp
//! otherwise; to syslog when asked and /dev/log exists.
//!
//! Messages quote text from outside (etcd key names and values, PostgreSQL
//! errors, request lines). Every message is escaped ([`escape`]) before it is
//! written, so such text cannot end a log line and start a forged one, nor
//! forge a journald priority (`<3>` at the start of a line), nor send
//! terminal escape sequences to whoever reads the log.

use log::{Level, LevelFilter, Log, Metadata, Record};
use std::borrow::Cow;
use std::io::Write;
use std::sync::Mutex;

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

/// `msg` with control characters written as escapes: `\n`, `\r`, `\e` (ESC)
/// and `\x..`/`\u{..}` for the other C0 and C1 controls and DEL. Tab stays;
/// a backslash is left alone (the escapes are for a human reader, not to be
/// decoded). One log record stays one line.
pub fn escape(msg: &str) -> Cow<'_, str> {
    let bad = |c: char| c.is_control() && c != '\t';
    if !msg.contains(bad) {
        return Cow::Borrowed(msg);
    }
    let mut out = String::with_capacity(msg.len() + 16);
    for c in msg.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\u{1b}' => out.push_str("\\e"),
            c if bad(c) && (c as u32) < 0x100 => out.push_str(&format!("\\x{:02x}", c as u32)),
            c if bad(c) => out.push_str(&format!("\\u{{{:x}}}", c as u32)),
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

/// One stderr line, newline included: `<priority>message` for journald, or
/// `HH:MM:SS.mmm LEVEL message` with `since_epoch` as the time.
pub fn format_line(
    journald: bool,
    level: Level,
    msg: &str,
    since_epoch: std::time::Duration,
) -> String {
    let msg = escape(msg);
    if journald {
        format!("<{}>{msg}\n", priority(level))
    } else {
        let secs = since_epoch.as_secs();
        format!(
            "{:02}:{:02}:{:02}.{:03} {:5} {msg}\n",
            (secs / 3600) % 24,
            (secs / 60) % 60,
            secs % 60,
            since_epoch.subsec_millis(),
            level,
        )
    }
}

/// Only our own crate logs above warn; dependencies are noisy.
fn wanted(r: &Record) -> bool {
    r.target().starts_with("leasedog") || r.level() <= Level::Warn
}

impl Log for StderrLog {
    fn enabled(&self, _: &Metadata) -> bool {
        true
    }
    fn log(&self, r: &Record) {
        if !wanted(r) {
            return;
        }
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        let line = format_line(self.journald, r.level(), &r.args().to_string(), now);
        let _ = std::io::stderr().lock().write_all(line.as_bytes());
    }
    fn flush(&self) {}
}

type SyslogLogger = syslog::Logger<syslog::LoggerBackend, syslog::Formatter3164>;

/// syslog(3)-style output through /dev/log, with the same escaping.
struct SyslogLog {
    logger: Mutex<SyslogLogger>,
}

impl Log for SyslogLog {
    fn enabled(&self, _: &Metadata) -> bool {
        true
    }
    fn log(&self, r: &Record) {
        if !wanted(r) {
            return;
        }
        let msg = escape(&r.args().to_string()).into_owned();
        let mut logger = match self.logger.lock() {
            Ok(l) => l,
            Err(p) => p.into_inner(),
        };
        let _ = match r.level() {
            Level::Error => logger.err(msg),
            Level::Warn => logger.warning(msg),
            Level::Info => logger.info(msg),
            Level::Debug | Level::Trace => logger.debug(msg),
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
            let log = SyslogLog {
                logger: Mutex::new(logger),
            };
            if log::set_boxed_logger(Box::new(log)).is_ok() {
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn control_characters_cannot_forge_lines_or_priorities() {
        let key = "/service/demo/members/x\n<3>forged error\r\u{1b}[2Jgone\u{7f}\u{0}\u{9b}";
        let line = format_line(true, Level::Info, &format!("bad key {key}"), Duration::ZERO);
        assert_eq!(
            line,
            "<6>bad key /service/demo/members/x\\n<3>forged error\\r\\e[2Jgone\\x7f\\x00\\x9b\n"
        );
        assert_eq!(line.matches('\n').count(), 1, "one record, one line");
        assert!(!line.contains(|c: char| c.is_control() && c != '\n'));
        let line = format_line(
            false,
            Level::Warn,
            "a\tb\nc",
            Duration::from_millis(3_723_004),
        );
        assert_eq!(line, "01:02:03.004 WARN  a\tb\\nc\n");
    }

    #[test]
    fn clean_text_is_untouched() {
        assert!(matches!(escape("plain ✓ text\twith tab"), Cow::Borrowed(_)));
        assert_eq!(escape("\u{2}"), "\\x02");
        assert_eq!(escape("\u{2028}"), "\u{2028}");
    }
}
