//! Side by side: the HTTP scenarios against castellan and another
//! GoTrue-compatible server, interleaved scenario by scenario and round by
//! round in one run, so both meet the same moment of a noisy machine; or
//! against one server alone (`--target`).

use std::collections::BTreeMap;

use serde_json::json;

use crate::http_scenarios::{Endpoint, Load, Scenario};
use crate::load::Measured;

/// What one server measured.
pub struct Side {
    pub endpoint: Endpoint,
    version: String,
    runs: BTreeMap<Scenario, Vec<Measured>>,
    /// Database round trips per request of each run (castellan's counter).
    queries: BTreeMap<Scenario, Vec<f64>>,
    idle_rss: Option<f64>,
    peak_rss: Option<f64>,
}

impl Side {
    /// The round with the median rate, and the errors of every round.
    fn median(&self, scenario: Scenario) -> Option<(Measured, u64)> {
        let runs = self.runs.get(&scenario)?;
        let mut sorted = runs.clone();
        sorted.sort_by(|a, b| a.per_second.total_cmp(&b.per_second));
        let errors = runs.iter().map(|m| m.errors).sum();
        Some((sorted[sorted.len() / 2].clone(), errors))
    }

    fn rate(&self, scenario: Scenario) -> f64 {
        self.median(scenario).map_or(0.0, |(m, _)| m.per_second)
    }
}

/// Seeds each server, then runs every scenario on each in turn, `rounds` times.
pub async fn run(endpoints: Vec<Endpoint>, load: &Load) -> anyhow::Result<Vec<Side>> {
    let mut sides = Vec::new();
    for endpoint in endpoints {
        let idle_rss = endpoint.rss_mib().map(|(now, _)| now);
        let t = std::time::Instant::now();
        endpoint.seed(load).await?;
        eprintln!(
            "{}: {} users created through /admin/users in {:.1} s",
            endpoint.label,
            load.users,
            t.elapsed().as_secs_f64()
        );
        endpoint.reset_peak();
        sides.push(Side {
            version: endpoint.version().await,
            endpoint,
            runs: BTreeMap::new(),
            queries: BTreeMap::new(),
            idle_rss,
            peak_rss: None,
        });
    }
    for round in 0..load.rounds.max(1) {
        for scenario in Scenario::ALL {
            for side in &mut sides {
                let before = queries(&side.endpoint).await;
                let m = side.endpoint.run(scenario, load, round).await?;
                if let (Some(before), Some(after)) = (before, queries(&side.endpoint).await) {
                    let per = (after - before) / (m.requests.max(1) as f64);
                    side.queries.entry(scenario).or_default().push(per);
                }
                eprintln!(
                    "round {} {:<40} {:<24} {:>9.0}/s  p50 {:>8.2} ms  p99 {:>8.2} ms  errors {}",
                    round + 1,
                    scenario.name(),
                    side.endpoint.label,
                    m.per_second,
                    m.p50_ms,
                    m.p99_ms,
                    m.errors
                );
                side.runs.entry(scenario).or_default().push(m);
                // Let the server finish what the load left (queued mail, writes).
                tokio::time::sleep(std::time::Duration::from_millis(500)).await;
            }
        }
    }
    for side in &mut sides {
        side.peak_rss = side.endpoint.rss_mib().map(|(_, peak)| peak);
    }
    Ok(sides)
}

/// The database round trips of `endpoint`'s castellan processes so far
/// (none for another server).
async fn queries(endpoint: &Endpoint) -> Option<f64> {
    if endpoint.metrics.is_empty() {
        return None;
    }
    let http = reqwest::Client::new();
    let mut sum = 0.0;
    for base in &endpoint.metrics {
        let text = http
            .get(format!("{base}/metrics"))
            .send()
            .await
            .ok()?
            .text()
            .await
            .ok()?;
        sum += text
            .lines()
            .find_map(|l| l.strip_prefix("castellan_db_queries_total "))
            .and_then(|v| v.trim().parse::<f64>().ok())
            .unwrap_or(0.0);
    }
    Some(sum)
}

