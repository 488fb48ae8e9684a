//! Rendering of the `status` command: a table an operator can read at 3 a.m. (which node is
//! broken and why), a wide variant, and the exit code rule (0 all desired nodes ready, 1 not;
//! drained nodes are not desired: an operator's drain is intended).

use kube_ssh_tunnel::admin::document::{NodeDocument, StatusDocument};

/// Output shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Table,
    Wide,
}

/// 0 when every desired node is ready, 1 otherwise. Drained (and draining) nodes are not
/// desired: a cluster whose nodes are all ready but for drained ones exits 0.
pub fn exit_code(doc: &StatusDocument) -> i32 {
    if doc.ready == doc.desired { 0 } else { 1 }
}

/// `5s`, `3m12s`, `2h05m`, `3d4h`.
pub fn human_duration(secs: f64) -> String {
    let s = secs.max(0.0) as u64;
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m{:02}s", s / 60, s % 60),
        3600..86400 => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
        _ => format!("{}d{}h", s / 86400, (s % 86400) / 3600),
    }
}

fn health(n: &NodeDocument, now: std::time::SystemTime) -> String {
    match &n.last_health {
        None => "-".into(),
        Some(h) => {
            let ago = humantime::parse_rfc3339(&h.at)
                .ok()
                .and_then(|t| now.duration_since(t).ok())
                .map(|d| human_duration(d.as_secs_f64()))
                .unwrap_or_else(|| "?".into());
            if h.ok {
                format!("ok {ago} ago")
            } else {
                format!("fail: {}", h.error.as_deref().unwrap_or("?"))
            }
        }
    }
}

fn cut(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        s.to_string()
    } else {
        let mut t: String = s.chars().take(max.saturating_sub(1)).collect();
        t.push('…');
        t
    }
}

fn bytes(n: u64) -> String {
    const U: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut i = 0;
    while v >= 1024.0 && i < U.len() - 1 {
        v /= 1024.0;
        i += 1;
    }
    if i == 0 {
        format!("{n}B")
    } else {
        format!("{v:.1}{}", U[i])
    }
}

fn paint(state: &str, color: bool) -> String {
    if !color {
        return state.to_string();
    }
    let code = match state {
        "ready" => "32",
        "degraded" | "connecting" | "backoff" | "waiting" => "33",
        "failed" => "31",
        "draining" | "drained" => "36",
        _ => "0",
    };
    format!("\x1b[{code}m{state}\x1b[0m")
}

