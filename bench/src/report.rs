//! The run's figures, the targets they are held to, and the report: a
//! table on stdout and `bench/results/latest-<db>.json`.

use serde_json::json;

use crate::load::Measured;

/// One scenario: its name, what was measured, statements and transactions per operation.
pub type Row = (String, Measured, f64, f64);

/// What one run measured beside the scenario rows.
pub struct Figures {
    pub argon: f64,
    pub lettre: f64,
    pub email: f64,
    pub health: Measured,
    /// `GET /user` over `/health`: the median of the rounds measured.
    pub user_over_health: f64,
    pub logins: Measured,
    pub user_small: Measured,
    pub refresh_small: Measured,
    pub floor: Measured,
    /// One actor round trip (ns): one caller, and each of 64 callers.
    pub trip: (f64, f64),
    pub idle_rss: f64,
    pub login_peak_rss: f64,
    pub big: Big,
    pub growth: Growth,
}

/// What the large table measured (and the runs after it).
pub struct Big {
    pub recover_small: Measured,
    pub user_big: Measured,
    pub logins_big: Measured,
    pub recover_big: Measured,
    pub refresh_big: Measured,
    pub refresh_legacy: Measured,
    pub cache_sessions: u64,
    pub rss_before_fill: f64,
    pub rss_cache_full: f64,
    pub peak_rss: f64,
}

/// Growth: a live session for every user (`user`, `refresh` measured
/// beside them), then as many that ended days ago, swept while refresh and
/// `GET /user` are measured again.
pub struct Growth {
    pub user: Measured,
    pub refresh: Measured,
    pub ended: u64,
    pub refresh_during_sweep: Measured,
    pub user_during_sweep: Measured,
    /// Ended sessions still there when the wait ended, and how long it was.
    pub left: i64,
    pub sweep_seconds: f64,
}

/// How the run was made.
pub struct Run<'a> {
    pub db: &'a str,
    pub connections: usize,
    pub seconds: u64,
    pub big_users: u64,
}

/// A bound a figure is held to: at least it, or at most.
struct Target {
    name: &'static str,
    measured: f64,
    bound: f64,
    at_least: bool,
}

impl Target {
    fn met(&self) -> bool {
        match self.at_least {
            true => self.measured >= self.bound,
            false => self.measured <= self.bound,
        }
    }
}

fn ratio(a: f64, b: f64) -> f64 {
    if b > 0.0 { a / b } else { 0.0 }
}

fn cores() -> f64 {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(2) as f64
}

// A table: one line a target.
#[rustfmt::skip]
fn targets(f: &Figures, rows: &[Row]) -> Vec<Target> {
    let statements = |name: &str| rows.iter().find(|r| r.0 == name).map_or(0.0, |r| r.2);
    let rss_budget = 64.0 + cores() * 19456.0 / 1024.0;
    let (floor, user, refresh) = (f.floor.per_second, &f.user_small, &f.refresh_small);
    let per_s = |m: &Measured| m.per_second;
    // (name, measured, bound): at least the bound.
    let at_least = [
        ("emails delivered / lettre alone", ratio(f.email, f.lettre), 0.5),
        ("password sign-in / argon2id limit", ratio(per_s(&f.logins), f.argon), 0.9),
        ("GET /user / GET /health (median of the rounds)", f.user_over_health, 0.7),
        ("refresh / write-transaction floor", ratio(per_s(refresh), floor), 0.7),
        ("refresh (legacy tokens) / write-transaction floor", ratio(per_s(&f.big.refresh_legacy), floor), 0.7),
        ("GET /user big / 1k", ratio(per_s(&f.big.user_big), per_s(user)), 0.8),
        ("refresh big / 1k", ratio(per_s(&f.big.refresh_big), per_s(refresh)), 0.8),
        ("password sign-in big / 1k", ratio(per_s(&f.big.logins_big), per_s(&f.logins)), 0.8),
        ("/recover big / 1k", ratio(per_s(&f.big.recover_big), per_s(&f.big.recover_small)), 0.8),
        ("GET /user, a live session per user / 1k", ratio(per_s(&f.growth.user), per_s(user)), 0.8),
        ("refresh, a live session per user / 1k", ratio(per_s(&f.growth.refresh), per_s(refresh)), 0.8),
    ];
    // (name, measured, bound): at most the bound.
    let at_most = [
        ("password sign-in statements/op", statements("POST /token password"), 3.0),
        ("refresh statements/op", statements("POST /token refresh (1k)"), 3.0),
        ("refresh (legacy tokens) statements/op", statements("POST /token refresh, legacy tokens (1k)"), 3.0),
        ("GET /user p99 / p50", ratio(user.p99_ms, user.p50_ms), 4.0),
        ("refresh p99 / p50", ratio(refresh.p99_ms, refresh.p50_ms), 4.0),
        ("idle RSS MiB", f.idle_rss, 30.0),
        ("peak RSS under sign-in MiB", f.login_peak_rss, rss_budget),
        ("GET /user p99 during the sweep / without it", ratio(f.growth.user_during_sweep.p99_ms, f.growth.user.p99_ms), 2.0),
        ("refresh p99 during the sweep / without it", ratio(f.growth.refresh_during_sweep.p99_ms, f.growth.refresh.p99_ms), 2.0),
        ("ended sessions left after the sweep", f.growth.left as f64, 0.0),
    ];
    let target = |at_least| move |(name, measured, bound)| Target { name, measured, bound, at_least };
    at_least.into_iter().map(target(true)).chain(at_most.into_iter().map(target(false))).collect()
}

