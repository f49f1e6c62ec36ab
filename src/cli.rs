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
    /// This node's state, from the local agent's control socket.
    Status {
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Maintenance mode on: no automatic promote, demote, start or stop anywhere.
    Pause {
        /// Wait until every member has seen it.
        #[arg(long)]
        wait: bool,
    },
    /// Maintenance mode off. Refused while the leader's agent is stopped
    /// (its PostgreSQL may still run: a replica would be promoted beside it).
    Resume {
        /// Wait until every member has seen it.
        #[arg(long)]
        wait: bool,
        /// Resume even if no running agent holds the leader key.
        #[arg(long)]
        force: bool,
    },
    /// Planned handover of the primary role to a healthy replica.
    Switchover {
        /// The member to hand over to (default: the most advanced healthy replica).
        #[arg(long)]
        to: Option<String>,
        /// When: ISO 8601 UTC (2026-11-23T05:00:00Z) or unix seconds.
        #[arg(long)]
        at: Option<String>,
        /// Do not ask for confirmation (leasedog never asks; accepted for patronictl habits).
        #[arg(long)]
        force: bool,
    },
    /// Make a named member the leader, also when there is no healthy leader.
    Failover {
        /// The member to promote.
        #[arg(long)]
        to: String,
        /// Accepted for patronictl habits.
        #[arg(long)]
        force: bool,
        /// In synchronous mode: promote a member that is not a synchronous
        /// standby, accepting that commits acknowledged to clients may be
        /// lost.
        #[arg(long)]
        allow_data_loss: bool,
    },
    /// Restart PostgreSQL on members, through etcd (works from any node):
    /// replicas first, one at a time, each once the one before streams
    /// again; the primary last, in place under its key (no failover), or
    /// after a switchover with --switchover.
    Restart {
        /// Members to restart (default: all).
        members: Vec<String>,
        /// Only members whose settings wait for a restart.
        #[arg(long)]
        pending: bool,
        /// Only the primary, or only the replicas.
        #[arg(long, value_parser = ["primary", "replica"])]
        role: Option<String>,
        /// Not before this time: ISO 8601 UTC (2026-11-23T05:00:00Z) or
        /// unix seconds (--scheduled is the same, for patronictl habits).
        /// Dropped if the leader first sees it more than 1.5 loop_wait late.
        #[arg(long, visible_alias = "scheduled", value_name = "TIME")]
        at: Option<String>,
        /// The primary is not restarted in place: when its turn comes it
        /// first switches over to the best replica (as `switchover` without
        /// --to), then restarts as a replica. A leasedog extension (not in
        /// patronictl).
        #[arg(long)]
        switchover: bool,
        /// Wait until every member has restarted.
        #[arg(long)]
        wait: bool,
        /// Accepted for patronictl habits (leasedog never asks).
        #[arg(long)]
        force: bool,
    },
    /// Reload members, through etcd: each reads its file again (as on
    /// SIGHUP) and reloads PostgreSQL.
    Reload {
        /// Members to reload (default: all).
        members: Vec<String>,
        /// Wait until every member has reloaded.
        #[arg(long)]
        wait: bool,
        /// Accepted for patronictl habits (leasedog never asks).
        #[arg(long)]
        force: bool,
    },
    /// Rebuild a replica: its agent stops PostgreSQL, empties the data
    /// directory and clones it again from the leader, or from the member
    /// --from names (refused on the leader).
    Reinit {
        /// The replica to rebuild.
        member: String,
        /// Clone from this member (a running replica, or the leader) instead
        /// of the leader, to spare the leader the copy; the rebuilt replica
        /// streams from the leader all the same.
        #[arg(long, value_name = "MEMBER", conflicts_with = "from_leader")]
        from: Option<String>,
        /// Clone from the leader: the default (accepted for patronictl habits).
        #[arg(long)]
        from_leader: bool,
        /// Wait until it streams again.
        #[arg(long)]
        wait: bool,
        /// Accepted for patronictl habits (leasedog never asks).
        #[arg(long)]
        force: bool,
    },
    /// Show the cluster-wide configuration (the `config` key) as YAML.
    ShowConfig,
    /// Change the cluster-wide configuration: opens $EDITOR on it (or
    /// applies --set/--pg/--apply), shows the diff, asks, and writes it if
    /// nobody changed it meanwhile. PostgreSQL settings reach every member
    /// in its next cycle (reloaded; `list` shows who needs a restart), as
    /// do maximum_lag_on_failover, primary_start_timeout and
    /// postgresql.use_slots/use_pg_rewind/pg_hba, which win over each
    /// member's file.
    EditConfig {
        /// key=value (dotted path, value read as YAML; null removes).
        #[arg(short = 's', long = "set", value_name = "KEY=VALUE")]
        set: Vec<String>,
        /// name=value: a PostgreSQL setting (postgresql.parameters.name).
        #[arg(short = 'p', long = "pg", value_name = "NAME=VALUE")]
        pg: Vec<String>,
        /// Merge a YAML file into the configuration ("-" for stdin).
        #[arg(long, value_name = "FILE")]
        apply: Option<PathBuf>,
        /// Write without asking.
        #[arg(long)]
        force: bool,
        /// Do not show the diff.
        #[arg(short = 'q', long)]
        quiet: bool,
    },
    /// Timeline switches (promotions), from the history key.
    History {
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
            // Not an error (Patroni ignores them too): said before the agent
            // says it at every start.
            for k in cfg
                .postgresql
                .parameters
                .keys()
                .filter(|k| crate::hot_standby::is_critical(k))
            {
                eprintln!(
                    "warning: {}: postgresql.parameters.{k} is ignored: a hot standby needs it the same on every member, so only the cluster's config key sets it (bootstrap.dcs.postgresql.parameters, then leasedog edit-config --pg {k}=...)",
                    args.config.display()
                );
            }
            let transport = crate::dcs::Transport::load(&cfg.etcd3);
            if let Err(e) = &transport {
                eprintln!("error: {}: {e}", args.config.display());
            }
            let api = crate::api::Security::load(&cfg.restapi);
            if let Err(e) = &api {
                eprintln!("error: {}: {e}", args.config.display());
            }
            if !errors.is_empty() || transport.is_err() || api.is_err() {
                return Err(ExitCode::from(1));
            }
            // With TLS or an etcd user: one read, so that a certificate etcd
            // or we refuse (expired, another CA, a host name it does not
            // name) or a wrong password is found now, not by the agent. An
            // etcd that does not answer is only a warning: the agent waits
            // for it (and this runs before every start under systemd).
            if let Ok(t) = transport
                && (cfg.etcd3.protocol == "https" || cfg.etcd3.username.is_some())
            {
                let rt = runtime()?;
                let mut dcs = Dcs::new(
                    cfg.etcd_endpoints(),
                    cfg.prefix(),
                    cfg.name.clone(),
                    cfg.ttl,
                )
                .with_transport(t);
                if let Err(e) = rt.block_on(dcs.read(Duration::from_secs(3))) {
                    let text = e.to_string();
                    let lower = text.to_lowercase();
                    let refused = matches!(e, crate::dcs::DcsError::Refused { .. })
                        || lower.contains("certificate")
                        || lower.contains("authentication failed")
                        || lower.contains("permission denied");
                    if refused {
                        eprintln!("error: {}: etcd3: {text}", args.config.display());
                        return Err(ExitCode::from(1));
                    }
                    eprintln!(
                        "warning: etcd did not answer now (the agent will wait for it): {text}"
                    );
                }
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
            // Before anything is bound, read or touched.
            let _lock = crate::instance::lock(&cfg.postgresql.data_dir, &cfg.control.socket)
                .map_err(|e| {
                    log::error!("{e}");
                    ExitCode::from(1)
                })?;
            let transport = crate::dcs::Transport::load(&cfg.etcd3).map_err(|e| {
                log::error!("{}: {e}", args.config.display());
                ExitCode::from(1)
            })?;
            let api = crate::api::Security::load(&cfg.restapi).map_err(|e| {
                log::error!("{}: {e}", args.config.display());
                ExitCode::from(1)
            })?;
            let rt = runtime()?;
            match rt.block_on(Agent::new(cfg, transport).with_api_security(api).run()) {
                Ok(_) => Ok(()),
                Err(e) => {
                    log::error!("{e}");
                    Err(ExitCode::from(1))
                }
            }
        }
        Command::Restart {
            members,
            pending,
            role,
            at,
            switchover,
            wait,
            force: _,
        } => restart(
            &args.config,
            crate::cluster::RestartRequest {
                members,
                pending,
                role,
                scheduled_at: at,
                switchover,
                ..Default::default()
            },
            wait,
        ),
        Command::Reload {
            members,
            wait,
            force: _,
        } => reload(&args.config, members, wait),
        Command::Reinit {
            member,
            from,
            from_leader: _,
            wait,
            force: _,
        } => reinit(&args.config, member, from, wait),
        Command::ShowConfig => {
            let cfg = load(&args.config)?;
            let rt = runtime()?;
            let mut dcs = dcs_of(&cfg)?;
            let (v, _) = rt
                .block_on(dcs.read_config(timeout_of(&cfg)))
                .map_err(|e| fail(&format!("cannot read the config key: {e}")))?;
            print!("{}", crate::dynamic_config::to_yaml(&v));
            Ok(())
        }
        Command::EditConfig {
            set,
            pg,
            apply,
            force,
            quiet,
        } => edit_config(&args.config, &set, &pg, apply.as_deref(), force, quiet),
        Command::List { json } => {
            let cfg = load(&args.config)?;
            let rt = runtime()?;
            let mut dcs = dcs_of(&cfg)?;
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
        Command::Status { json } => {
            let cfg = load(&args.config)?;
            let rt = runtime()?;
            let reply = rt
                .block_on(crate::control::request(
                    &cfg.control.socket,
                    &serde_json::json!({"cmd": "status"}),
                    Duration::from_secs(5),
                ))
                .map_err(|e| {
                    fail(&format!(
                        "no local agent answers on {}: {e}",
                        cfg.control.socket.display()
                    ))
                })?;
            let st = &reply["status"];
            if json {
                println!("{st}");
            } else {
                println!(
                    "{} ({}): {} {}, timeline {}, leader key: {}, paused: {}, watchdog armed: {}\n{}",
                    st["patroni"]["name"].as_str().unwrap_or("?"),
                    st["patroni"]["scope"].as_str().unwrap_or("?"),
                    st["role"].as_str().unwrap_or("?"),
                    st["state"].as_str().unwrap_or("?"),
                    st["timeline"],
                    st["leader"],
                    st["pause"],
                    st["watchdog"]["armed"],
                    st["leasedog"]["summary"].as_str().unwrap_or("")
                );
            }
            Ok(())
        }
        Command::History { json } => {
            let cfg = load(&args.config)?;
            let rt = runtime()?;
            let mut dcs = dcs_of(&cfg)?;
            let raw = rt
                .block_on(dcs.get_raw("history", timeout_of(&cfg)))
                .map_err(|e| fail(&format!("cannot read the cluster from etcd: {e}")))?
                .unwrap_or_else(|| "[]".into());
            let h = read_history(&raw).map_err(|e| {
                fail(&format!(
                    "the history key {}history is unreadable: {e}",
                    cfg.prefix()
                ))
            })?;
            if json {
                println!("{raw}");
            } else {
                println!(
                    "{:>3} | {:>12} | {:<28} | {:<25} | New Leader",
                    "TL", "LSN", "Reason", "Timestamp"
                );
                for (tl, lsn, reason, ts, who) in h {
                    // Text from etcd: no control characters to the terminal.
                    let (reason, ts, who) = (
                        logging::escape(&reason),
                        logging::escape(&ts),
                        logging::escape(&who),
                    );
                    println!(
                        "{tl:>3} | {:>12} | {reason:<28} | {ts:<25} | {who}",
                        crate::cluster::Lsn(lsn)
                    );
                }
            }
            Ok(())
        }
        Command::Pause { wait } => set_pause(&args.config, true, false, wait),
        Command::Resume { wait, force } => set_pause(&args.config, false, force, wait),
        Command::Switchover { to, at, force: _ } => switchover(&args.config, to, at),
        Command::Failover {
            to,
            force: _,
            allow_data_loss,
        } => failover(&args.config, &to, allow_data_loss),
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
                "role": role_label(view, m),
                "state": m.info.state,
                "timeline": m.info.timeline,
                "lsn": m.info.xlog_location,
                "lag": lag,
                "tags": m.info.tags,
                "pending_restart": m.info.pending_restart,
            })
        })
        .collect();
    let sync = current_sync(view)
        .map(|s| serde_json::json!({ "standbys": s.standbys(), "quorum": s.quorum() }));
    // Times as ISO 8601 UTC (null when unreadable), as `list` prints them.
    let iso = |at: &str| crate::cluster::parse_time(at).map(crate::cluster::format_time);
    let switchover = view.failover.as_ref().and_then(|f| {
        let at = f.scheduled_at.as_deref()?;
        Some(serde_json::json!({
            "scheduled_at": iso(at),
            "from": f.leader,
            "to": f.member,
        }))
    });
    let restart = view.restart.as_ref().map(|r| {
        let done = restarted_members(view, &r.id);
        serde_json::json!({
            "id": r.id,
            "scheduled_at": r.scheduled_at.as_deref().and_then(iso),
            "members": r.members,
            "pending": r.pending,
            "role": r.role,
            "switchover": r.switchover,
            "done": done,
        })
    });
    serde_json::json!({
        "leader": leader,
        "paused": view.paused(),
        "synchronous": sync,
        "scheduled_switchover": switchover,
        "restart": restart,
        "members": rows
    })
    .to_string()
}