/// The header line and the table.
pub fn render(doc: &StatusDocument, format: Format, color: bool) -> String {
    let now = std::time::SystemTime::now();
    let mut out = format!(
        "kube-ssh-tunnel {} — {}/{} nodes ready{} — DEPRECATED SSH tunnel mode (Konnectivity is the supported replacement)",
        doc.version,
        doc.ready,
        doc.desired,
        if doc.drained > 0 {
            format!(" — {} drained", doc.drained)
        } else {
            String::new()
        }
    );
    if doc.insecure_host_keys {
        out.push_str(" — HOST KEYS NOT VERIFIED");
    }
    out.push('\n');
    // A trust file line only when something is wrong with it.
    for f in doc.trust_files.iter().filter(|f| !f.ok) {
        out.push_str(&format!(
            "TRUST FILE {} did not reload (its contents from {} stay in use): {}\n",
            f.path,
            f.loaded_at,
            f.error.as_deref().unwrap_or("unknown error")
        ));
    }
    let mut head = vec![
        "NODE",
        "ADDRESS",
        "STATE",
        "MODE",
        "FOR",
        "DOWN",
        "FLAPS/1H",
        "CHANNELS",
        "CONNS",
        "CONGESTED",
        "BUFFERED",
        "DIALS",
        "FAILS",
        "HEALTH",
        "RETRY-IN",
        "LAST ERROR",
    ];
    if format == Format::Wide {
        head.extend([
            "HOST KEY",
            "HOST KEY TRUST",
            "CLIENT KEY",
            "POD CIDRS",
            "IN",
            "OUT",
            "RECONNECTS",
            "SPILLED",
            "REFUSED",
        ]);
    }
    let err_width = if format == Format::Wide { 200 } else { 60 };
    let rows: Vec<Vec<String>> = doc
        .nodes
        .iter()
        .map(|n| {
            let mut r = vec![
                n.name.clone(),
                if n.ssh_port == 22 {
                    n.address.clone()
                } else {
                    format!("{}:{}", n.address, n.ssh_port)
                },
                n.state.to_string(),
                n.mode.clone().unwrap_or_else(|| "-".into()),
                human_duration(n.for_s),
                n.down_for_s
                    .map(human_duration)
                    .unwrap_or_else(|| "-".into()),
                n.flaps_last_hour.to_string(),
                n.open_channels.to_string(),
                n.connections.to_string(),
                n.congested_connections.to_string(),
                bytes(n.buffered_bytes + n.spilled_bytes),
                n.dials_total.to_string(),
                n.dial_failures_total.to_string(),
                cut(&health(n, now), 40),
                n.next_retry_s
                    .map(|s| format!("{s:.1}s"))
                    .unwrap_or_else(|| "-".into()),
                cut(
                    n.last_error
                        .as_deref()
                        .or(n.drained_by.as_deref().map(|_| n.reason.as_str()))
                        .unwrap_or("-"),
                    err_width,
                ),
            ];
            if format == Format::Wide {
                r.extend([
                    n.host_key.clone().unwrap_or_else(|| "-".into()),
                    n.host_key_trust
                        .map(|t| t.to_string())
                        .unwrap_or_else(|| "-".into()),
                    n.client_key.clone().unwrap_or_else(|| "-".into()),
                    if n.pod_cidrs.is_empty() {
                        "-".into()
                    } else {
                        n.pod_cidrs.join(",")
                    },
                    bytes(n.bytes_in),
                    bytes(n.bytes_out),
                    n.reconnects.to_string(),
                    bytes(n.spilled_bytes),
                    if n.refused.is_empty() {
                        "-".into()
                    } else {
                        n.refused.join("; ")
                    },
                ]);
            }
            r
        })
        .collect();
    let mut widths: Vec<usize> = head.iter().map(|h| h.chars().count()).collect();
    for r in &rows {
        for (i, c) in r.iter().enumerate() {
            widths[i] = widths[i].max(c.chars().count());
        }
    }
    let line = |cells: Vec<String>, color_state: bool| {
        let mut l = String::new();
        for (i, c) in cells.iter().enumerate() {
            let pad = widths[i] - c.chars().count();
            let shown = if i == 2 && color_state {
                paint(c, color)
            } else {
                c.clone()
            };
            if i + 1 == cells.len() {
                l.push_str(&shown);
            } else {
                l.push_str(&shown);
                l.push_str(&" ".repeat(pad + 2));
            }
        }
        l.trim_end().to_string() + "\n"
    };
    out.push_str(&line(head.iter().map(|s| s.to_string()).collect(), false));
    for r in rows {
        out.push_str(&line(r, true));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_state_this_build_does_not_know_is_shown_not_refused() {
        let json = r#"{"version":"9.9.9","deprecated_mode":true,"insecure_host_keys":false,
            "desired":1,"ready":0,"nodes":[{"name":"n1","address":"192.0.2.1","ssh_port":22,
            "state":"hibernating","reason":"a newer daemon's state","since":"2026-01-01T00:00:00Z",
            "for_s":1.0,"uptime_s":null,"open_channels":0,"dials_total":0,
            "dial_failures_total":0,"bytes_in":0,"bytes_out":0,"reconnects":0,
            "last_health":null,"last_error":null,"next_retry_s":null,"host_key":null,
            "keepalive_rtt_ms":null,"pod_cidrs":[],"some_new_field":true}]}"#;
        let doc: StatusDocument = serde_json::from_str(json).unwrap();
        assert_eq!(doc.nodes[0].state.to_string(), "hibernating");
        let text = render(&doc, Format::Table, false);
        assert!(text.contains("hibernating"), "{text}");
        assert_eq!(exit_code(&doc), 1);
        let known: StatusDocument =
            serde_json::from_str(&json.replace("hibernating", "drained")).unwrap();
        assert_eq!(
            known.nodes[0].state,
            kube_ssh_tunnel::pool::TunnelState::Drained
        );
    }

    #[test]
    fn durations_read_well() {
        assert_eq!(human_duration(5.4), "5s");
        assert_eq!(human_duration(192.0), "3m12s");
        assert_eq!(human_duration(7500.0), "2h05m");
        assert_eq!(human_duration(273600.0), "3d4h");
    }
}