fn print(run: &Run, f: &Figures, rows: &[Row], targets: &[Target], hit_rates: &[(String, f64)]) {
    println!(
        "\ncastellan benchmark: {} connections, {} s per scenario, {} on {} cores",
        run.connections,
        run.seconds,
        run.db,
        cores()
    );
    println!("| scenario | ops/s | p50 ms | p99 ms | errors | statements/op | transactions/op |");
    println!("|---|---:|---:|---:|---:|---:|---:|");
    println!(
        "| argon2id verify, in-process, all cores | {:.1} | | | | | |",
        f.argon
    );
    for (name, m, q, t) in rows {
        println!(
            "| {name} | {:.0} | {:.2} | {:.2} | {} | {q:.2} | {t:.2} |",
            m.per_second, m.p50_ms, m.p99_ms, m.errors
        );
    }
    println!("\n| target | measured | bound | met |");
    println!("|---|---:|---:|---|");
    for t in targets {
        println!(
            "| {} | {:.2} | {} {:.2} | {} |",
            t.name,
            t.measured,
            if t.at_least { "≥" } else { "≤" },
            t.bound,
            if t.met() { "yes" } else { "**no**" }
        );
    }
    println!(
        "\nactor round trip: {:.0} ns (one caller), {:.0} ns a call (64 callers)",
        f.trip.0, f.trip.1
    );
    for (name, rate) in hit_rates {
        println!("\nhit rate of the {name}: {rate:.4}");
    }
    println!(
        "\nexpiry sweep: {} ended sessions, {} left after {:.1} s",
        f.growth.ended, f.growth.left, f.growth.sweep_seconds
    );
    println!(
        "\npeak RSS over the whole run: {:.1} MiB; idle {:.1} MiB; with the session cache full ({} sessions): {:.1} MiB (before filling {:.1} MiB)",
        f.big.peak_rss,
        f.idle_rss,
        f.big.cache_sessions,
        f.big.rss_cache_full,
        f.big.rss_before_fill
    );
}

/// Prints the report and writes it as JSON.
pub fn write(
    run: &Run,
    f: &Figures,
    rows: &[Row],
    hit_rates: &[(String, f64)],
) -> anyhow::Result<()> {
    let targets = targets(f, rows);
    print(run, f, rows, &targets, hit_rates);
    let report = json!({
        "db": run.db,
        "connections": run.connections,
        "seconds_per_scenario": run.seconds,
        "cores": cores(),
        "big_users": run.big_users,
        "argon2id_verifications_per_second": f.argon,
        "lettre_alone_per_second": f.lettre,
        "emails_delivered_per_second": f.email,
        "idle_rss_mib": f.idle_rss,
        "peak_rss_under_password_load_mib": f.login_peak_rss,
        "peak_rss_mib": f.big.peak_rss,
        "rss_cache_full_mib": f.big.rss_cache_full,
        "rss_before_cache_fill_mib": f.big.rss_before_fill,
        "cache_sessions": f.big.cache_sessions,
        "ended_sessions_swept": f.growth.ended,
        "ended_sessions_left": f.growth.left,
        "sweep_seconds": f.growth.sweep_seconds,
        "health": f.health,
        "user_over_health_median": f.user_over_health,
        "floor": f.floor,
        "actor_round_trip_ns": {"one_caller": f.trip.0, "callers_64": f.trip.1},
        "cache_hit_rates": hit_rates.iter().map(|(n, r)| json!({"scenario": n, "hit_rate": r})).collect::<Vec<_>>(),
        "scenarios": rows.iter().map(|(n, m, q, t)| json!({"name": n, "measured": m, "statements_per_op": q, "transactions_per_op": t})).collect::<Vec<_>>(),
        "targets": targets.iter().map(|t| json!({"target": t.name, "measured": t.measured, "bound": t.bound,
            "at_least": t.at_least, "met": t.met()})).collect::<Vec<_>>(),
    });
    let out = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join(format!("results/latest-{}.json", run.db));
    std::fs::write(&out, serde_json::to_string_pretty(&report)?)?;
    println!("wrote {}", out.display());
    Ok(())
}