/// The `sync` key written by the current leader, if any.
fn current_sync(view: &crate::cluster::ClusterView) -> Option<&crate::cluster::SyncState> {
    let leader = view.leader.as_ref()?;
    view.sync
        .as_ref()
        .filter(|s| s.leader.as_deref() == Some(leader.name.as_str()))
}

fn role_label(view: &crate::cluster::ClusterView, m: &crate::cluster::Member) -> &'static str {
    let leader = view.leader.as_ref().map(|l| l.name.as_str());
    let sync = current_sync(view);
    if leader == Some(m.name.as_str()) {
        "Leader"
    } else if let Some(s) = sync.filter(|s| s.standbys().contains(&m.name)) {
        // As patronictl: the standbys the sync key names.
        if s.quorum.is_some() {
            "Quorum Standby"
        } else {
            "Sync Standby"
        }
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
    let mut rows = vec![
        ["Member", "Host", "Role", "State", "TL", "Lag in MB"]
            .map(String::from)
            .to_vec(),
    ];
    // As patronictl: the column shows only when a member waits for a restart.
    let pending = view.members.iter().any(|m| m.info.pending_restart);
    if pending {
        rows[0].push("Pending restart".into());
    }
    let mut members: Vec<_> = view.members.iter().collect();
    members.sort_by(|a, b| a.name.cmp(&b.name));
    for m in members {
        let lag = lag_bytes(view, m)
            .map(|b| format!("{:.1}", b as f64 / 1048576.0))
            .unwrap_or_default();
        let mut row = vec![
            m.name.clone(),
            crate::cluster::conn_host_port(&m.info.conn_url).unwrap_or_default(),
            role_label(view, m).into(),
            m.info.state.clone(),
            m.info.timeline.map(|t| t.to_string()).unwrap_or_default(),
            lag,
        ];
        if pending {
            row.push(if m.info.pending_restart { "*" } else { "" }.into());
        }
        rows.push(row);
    }
    let widths: Vec<usize> = (0..rows[0].len())
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
    if let Some(f) = &view.failover
        && let Some(at) = &f.scheduled_at
    {
        // As patronictl: "Switchover scheduled at: ...".
        out.push_str(&format!(
            " Switchover scheduled at: {} (from {} to {})\n",
            schedule_label(at),
            logging::escape(f.leader.as_deref().unwrap_or("the leader")),
            logging::escape(f.member.as_deref().unwrap_or("the best replica"))
        ));
    }
    if let Some(r) = &view.restart {
        let mut what = Vec::new();
        if r.pending {
            what.push("pending only".to_string());
        }
        if let Some(role) = &r.role {
            what.push(format!("{} only", logging::escape(role)));
        }
        if !r.members.is_empty() {
            what.push(logging::escape(&r.members.join(", ")).into_owned());
        }
        if r.switchover {
            what.push("the primary after a switchover".into());
        }
        let what = if what.is_empty() {
            String::new()
        } else {
            format!(" ({})", what.join("; "))
        };
        let id = logging::escape(&r.id);
        match &r.scheduled_at {
            Some(at) => out.push_str(&format!(
                " Restart {id} scheduled at: {}{what}\n",
                schedule_label(at)
            )),
            None => {
                let done = restarted_members(view, &r.id);
                out.push_str(&format!(
                    " Restart {id} in progress{what}: done on [{}]\n",
                    done.join(", ")
                ));
            }
        }
    }
    if let Some(s) = current_sync(view) {
        if s.standbys().is_empty() {
            out.push_str(
                " Synchronous mode: no synchronous standby (asynchronous, or waiting in strict mode)\n",
            );
        } else {
            out.push_str(&format!(
                " Synchronous mode: {} of {} standby(s) confirm each commit ({})\n",
                s.standbys().len() + 1 - s.quorum(),
                s.standbys().len(),
                s.standbys().join(", ")
            ));
        }
    }
    out
}

