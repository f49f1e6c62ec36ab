//! Asking the local PostgreSQL how it is: one query over the unix socket
//! with tokio-postgres (async: the sync `postgres` crate would start its own
//! runtime inside ours), bounded by a timeout and by statement_timeout.

use crate::cluster::{DataDir, LocalPostgres, Lsn};

/// The one probe query: role, position, timeline, streaming, upstream,
/// system identifier, replication slot streamed with. Primary-only
/// functions sit behind CASE so a replica never calls them.
pub const PROBE_SQL: &str = "SELECT pg_is_in_recovery(),
  CASE WHEN pg_is_in_recovery()
       THEN GREATEST(pg_last_wal_receive_lsn(), pg_last_wal_replay_lsn())::text
       ELSE pg_current_wal_lsn()::text END,
  CASE WHEN pg_is_in_recovery()
       THEN COALESCE((SELECT received_tli FROM pg_stat_wal_receiver),
                     (SELECT timeline_id FROM pg_control_checkpoint()))::bigint
       ELSE ('x' || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8))::bit(32)::bigint END,
  COALESCE((SELECT status = 'streaming' FROM pg_stat_wal_receiver), false),
  current_setting('primary_conninfo'),
  (SELECT system_identifier FROM pg_control_system())::text,
  current_setting('primary_slot_name'),
  current_setting('synchronous_standby_names'),
  EXISTS (SELECT 1 FROM pg_settings WHERE pending_restart)";

/// The primary's physical replication slots (not temporary ones) and their
/// restart LSNs, for the `status` key.
pub const SLOTS_SQL: &str = "SELECT slot_name::text, COALESCE(restart_lsn, '0/0')::text
  FROM pg_replication_slots WHERE slot_type = 'physical' AND NOT temporary";

/// The primary's replication connections.
pub const REPLICATION_SQL: &str =
    "SELECT application_name, state = 'streaming', COALESCE(flush_lsn, '0/0')::text
  FROM pg_stat_replication WHERE NOT pg_is_in_recovery()";

/// `host:port` from a primary_conninfo string (None when empty).
pub fn conninfo_host_port(conninfo: &str) -> Option<String> {
    let mut host = None;
    let mut port = "5432".to_string();
    for part in conninfo.split_whitespace() {
        if let Some((k, v)) = part.split_once('=') {
            let v = v.trim_matches('\'').to_string();
            match k {
                "host" => host = Some(v),
                "port" => port = v,
                _ => {}
            }
        }
    }
    host.map(|h| format!("{h}:{port}"))
}

/// Builds the local state from one probe row.
pub fn from_row(
    in_recovery: bool,
    lsn: Option<String>,
    timeline: Option<i64>,
    streaming: bool,
    primary_conninfo: String,
    system_id: String,
    primary_slot_name: String,
) -> LocalPostgres {
    let lsn = lsn.and_then(|l| Lsn::parse(&l));
    let timeline = timeline.map(|t| t as u32);
    LocalPostgres {
        data_dir: DataDir::Initialized {
            system_id,
            was_primary: !in_recovery,
            crashed: false,
            timeline: timeline.unwrap_or(0),
            checkpoint: lsn.unwrap_or_default(),
        },
        running: true,
        unknown: false,
        in_recovery,
        timeline,
        lsn,
        streaming: in_recovery && streaming,
        following: if in_recovery {
            conninfo_host_port(&primary_conninfo)
        } else {
            None
        },
        replication: Vec::new(),
        pending_restart: false,
        slot: (in_recovery && !primary_slot_name.is_empty()).then_some(primary_slot_name),
        slots: None,
        sync_names: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conninfo_parsing() {
        assert_eq!(
            conninfo_host_port("host=10.0.0.1 port=5433 user=rep application_name=x").as_deref(),
            Some("10.0.0.1:5433")
        );
        assert_eq!(
            conninfo_host_port("host='h' user=x").as_deref(),
            Some("h:5432")
        );
        assert_eq!(conninfo_host_port(""), None);
    }

    #[test]
    fn rows() {
        let r = from_row(
            true,
            Some("0/5000000".into()),
            Some(2),
            true,
            "host=h port=1".into(),
            "77".into(),
            "node_1".into(),
        );
        assert!(r.running && r.in_recovery && r.streaming);
        assert_eq!(r.following.as_deref(), Some("h:1"));
        assert_eq!(r.slot.as_deref(), Some("node_1"));
        assert_eq!(r.lsn, Some(Lsn(0x5000000)));
        let p = from_row(
            false,
            Some("0/1".into()),
            Some(1),
            false,
            String::new(),
            "77".into(),
            String::new(),
        );
        assert!(p.writable());
        assert_eq!((&p.following, &p.slot), (&None, &None));
        assert_eq!(p.system_id(), Some("77"));
    }
}
