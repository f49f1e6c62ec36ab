//! The command line: `leasedog run`, `check-config`, `list`,
//! `watchdog-check`. Tables for people, `--json` for scripts. Exit codes: 0
//! done, 1 refused or failed (with the reason on stderr), 2 usage.

use crate::agent::Agent;
use crate::config::{self, Config};
use crate::dcs::Dcs;
use crate::{logging, watchdog};
use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

/// leasedog: PostgreSQL high availability with etcd leases and hardware-watchdog fencing.
#[derive(Debug, Parser)]
#[command(name = "leasedog", version, about, long_about = None)]
pub struct Args {
    /// Configuration file.
    #[arg(short = 'c', long = "config", global = true, default_value = config::DEFAULT_PATH, env = "LEASEDOG_CONFIG")]
    pub config: PathBuf,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the agent beside the local PostgreSQL (what the systemd unit runs).
    Run,
    /// Read and validate the configuration file; exit 0 when it is usable.
    CheckConfig,
    /// Show the cluster's members, roles, timelines and lag.
    List {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Open the watchdog device, set the timeout, read it back, then disarm it.
    WatchdogCheck {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
}

fn load(path: &std::path::Path) -> Result<Config, ExitCode> {
    config::load(path).map_err(|errors| {
        for e in &errors {
            eprintln!("error: {e}");
        }
        ExitCode::from(1)
    })
}

pub fn main(args: Args) -> ExitCode {
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(code) => code,
    }
}

fn runtime() -> Result<tokio::runtime::Runtime, ExitCode> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| {
            eprintln!("error: cannot start the runtime: {e}");
            ExitCode::from(1)
        })
}

fn run(args: Args) -> Result<(), ExitCode> {
    match args.command {
        Command::CheckConfig => {
            let cfg = load(&args.config)?;
            let errors = config::check_environment(&cfg);
            for e in &errors {
                eprintln!("error: {e}");
            }
            if !errors.is_empty() {
                return Err(ExitCode::from(1));
            }
            println!(
                "{}: ok (member {} of cluster {}, etcd {})",
                args.config.display(),
                cfg.name,
                cfg.scope,
                cfg.etcd3.hosts.join(",")
            );
            Ok(())
        }
        Command::Run => {
            let cfg = load(&args.config)?;
            logging::init(logging::level(&cfg.log.level));
            let errors = config::check_environment(&cfg);
            if !errors.is_empty() {
                for e in &errors {
                    log::error!("{e}");
                }
                return Err(ExitCode::from(1));
            }
            let rt = runtime()?;
            match rt.block_on(Agent::new(cfg).run()) {
                Ok(_) => Ok(()),
                Err(e) => {
                    log::error!("{e}");
                    Err(ExitCode::from(1))
                }
            }
        }
        Command::List { json } => {
            let cfg = load(&args.config)?;
            let rt = runtime()?;
            let mut dcs = Dcs::new(
                cfg.etcd_endpoints(),
                cfg.prefix(),
                cfg.name.clone(),
                cfg.ttl,
            );
            let view = rt
                .block_on(dcs.read(Duration::from_secs(cfg.retry_timeout.max(1))))
                .map_err(|e| {
                    eprintln!(
                        "error: cannot read the cluster from etcd ({}): {e}",
                        cfg.etcd3.hosts.join(",")
                    );
                    ExitCode::from(1)
                })?;
            if json {
                println!("{}", crate::cli::list_json(&view));
            } else {
                print!("{}", crate::cli::list_table(&cfg.scope, &view));
            }
            Ok(())
        }
        Command::WatchdogCheck { json } => {
            let cfg = load(&args.config)?;
            let secs = cfg.watchdog_timeout() as u32;
            match watchdog::check(cfg.watchdog.driver, &cfg.watchdog.device, secs) {
                Ok(report) => {
                    if json {
                        println!(
                            "{}",
                            serde_json::to_string_pretty(&report).unwrap_or_default()
                        );
                    } else {
                        print!("{report}");
                    }
                    Ok(())
                }
                Err(e) => {
                    eprintln!("error: {e}");
                    Err(ExitCode::from(1))
                }
            }
        }
    }
}

/// The cluster as JSON: one object per member.
pub fn list_json(view: &crate::cluster::ClusterView) -> String {
    let leader = view.leader.as_ref().map(|l| l.name.as_str());
    let rows: Vec<serde_json::Value> = view
        .members
        .iter()
        .map(|m| {
            let lag = lag_bytes(view, m);
            serde_json::json!({
                "name": m.name,
                "host": crate::cluster::conn_host_port(&m.info.conn_url),
                "role": role_label(leader, m),
                "state": m.info.state,
                "timeline": m.info.timeline,
                "lsn": m.info.xlog_location,
                "lag": lag,
                "tags": m.info.tags,
            })
        })
        .collect();
    serde_json::json!({ "leader": leader, "paused": view.paused(), "members": rows }).to_string()
}

fn role_label(leader: Option<&str>, m: &crate::cluster::Member) -> &'static str {
    if leader == Some(m.name.as_str()) {
        "Leader"
    } else if m.info.role == crate::cluster::Role::Replica {
        if m.info.streaming {
            "Replica"
        } else {
            "Replica (not streaming)"
        }
    } else if m.info.role == crate::cluster::Role::Primary {
        "Primary (no key)"
    } else {
        "-"
    }
}

fn lag_bytes(view: &crate::cluster::ClusterView, m: &crate::cluster::Member) -> Option<u64> {
    let leader = view.leader.as_ref()?;
    if leader.name == m.name {
        return None;
    }
    let top = view
        .member(&leader.name)
        .and_then(|l| l.info.xlog_location)?;
    Some(top.saturating_sub(m.info.xlog_location?))
}

/// The cluster as a table for people (as `patronictl list`).
pub fn list_table(scope: &str, view: &crate::cluster::ClusterView) -> String {
    let leader = view.leader.as_ref().map(|l| l.name.as_str());
    let mut rows = vec![
        ["Member", "Host", "Role", "State", "TL", "Lag in MB"]
            .map(String::from)
            .to_vec(),
    ];
    let mut members: Vec<_> = view.members.iter().collect();
    members.sort_by(|a, b| a.name.cmp(&b.name));
    for m in members {
        let lag = lag_bytes(view, m)
            .map(|b| format!("{:.1}", b as f64 / 1048576.0))
            .unwrap_or_default();
        rows.push(vec![
            m.name.clone(),
            crate::cluster::conn_host_port(&m.info.conn_url).unwrap_or_default(),
            role_label(leader, m).into(),
            m.info.state.clone(),
            m.info.timeline.map(|t| t.to_string()).unwrap_or_default(),
            lag,
        ]);
    }
    let widths: Vec<usize> = (0..6)
        .map(|c| rows.iter().map(|r| r[c].len()).max().unwrap_or(0))
        .collect();
    let rule: String = format!(
        "+{}+\n",
        widths
            .iter()
            .map(|w| "-".repeat(w + 2))
            .collect::<Vec<_>>()
            .join("+")
    );
    let mut out = format!("+ Cluster: {scope} ");
    let total = rule.len() - 1;
    while out.len() < total - 1 {
        out.push('-');
    }
    out.push_str("+\n");
    for (i, r) in rows.iter().enumerate() {
        let cells: Vec<String> = r
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!(" {c:w$} "))
            .collect();
        out.push_str(&format!("|{}|\n", cells.join("|")));
        if i == 0 {
            out.push_str(&rule);
        }
    }
    out.push_str(&rule);
    if view.paused() {
        out.push_str(" Maintenance mode: on\n");
    }
    out
}