/// Parses the `history` key strictly (unlike the agent, which only appends
/// to it): a person asking for the history must learn that the key holds
/// garbage rather than see an empty table. The error quotes an excerpt.
fn read_history(raw: &str) -> Result<Vec<crate::cluster::HistoryEntry>, String> {
    const EXPECTED: &str =
        "expected a JSON list of [timeline, lsn, reason, timestamp, new_leader] entries";
    let items = match serde_json::from_str::<serde_json::Value>(raw) {
        Ok(serde_json::Value::Array(items)) => items,
        Ok(_) => return Err(format!("{EXPECTED}, found {}", config::excerpt(raw))),
        Err(e) => {
            return Err(format!(
                "{EXPECTED}, found {} (not JSON: {e})",
                config::excerpt(raw)
            ));
        }
    };
    let text = |v: Option<&serde_json::Value>| match v {
        None | Some(serde_json::Value::Null) => Some(String::new()),
        Some(serde_json::Value::String(s)) => Some(s.clone()),
        Some(_) => None,
    };
    items
        .iter()
        .enumerate()
        .map(|(i, e)| {
            let entry = e.as_array().and_then(|a| {
                Some((
                    crate::cluster::Timeline::try_from(a.first()?.as_u64()?).ok()?,
                    a.get(1)?.as_u64()?,
                    text(a.get(2))?,
                    text(a.get(3))?,
                    text(a.get(4))?,
                ))
            });
            entry.ok_or_else(|| {
                format!(
                    "entry {} is {}: {EXPECTED}",
                    i + 1,
                    config::excerpt(&e.to_string())
                )
            })
        })
        .collect()
}

