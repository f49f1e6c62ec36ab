//! Renders the man pages — leasedog(1) and one page per subcommand,
//! leasedog-run(1) and so on — and the shell completions from the CLI
//! definition (`leasedog::cli::Args`), so they cannot drift from `--help`.
//! `scripts/package.sh` runs it: `cargo run --example gen-docs -- OUT_DIR`.

use clap::CommandFactory;
use clap_complete::Shell;
use clap_mangen::Man;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

const DESCRIPTION: &str = "\
leasedog is a PostgreSQL high-availability agent. One `leasedog run` runs \
beside each PostgreSQL server; through etcd v3 the agents keep exactly one \
primary and promote the best replica when the primary dies. The leader holds \
a key bound to an etcd lease of `ttl` seconds and feeds the hardware watchdog \
only right after a renewal etcd answered in time, so a hung primary is reset \
before its lease can expire and another node be promoted. The other \
subcommands operate a running cluster: they read and write etcd directly, or \
talk to the local agent over its control socket.";

/// Sections of leasedog(1) after the generated ones, in roff.
const MORE: &str = r#".SH FILES
.TP
/etc/leasedog/leasedog.yml
The configuration; the installed file is an annotated example. Keys follow
Patroni's names (scope, ttl, loop_wait, retry_timeout, nofailover).
.TP
/run/leasedog/leasedog.sock
The control socket of the local agent, used by status, pause and resume.
.SH SIGNALS
Sent to the process of \fBleasedog run\fR:
.TP
SIGTERM, SIGINT
Graceful stop: PostgreSQL stopped, leader key released, watchdog disarmed.
.TP
SIGUSR1, SIGUSR2
Pause (maintenance mode) and resume, for the whole cluster.
.TP
SIGHUP
Reload the configuration file.
.SH ENVIRONMENT
.TP
LEASEDOG_CONFIG
The configuration file, as \fB\-c\fR.
.TP
LEASEDOG_<SECTION>_<KEY>
Overrides one scalar key of the file, e.g. LEASEDOG_POSTGRESQL_DATA_DIR.
.SH EXIT STATUS
0 done; 1 refused or failed, with the reason on standard error; 2 usage error.
.SH SEE ALSO
\fBleasedog-run\fR(1), \fBleasedog-list\fR(1), \fBleasedog-switchover\fR(1),
\fBetcd\fR(1), \fBpg_ctl\fR(1), /usr/share/doc/leasedog/README.md
"#;

fn main() -> ExitCode {
    let Some(out) = std::env::args_os().nth(1).map(PathBuf::from) else {
        eprintln!("usage: gen-docs OUT_DIR");
        return ExitCode::from(2);
    };
    match render(&out) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: writing into {}: {e}", out.display());
            ExitCode::from(1)
        }
    }
}

fn page(cmd: clap::Command) -> Man {
    Man::new(cmd)
        .section("1")
        .manual("leasedog manual")
        .source(format!("leasedog {}", env!("CARGO_PKG_VERSION")))
}

fn render(out: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(out)?;
    let mut cmd = leasedog::cli::Args::command()
        .long_about(DESCRIPTION)
        .disable_help_subcommand(true);
    cmd.build();

    let main = page(cmd.clone());
    let mut f = std::fs::File::create(out.join("leasedog.1"))?;
    main.render_title(&mut f)?;
    main.render_name_section(&mut f)?;
    main.render_synopsis_section(&mut f)?;
    main.render_description_section(&mut f)?;
    main.render_options_section(&mut f)?;
    main.render_subcommands_section(&mut f)?;
    f.write_all(MORE.as_bytes())?;
    main.render_version_section(&mut f)?;
    for sub in cmd.get_subcommands() {
        page(sub.clone()).generate_to(out)?;
    }

    for (shell, file) in [
        (Shell::Bash, "leasedog.bash"),
        (Shell::Zsh, "_leasedog"),
        (Shell::Fish, "leasedog.fish"),
    ] {
        let mut f = std::fs::File::create(out.join(file))?;
        clap_complete::generate(shell, &mut cmd.clone(), "leasedog", &mut f);
    }
    Ok(())
}