impl Side {
    /// The median round trips per request of `scenario`, when counted.
    fn queries_per_request(&self, scenario: Scenario) -> Option<f64> {
        let mut q = self.queries.get(&scenario)?.clone();
        q.sort_by(f64::total_cmp);
        q.get(q.len() / 2).copied()
    }
}

/// The report as a Markdown table: each server's medians and, with two,
/// the first's rate over the second's.
pub fn markdown(sides: &[Side], load: &Load) -> String {
    let mut out = format!(
        "{} connections, {} s a scenario, median of {} rounds, interleaved; {} users a server\n\n",
        load.connections,
        load.duration.as_secs(),
        load.rounds,
        load.users
    );
    for side in sides {
        out += &format!(
            "- {}: `{}` at {}\n",
            side.endpoint.label, side.version, side.endpoint.base
        );
    }
    out += "\n| scenario |";
    let mut rule = String::from("|---|");
    for side in sides {
        out += &format!(" {} ops/s | p50 / p99 ms | errors |", side.endpoint.label);
        rule += "---:|---:|---:|";
        if !side.endpoint.metrics.is_empty() {
            out += " queries/request |";
            rule += "---:|";
        }
    }
    if let [a, b] = sides {
        out += &format!(" {} ÷ {} |", a.endpoint.label, b.endpoint.label);
        rule += "---:|";
    }
    out += &format!("\n{rule}\n");
    for scenario in Scenario::ALL {
        out += &format!("| {} |", scenario.name());
        for side in sides {
            match side.median(scenario) {
                Some((m, errors)) => {
                    out += &format!(
                        " {:.0} | {:.2} / {:.2} | {errors} |",
                        m.per_second, m.p50_ms, m.p99_ms
                    )
                }
                None => out += " | | |",
            }
            if !side.endpoint.metrics.is_empty() {
                match side.queries_per_request(scenario) {
                    Some(q) => out += &format!(" {q:.2} |"),
                    None => out += " |",
                }
            }
        }
        if let [a, b] = sides {
            out += &format!(" {:.2} |", ratio(a.rate(scenario), b.rate(scenario)));
        }
        out += "\n";
    }
    let mib = |v: Option<f64>| v.map_or("?".to_string(), |v| format!("{v:.1}"));
    out += "\n| memory | ";
    out += &sides
        .iter()
        .map(|s| s.endpoint.label.clone())
        .collect::<Vec<_>>()
        .join(" | ");
    out += " |\n|---|";
    out += &"---:|".repeat(sides.len());
    out += "\n| idle RSS MiB |";
    for side in sides {
        out += &format!(" {} |", mib(side.idle_rss));
    }
    out += "\n| peak RSS over the run MiB |";
    for side in sides {
        out += &format!(" {} |", mib(side.peak_rss));
    }
    out += "\n";
    // Against another server (not castellan beside castellan).
    if let [a, b] = sides
        && b.endpoint.metrics.is_empty()
    {
        let health = ratio(a.rate(Scenario::Health), b.rate(Scenario::Health));
        out += &format!(
            "\ntarget: `GET /health` ≥ 1.5 × {}'s: {health:.2}, {}\n",
            b.endpoint.label,
            if health >= 1.5 { "met" } else { "**not met**" }
        );
    }
    out
}

/// The report as JSON: every round of every scenario on every server.
pub fn json(sides: &[Side], load: &Load) -> serde_json::Value {
    json!({
        "connections": load.connections,
        "seconds_per_scenario": load.duration.as_secs(),
        "rounds": load.rounds,
        "users": load.users,
        "servers": sides.iter().map(|s| json!({
            "label": s.endpoint.label,
            "version": s.version,
            "base": s.endpoint.base,
            "idle_rss_mib": s.idle_rss,
            "peak_rss_mib": s.peak_rss,
            "scenarios": Scenario::ALL.iter().map(|sc| json!({
                "name": sc.name(),
                "rounds": s.runs.get(sc),
                "median_per_second": s.rate(*sc),
                "queries_per_request": s.queries_per_request(*sc),
            })).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
    })
}

fn ratio(a: f64, b: f64) -> f64 {
    if b > 0.0 { a / b } else { 0.0 }
}