fn fail(msg: &str) -> ExitCode {
    eprintln!("error: {msg}");
    ExitCode::from(1)
}

/// A client for the commands (list, pause, switchover, ...): the agent's
/// endpoints, TLS and user.
fn dcs_of(cfg: &Config) -> Result<Dcs, ExitCode> {
    let transport = crate::dcs::Transport::load(&cfg.etcd3).map_err(|e| {
        eprintln!("error: {}: {e}", cfg.source.display());
        ExitCode::from(1)
    })?;
    Ok(Dcs::new(
        cfg.etcd_endpoints(),
        cfg.prefix(),
        cfg.name.clone(),
        cfg.ttl,
    )
    .with_transport(transport))
}

fn timeout_of(cfg: &Config) -> Duration {
    Duration::from_secs(cfg.retry_timeout.max(1))
}

/// Polls the cluster until `done` says so or the time is up.
async fn wait_until(
    dcs: &mut Dcs,
    t: Duration,
    limit: Duration,
    mut done: impl FnMut(&crate::cluster::ClusterView) -> bool,
) -> bool {
    let end = tokio::time::Instant::now() + limit;
    while tokio::time::Instant::now() < end {
        if let Ok(v) = dcs.read(t).await
            && done(&v)
        {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

/// pause/resume: through the local agent's socket when there is one, else
/// straight to etcd.
fn set_pause(path: &std::path::Path, pause: bool, force: bool, wait: bool) -> Result<(), ExitCode> {
    let cfg = load(path)?;
    let rt = runtime()?;
    rt.block_on(async {
        let t = timeout_of(&cfg);
        let cmd = if pause { "pause" } else { "resume" };
        let via_socket = cfg.control.socket.exists()
            && match crate::control::request(
                &cfg.control.socket,
                &serde_json::json!({ "cmd": cmd, "force": force }),
                t * 2,
            )
            .await
            {
                Ok(r) if r["ok"] == true => true,
                Ok(r) => return Err(fail(r["error"].as_str().unwrap_or("refused"))),
                Err(_) => false,
            };
        let mut dcs = dcs_of(&cfg)?;
        if !via_socket {
            dcs.set_pause(pause, force, t).await.map_err(|e| fail(&e))?;
        }
        if wait {
            let seen = wait_until(&mut dcs, t, Duration::from_secs(cfg.ttl.max(30)), |v| {
                v.members.iter().all(|m| m.info.pause == pause)
            })
            .await;
            if !seen {
                return Err(fail("not every member acknowledged in time"));
            }
        }
        println!(
            "{}",
            if pause {
                "Maintenance mode: on"
            } else {
                "Maintenance mode: off"
            }
        );
        Ok(())
    })
}

/// The id of a request key (restart, reload, reinit): its time in ms.
fn request_id() -> String {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis().to_string())
        .unwrap_or_default()
}

/// reload: one request in etcd; each member named (or all) carries it out.
fn reload(path: &std::path::Path, members: Vec<String>, wait: bool) -> Result<(), ExitCode> {
    let cfg = load(path)?;
    let rt = runtime()?;
    rt.block_on(async {
        let t = timeout_of(&cfg);
        let mut dcs = dcs_of(&cfg)?;
        let view = dcs
            .read(t)
            .await
            .map_err(|e| fail(&format!("cannot read the cluster from etcd: {e}")))?;
        if view.leader.is_none() {
            return Err(fail(
                "the cluster has no leader (it deletes the request when done)",
            ));
        }
        for m in &members {
            if view.member(m).is_none() {
                return Err(fail(&format!("no member named {m}")));
            }
        }
        if view.reload.is_some() {
            return Err(fail("a reload is in progress"));
        }
        let id = request_id();
        let req = crate::cluster::ReloadRequest {
            id: id.clone(),
            members,
            mod_revision: 0,
        };
        let json = serde_json::to_string(&req).unwrap_or_default();
        match dcs.put_request("reload", json, t).await {
            Ok(true) => {}
            Ok(false) => return Err(fail("another reload was requested meanwhile")),
            Err(e) => return Err(fail(&format!("cannot write the reload request: {e}"))),
        }
        println!("Reload {id} requested");
        if wait {
            let gone = wait_until(&mut dcs, t, Duration::from_secs(cfg.ttl.max(60)), |v| {
                v.reload.as_ref().is_none_or(|r| r.id != id)
            })
            .await;
            if !gone {
                return Err(fail(
                    "not every member reloaded in time: see `leasedog list` and the logs",
                ));
            }
            println!("Reload {id} done");
        }
        Ok(())
    })
}

/// reinit: one request in etcd, carried out by the member's own agent.
fn reinit(
    path: &std::path::Path,
    member: String,
    from: Option<String>,
    wait: bool,
) -> Result<(), ExitCode> {
    let cfg = load(path)?;
    let rt = runtime()?;
    rt.block_on(async {
        let t = timeout_of(&cfg);
        let mut dcs = dcs_of(&cfg)?;
        let view = dcs
            .read(t)
            .await
            .map_err(|e| fail(&format!("cannot read the cluster from etcd: {e}")))?;
        let Some(leader) = view.leader.as_ref().map(|l| l.name.clone()) else {
            return Err(fail("the cluster has no leader to clone from"));
        };
        if leader == member {
            return Err(fail(&format!(
                "{member} is the leader: a reinit rebuilds a replica from the leader (switch over first)"
            )));
        }
        if view.member(&member).is_none() {
            return Err(fail(&format!(
                "no member named {member} (its agent must run to carry out a reinit)"
            )));
        }
        if view.paused() {
            return Err(fail("maintenance mode is on: resume first"));
        }
        if let Some(r) = &view.reinit {
            return Err(fail(&format!("a reinit of {} is in progress", r.member)));
        }
        if let Some(e) = from
            .as_deref()
            .and_then(|f| crate::cluster::clone_source_refusal(&view, &member, f))
        {
            return Err(fail(&e));
        }
        let source = from.clone().unwrap_or_else(|| leader.clone());
        let id = request_id();
        let req = crate::cluster::ReinitRequest {
            id: id.clone(),
            member: member.clone(),
            from,
            mod_revision: 0,
        };
        let json = serde_json::to_string(&req).unwrap_or_default();
        match dcs.put_request("reinit", json, t).await {
            Ok(true) => {}
            Ok(false) => return Err(fail("another reinit was requested meanwhile")),
            Err(e) => return Err(fail(&format!("cannot write the reinit request: {e}"))),
        }
        println!("Reinit of {member} requested: it empties its data directory and clones from {source}");
        if wait {
            let gone = wait_until(&mut dcs, t, Duration::from_secs(3600), |v| {
                v.reinit.as_ref().is_none_or(|r| r.id != id)
            })
            .await;
            if !gone {
                return Err(fail("the reinit did not finish within an hour: see the member's log"));
            }
            println!("Reinit of {member} done: it streams from the leader");
        }
        Ok(())
    })
}

/// A request's scheduled time for people: ISO 8601 UTC when readable, else
/// an excerpt of the text as found (quoted and escaped: it comes from etcd).
fn schedule_label(at: &str) -> String {
    match crate::cluster::parse_time(at) {
        Some(t) => crate::cluster::format_time(t),
        None => format!("{} (unreadable)", config::excerpt(at)),
    }
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// restart: one request in etcd; the agents carry it out in order. `req`
/// holds what the command line asked (its id is made here).
fn restart(
    path: &std::path::Path,
    mut req: crate::cluster::RestartRequest,
    wait: bool,
) -> Result<(), ExitCode> {
    let cfg = load(path)?;
    let when = match req.scheduled_at.as_deref() {
        None => None,
        Some(a) => {
            let Some(when) = crate::cluster::parse_time(a) else {
                return Err(fail(&format!(
                    "--at {a:?}: expected ISO 8601 UTC (2026-11-23T05:00:00Z) or unix seconds"
                )));
            };
            if when < unix_now() {
                return Err(fail(&format!(
                    "--at {a}: that is {} s ago: expected a time to come",
                    unix_now() - when
                )));
            }
            Some(when)
        }
    };
    if req.switchover && req.role.as_deref() == Some("replica") {
        return Err(fail(
            "--switchover with --role replica: only the primary hands over, and --role replica leaves it out (use --role primary, or no --role)",
        ));
    }
    let rt = runtime()?;
    rt.block_on(async {
        let t = timeout_of(&cfg);
        let mut dcs = dcs_of(&cfg)?;
        let view = dcs
            .read(t)
            .await
            .map_err(|e| fail(&format!("cannot read the cluster from etcd: {e}")))?;
        if view.paused() {
            return Err(fail(
                "maintenance mode is on: resume first (a paused agent starts nothing)",
            ));
        }
        let Some(leader) = view.leader.as_ref().map(|l| l.name.clone()) else {
            return Err(fail("the cluster has no leader"));
        };
        if let Some(r) = &view.restart {
            return Err(fail(&match &r.scheduled_at {
                Some(at) => format!(
                    "restart {} is scheduled at {}: wait for it (`leasedog list` shows it)",
                    r.id,
                    schedule_label(at)
                ),
                None => format!(
                    "restart {} is in progress: wait for it (`leasedog list` shows who has restarted)",
                    r.id
                ),
            }));
        }
        for m in &req.members {
            if view.member(m).is_none() {
                return Err(fail(&format!("no member named {m}")));
            }
        }
        if req.switchover {
            // As `switchover` checks now; the leader checks again when the
            // primary's turn comes (the replicas have restarted by then).
            let local = crate::cluster::LocalPostgres {
                running: true,
                ..Default::default()
            };
            let mut ha = crate::ha::HaConfig::from_config(&cfg);
            ha.name = leader.clone();
            crate::ha::switchover_target(&ha, &view, &local, None)
                .map_err(|e| fail(&format!("--switchover refused: {e}")))?;
        }
        let id = request_id();
        req.id = id.clone();
        let json = serde_json::to_string(&req).unwrap_or_default();
        match dcs.put_request("restart", json, t).await {
            Ok(true) => {}
            Ok(false) => return Err(fail("another restart was requested meanwhile")),
            Err(e) => return Err(fail(&format!("cannot write the restart request: {e}"))),
        }
        println!(
            "Restart {id} {}: replicas first, one at a time, then the primary {}",
            match when {
                Some(w) => format!("scheduled at {}", crate::cluster::format_time(w)),
                None => "requested".into(),
            },
            if req.switchover {
                "after a switchover to the best replica"
            } else {
                "in place"
            }
        );
        if wait {
            let until = when.map_or(0, |w| w.saturating_sub(unix_now()));
            let limit = Duration::from_secs(600 + until);
            let gone = wait_until(&mut dcs, t, limit, |v| {
                v.restart.as_ref().is_none_or(|r| r.id != id)
            })
            .await;
            if !gone {
                return Err(fail(&format!(
                    "not every member restarted within {} s: see `leasedog list`",
                    limit.as_secs()
                )));
            }
            // The leader also ends a request that did not run: a schedule
            // it found stale, a switchover that did not happen. Every member
            // publishes the id once it took part (restarted, or found the
            // request not meant for it); a member key may lag a cycle.
            let mut missed = Vec::new();
            let lag = Duration::from_secs(cfg.loop_wait.max(1) * 2);
            let took_part = wait_until(&mut dcs, t, lag, |v| {
                missed = v
                    .members
                    .iter()
                    .filter(|m| m.info.restarted.as_deref() != Some(id.as_str()))
                    .map(|m| m.name.clone())
                    .collect();
                missed.is_empty()
            })
            .await;
            if !took_part {
                return Err(fail(&format!(
                    "restart {id} ended before {} took part in it (dropped as stale, or the switchover did not happen): see the leader's log",
                    missed.join(", ")
                )));
            }
            println!("Restart {id} done");
        }
        Ok(())
    })
}

/// edit-config: the edited value is checked before anything is written,
/// and written only if the key is still what was read (compare-and-swap).
fn edit_config(
    path: &std::path::Path,
    set: &[String],
    pg: &[String],
    apply: Option<&std::path::Path>,
    force: bool,
    quiet: bool,
) -> Result<(), ExitCode> {
    use crate::dynamic_config as dc;
    use std::io::{BufRead, Read, Write};
    let cfg = load(path)?;
    let rt = runtime()?;
    let mut dcs = dcs_of(&cfg)?;
    let t = timeout_of(&cfg);
    let (before, revision) = rt
        .block_on(dcs.read_config(t))
        .map_err(|e| fail(&format!("cannot read the config key: {e}")))?;
    let mut after = before.clone();
    let scripted = !set.is_empty() || !pg.is_empty() || apply.is_some();
    if let Some(file) = apply {
        let text = if file.as_os_str() == "-" {
            let mut s = String::new();
            std::io::stdin()
                .read_to_string(&mut s)
                .map_err(|e| fail(&format!("reading stdin: {e}")))?;
            s
        } else {
            std::fs::read_to_string(file).map_err(|e| fail(&format!("{}: {e}", file.display())))?
        };
        let patch = dc::from_yaml(&text).map_err(|e| fail(&format!("{}: {e}", file.display())))?;
        dc::merge(&mut after, &patch);
    }
    for s in set {
        let (k, v) = dc::parse_assignment(s).map_err(|e| fail(&format!("--set {e}")))?;
        dc::set_path(&mut after, &k, v);
    }
    for s in pg {
        let (k, v) = dc::parse_assignment(s).map_err(|e| fail(&format!("--pg {e}")))?;
        dc::set_path(&mut after, &format!("postgresql.parameters.{k}"), v);
    }
    if !scripted {
        let editor = std::env::var("EDITOR")
            .or_else(|_| std::env::var("VISUAL"))
            .unwrap_or_else(|_| "vi".into());
        let dir = std::env::temp_dir();
        let file = dir.join(format!("leasedog-config-{}.yaml", std::process::id()));
        std::fs::write(&file, dc::to_yaml(&before))
            .map_err(|e| fail(&format!("{}: {e}", file.display())))?;
        let status = std::process::Command::new("sh")
            .arg("-c")
            .arg(format!("{editor} \"$1\""))
            .arg("sh")
            .arg(&file)
            .status();
        let text = std::fs::read_to_string(&file);
        let _ = std::fs::remove_file(&file);
        match status {
            Ok(s) if s.success() => {}
            Ok(s) => return Err(fail(&format!("{editor} exited with {s}: nothing written"))),
            Err(e) => return Err(fail(&format!("cannot run {editor}: {e}"))),
        }
        let text = text.map_err(|e| fail(&format!("reading the edited file: {e}")))?;
        after =
            dc::from_yaml(&text).map_err(|e| fail(&format!("the edited configuration: {e}")))?;
    }
    let errors = dc::check(&before, &after);
    if !errors.is_empty() {
        for e in &errors {
            eprintln!("error: config key: {e}");
        }
        eprintln!("nothing written");
        return Err(ExitCode::from(1));
    }
    let (y0, y1) = (dc::to_yaml(&before), dc::to_yaml(&after));
    if before == after {
        println!("Not changed");
        return Ok(());
    }
    if !quiet {
        print!("{}", dc::unified_diff(&y0, &y1));
    }
    if !force {
        print!("Apply these changes? [y/N]: ");
        let _ = std::io::stdout().flush();
        let mut answer = String::new();
        let _ = std::io::stdin().lock().read_line(&mut answer);
        if !matches!(answer.trim(), "y" | "Y" | "yes") {
            println!("Aborted: nothing written");
            return Err(ExitCode::from(1));
        }
    }
    match rt.block_on(dcs.write_config_if(&after, revision, t)) {
        Ok(true) => {
            println!("Configuration changed");
            Ok(())
        }
        Ok(false) => Err(fail(
            "the config key changed since it was read (another edit-config, pause or resume): nothing written; run edit-config again",
        )),
        Err(e) => Err(fail(&format!("cannot write the config key: {e}"))),
    }
}

fn switchover(
    path: &std::path::Path,
    to: Option<String>,
    at: Option<String>,
) -> Result<(), ExitCode> {
    let cfg = load(path)?;
    if let Some(a) = &at
        && crate::cluster::parse_time(a).is_none()
    {
        return Err(fail(&format!(
            "--at {a:?}: expected ISO 8601 UTC (2026-11-23T05:00:00Z) or unix seconds"
        )));
    }
    let rt = runtime()?;
    rt.block_on(async {
        let t = timeout_of(&cfg);
        let mut dcs = dcs_of(&cfg)?;
        let view = dcs
            .read(t)
            .await
            .map_err(|e| fail(&format!("cannot read the cluster from etcd: {e}")))?;
        if view.paused() {
            return Err(fail("the cluster is in maintenance mode: resume it first"));
        }
        let leader = view
            .leader
            .as_ref()
            .map(|l| l.name.clone())
            .ok_or_else(|| fail("there is no leader: use failover --to NAME"))?;
        if view.member(&leader).is_none() {
            return Err(fail(&format!(
                "the leader {leader} publishes no member key"
            )));
        }
        // Lag is left to the leader, which judges it from its live
        // pg_stat_replication: published positions can be a cycle old and
        // a WAL segment apart, and would refuse a healthy candidate.
        let local = crate::cluster::LocalPostgres {
            lsn: None,
            running: true,
            ..Default::default()
        };
        let mut ha = crate::ha::HaConfig::from_config(&cfg);
        ha.name = leader.clone();
        let target = crate::ha::switchover_target(&ha, &view, &local, to.as_deref())
            .map_err(|e| fail(&format!("switchover refused: {e}")))?;
        let req = crate::cluster::FailoverRequest {
            leader: Some(leader.clone()),
            member: to.clone(),
            scheduled_at: at.clone(),
            allow_data_loss: false,
        };
        dcs.put_failover(&req, t)
            .await
            .map_err(|e| fail(&format!("cannot write the failover key: {e}")))?;
        if let Some(a) = at {
            println!("switchover from {leader} scheduled at {a}");
            return Ok(());
        }
        let limit = Duration::from_secs(cfg.ttl.max(30));
        let mut new_leader = None;
        let done = wait_until(&mut dcs, t, limit, |v| {
            let l = v.leader.as_ref().map(|l| l.name.clone());
            if l.as_ref().is_some_and(|l| *l != leader) {
                new_leader = l;
                return true;
            }
            v.failover.is_none() && l.as_deref() == Some(leader.as_str())
        })
        .await;
        match new_leader {
            Some(n) => {
                println!("switched over from {leader} to {n} (asked for {target})");
                Ok(())
            }
            None if done => Err(fail(&format!(
                "switchover refused by the leader {leader}: see its log"
            ))),
            None => Err(fail("the switchover did not complete in time")),
        }
    })
}

fn failover(path: &std::path::Path, to: &str, allow_data_loss: bool) -> Result<(), ExitCode> {
    let cfg = load(path)?;
    let rt = runtime()?;
    rt.block_on(async {
        let t = timeout_of(&cfg);
        let mut dcs = dcs_of(&cfg)?;
        let view = dcs
            .read(t)
            .await
            .map_err(|e| fail(&format!("cannot read the cluster from etcd: {e}")))?;
        let m = view
            .member(to)
            .ok_or_else(|| fail(&format!("failover refused: no member named {to}")))?;
        if m.info.tags.nofailover {
            return Err(fail(&format!(
                "failover refused: {to} is tagged nofailover"
            )));
        }
        if m.info.state != "running" {
            return Err(fail(&format!("failover refused: {to} is not running")));
        }
        if view.leader.as_ref().is_some_and(|l| l.name == to) {
            return Err(fail(&format!(
                "failover refused: {to} is already the leader"
            )));
        }
        // The key's synchronous_mode wins over the file's, as in the agents.
        let (key, _) = crate::dynamic_config::effective(
            &cfg,
            &view.config,
            &crate::dynamic_config::KeySettings::of_file(&cfg),
        );
        if key.synchronous_mode != crate::config::SyncMode::Off && !allow_data_loss {
            let sync = view.sync.as_ref().filter(|s| s.leader.is_some());
            let vouched = sync.is_none_or(|s| {
                s.leader.as_deref() == Some(to) || s.standbys().iter().any(|n| n == to)
            });
            if view.sync_unreadable || !vouched {
                return Err(fail(&format!(
                    "failover refused: {to} is not a synchronous standby and may lack commits \
                     that clients saw acknowledged; add --allow-data-loss to promote it anyway"
                )));
            }
        }
        let leader = view.leader.as_ref().map(|l| l.name.clone());
        let req = crate::cluster::FailoverRequest {
            leader,
            member: Some(to.to_string()),
            scheduled_at: None,
            allow_data_loss,
        };
        dcs.put_failover(&req, t)
            .await
            .map_err(|e| fail(&format!("cannot write the failover key: {e}")))?;
        let ok = wait_until(&mut dcs, t, Duration::from_secs(cfg.ttl.max(30) * 2), |v| {
            v.leader.as_ref().is_some_and(|l| l.name == to)
        })
        .await;
        if ok {
            println!("{to} is the leader");
            Ok(())
        } else {
            Err(fail(&format!("{to} did not become the leader in time")))
        }
    })
}

/// The members that carried out restart request `id` (they publish it).
fn restarted_members<'a>(view: &'a crate::cluster::ClusterView, id: &str) -> Vec<&'a str> {
    view.members
        .iter()
        .filter(|m| m.info.restarted.as_deref() == Some(id))
        .map(|m| m.name.as_str())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn history_key_is_read_strictly() {
        let h = read_history(
            r#"[[1, 25165984, "no recovery target specified", "2026-01-02T03:04:05Z", "n2"], [2, 50331648, "switchover"]]"#,
        )
        .unwrap();
        assert_eq!(h.len(), 2);
        assert_eq!(
            h[0],
            (
                1,
                25165984,
                "no recovery target specified".into(),
                "2026-01-02T03:04:05Z".into(),
                "n2".into()
            )
        );
        assert_eq!((h[1].0, h[1].3.as_str()), (2, ""));
        assert_eq!(read_history("[]").unwrap(), vec![]);
        // Garbage of every kind is an error quoting a short excerpt.
        let huge = format!("garbage{}", "x".repeat(1 << 20));
        for (raw, says) in [
            ("not json", "not JSON"),
            ("{\"a\":1}", "found \"{\\\"a\\\":1}\""),
            (huge.as_str(), "(1048583 bytes)"),
            ("[[1, 2], \"x\"]", "entry 2 is \"\\\"x\\\"\""),
            ("[[-1, 2]]", "entry 1"),
            ("[[4294967296, 2]]", "entry 1"),
            ("[[1, 2, 3]]", "entry 1"),
        ] {
            let e = read_history(raw).unwrap_err();
            assert!(e.contains(says), "{raw:.40}: {e}");
            assert!(e.contains("expected a JSON list"), "{e}");
            assert!(e.len() < 400, "{}", e.len());
        }
    }

    /// `list` shows a scheduled switchover and a scheduled restart (times
    /// as ISO 8601 UTC whatever form they were written in), `--json`
    /// carries them; a started restart shows who is done.
    #[test]
    fn list_shows_scheduled_actions() {
        use crate::cluster::{ClusterView, FailoverRequest, Leader, Member, RestartRequest};
        let mut v = ClusterView {
            leader: Some(Leader {
                name: "a".into(),
                lease: 1,
                create_revision: 1,
                mod_revision: 1,
            }),
            members: vec![Member {
                name: "a".into(),
                info: Default::default(),
                lease: Some(1),
            }],
            failover: Some(FailoverRequest {
                leader: Some("a".into()),
                scheduled_at: Some("1800000000".into()),
                ..Default::default()
            }),
            restart: Some(RestartRequest {
                id: "r1".into(),
                scheduled_at: Some("2027-01-15T09:30:00+00:00".into()),
                pending: true,
                switchover: true,
                ..Default::default()
            }),
            ..Default::default()
        };
        let table = list_table("demo", &v);
        assert!(
            table.contains(
                " Switchover scheduled at: 2027-01-15T08:00:00Z (from a to the best replica)\n"
            ),
            "{table}"
        );
        assert!(
            table.contains(
                " Restart r1 scheduled at: 2027-01-15T09:30:00Z (pending only; the primary after a switchover)\n"
            ),
            "{table}"
        );
        let json: serde_json::Value = serde_json::from_str(&list_json(&v)).unwrap();
        assert_eq!(
            json["scheduled_switchover"],
            serde_json::json!({"scheduled_at": "2027-01-15T08:00:00Z", "from": "a", "to": null})
        );
        assert_eq!(json["restart"]["scheduled_at"], "2027-01-15T09:30:00Z");
        assert_eq!(json["restart"]["switchover"], true);
        // Started (no time left in it), and no switchover scheduled.
        v.failover = None;
        v.restart.as_mut().unwrap().scheduled_at = None;
        v.members[0].info.restarted = Some("r1".into());
        let table = list_table("demo", &v);
        assert!(!table.contains("scheduled"), "{table}");
        assert!(table.contains(" Restart r1 in progress (pending only; the primary after a switchover): done on [a]\n"), "{table}");
        let json: serde_json::Value = serde_json::from_str(&list_json(&v)).unwrap();
        assert_eq!(json["scheduled_switchover"], serde_json::Value::Null);
        assert_eq!(json["restart"]["scheduled_at"], serde_json::Value::Null);
        assert_eq!(json["restart"]["done"], serde_json::json!(["a"]));
        // A time nobody can read is shown as found, never run.
        v.restart.as_mut().unwrap().scheduled_at = Some("soon\u{1b}[2J".into());
        let table = list_table("demo", &v);
        assert!(
            table.contains("scheduled at: \"soon\\u{1b}[2J\" (unreadable)"),
            "{table}"
        );
    }
}
