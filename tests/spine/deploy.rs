//! The shipped deployment (issue 14): docker-compose.yml, the Dockerfile and
//! the Prometheus, Alertmanager and Grafana provisioning refer only to things
//! that exist. Docker does not run where the tests run, so this reads the
//! files the way compose would and checks every reference: services, files,
//! ports, variables and commands; and that the compose file is safe to start
//! from a fresh clone: secrets only from `.env` (no default), ports on
//! loopback, exact image versions, a healthcheck for each castellan process.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use yaml_rust2::{Yaml, YamlLoader};

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

fn yaml(path: &str) -> Yaml {
    let text = std::fs::read_to_string(repo(path)).unwrap_or_else(|e| panic!("{path}: {e}"));
    let mut docs = YamlLoader::load_from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}"));
    assert_eq!(docs.len(), 1, "{path}: one document");
    docs.remove(0)
}

/// A service with compose's `<<` merge key applied (yaml-rust2 resolves
/// the anchor, not the merge).
fn merged(service: &Yaml) -> yaml_rust2::yaml::Hash {
    let mut out = yaml_rust2::yaml::Hash::new();
    let own = service.as_hash().expect("a service is a mapping");
    if let Some(base) = own.get(&Yaml::String("<<".into())) {
        out.extend(base.as_hash().expect("<< merges a mapping").clone());
    }
    for (k, v) in own {
        if k.as_str() != Some("<<") {
            out.insert(k.clone(), v.clone());
        }
    }
    out
}

fn get<'a>(h: &'a yaml_rust2::yaml::Hash, key: &str) -> Option<&'a Yaml> {
    h.get(&Yaml::String(key.into()))
}

fn strings(y: &Yaml) -> Vec<String> {
    y.as_vec()
        .map(|v| {
            v.iter()
                .filter_map(|s| s.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// `host:port` as written in a URL or address.
fn host_port(s: &str) -> (String, Option<u16>) {
    let s = s.split("://").last().unwrap();
    let s = s.rsplit('@').next().unwrap();
    let s = s.split('/').next().unwrap();
    match s.rsplit_once(':') {
        Some((h, p)) => (h.to_string(), p.parse().ok()),
        None => (s.to_string(), None),
    }
}

/// A value as compose interpolates it. `${VAR:-default}` and `${VAR-default}`
/// give the default (VAR unset); `${VAR:?message}`, `${VAR?message}` and
/// `${VAR}` a stand-in for the value `.env` gives (compose refuses to start
/// without a `:?` one); `$$` is a `$`.
fn interpolate(value: &str) -> String {
    let mut out = String::new();
    let mut rest = value;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let after = &rest[at + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            out.push('$');
            rest = tail;
            continue;
        }
        let (name, op, tail) = substitution(value, after);
        let replacement = match op.trim_start_matches(':').strip_prefix('-') {
            Some(default) => default.to_string(),
            None => format!("{}-from-dotenv", name.to_ascii_lowercase()),
        };
        out.push_str(&replacement);
        rest = tail;
    }
    out.push_str(rest);
    out
}

/// `{NAME<op>}rest` after a `$`: the name, the operator with its argument
/// (`:?message`, `:-default`, or empty), and what follows the `}`.
fn substitution<'a>(value: &str, after: &'a str) -> (&'a str, &'a str, &'a str) {
    let body = after
        .strip_prefix('{')
        .unwrap_or_else(|| panic!("{value:?}: write ${{VAR…}} (or $$ for a $)"));
    let end = body
        .find('}')
        .unwrap_or_else(|| panic!("{value:?}: a ${{ without its }}"));
    let inner = &body[..end];
    let name_end = inner
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .unwrap_or(inner.len());
    let (name, op) = inner.split_at(name_end);
    assert!(!name.is_empty(), "{value:?}: a substitution without a name");
    assert!(
        op.is_empty() || [":-", "-", ":?", "?"].iter().any(|o| op.starts_with(o)),
        "{value:?}: {op:?} is not an operator these tests read"
    );
    (name, op, &body[end + 1..])
}

/// Every `${…}` in a value: (name, operator with its argument).
fn substitutions(value: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut rest = value;
    while let Some(at) = rest.find('$') {
        let after = &rest[at + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            rest = tail;
            continue;
        }
        let (name, op, tail) = substitution(value, after);
        out.push((name.to_string(), op.to_string()));
        rest = tail;
    }
    out
}

/// A service's environment (a mapping, every value a string), as compose
/// interpolates it with `.env` present.
fn environment(name: &str, svc: &yaml_rust2::yaml::Hash) -> HashMap<String, String> {
    let Some(env) = get(svc, "environment") else {
        return HashMap::new();
    };
    env.as_hash()
        .unwrap_or_else(|| panic!("{name}: environment as a mapping"))
        .iter()
        .map(|(k, v)| {
            let value = match v {
                Yaml::String(s) => s.clone(),
                other => panic!("{name}: {k:?} is not quoted: {other:?}"),
            };
            (k.as_str().unwrap().to_string(), interpolate(&value))
        })
        .collect()
}

#[test]
fn docker_compose_refers_only_to_what_exists() {
    let compose = yaml("docker-compose.yml");
    let services = compose["services"].as_hash().expect("services");
    let names: BTreeSet<String> = services
        .keys()
        .map(|k| k.as_str().unwrap().to_string())
        .collect();
    for wanted in [
        "postgres",
        "migrate",
        "api",
        "worker",
        "mail",
        "prometheus",
        "grafana",
    ] {
        assert!(names.contains(wanted), "service {wanted} is missing");
    }
    let (known, _) = castellan_core::config::Config::settings(&HashMap::new());
    let known: BTreeSet<String> = known.into_iter().flat_map(|s| s.names).collect();
    let mut castellan_services = 0;
    for (name, service) in services {
        let name = name.as_str().unwrap();
        let svc = merged(service);
        assert!(
            get(&svc, "image").is_some() || get(&svc, "build").is_some(),
            "{name}: no image and no build"
        );
        if let Some(build) = get(&svc, "build") {
            let context = repo(build.as_str().expect("build: a context path"));
            assert!(
                context.join("Dockerfile").is_file(),
                "{name}: no Dockerfile"
            );
        }
        // depends_on names services (the long form: a mapping).
        if let Some(deps) = get(&svc, "depends_on") {
            let deps: Vec<String> = match deps.as_hash() {
                Some(h) => h.keys().map(|k| k.as_str().unwrap().to_string()).collect(),
                None => strings(deps),
            };
            for d in deps {
                assert!(names.contains(&d), "{name} depends on unknown {d}");
            }
        }
        // Bind mounts name files or folders of this repository.
        for volume in get(&svc, "volumes").map(strings).unwrap_or_default() {
            let source = volume.split(':').next().unwrap();
            if let Some(rel) = source.strip_prefix("./") {
                assert!(repo(rel).exists(), "{name}: {source} does not exist");
            } else {
                let volumes = compose["volumes"]
                    .as_hash()
                    .expect("named volumes are declared");
                assert!(
                    volumes.contains_key(&Yaml::String(source.into())),
                    "{name}: volume {source}"
                );
            }
        }
        if get(&svc, "image").and_then(Yaml::as_str) != Some("castellan:latest") {
            continue;
        }
        castellan_services += 1;
        check_castellan_service(name, &svc, &names, &known);
    }
    assert_eq!(
        castellan_services, 3,
        "migrate, api and worker run castellan"
    );
    let api = merged(&services[&Yaml::String("api".into())]);
    assert_eq!(
        strings(get(&api, "command").unwrap()),
        ["serve", "--no-workers"]
    );
    assert_eq!(get(&api, "build").and_then(Yaml::as_str), Some("."));
}

/// A castellan service: a real subcommand, variables castellan reads and
/// accepts, and addresses that name compose services.
fn check_castellan_service(
    name: &str,
    svc: &yaml_rust2::yaml::Hash,
    services: &BTreeSet<String>,
    known: &BTreeSet<String>,
) {
    let command = strings(get(svc, "command").expect("a command"));
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_castellan"))
        .args(&command)
        .arg("--help")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{name}: castellan {command:?} is not a command"
    );
    // As compose passes it, `.env`'s secrets stood in for.
    let env = environment(name, svc);
    assert!(!env.is_empty(), "{name}: no environment");
    for var in env.keys() {
        assert!(known.contains(var), "{name}: castellan does not read {var}");
    }
    let (_, cfg) = castellan_core::config::Config::settings(&env);
    let cfg = cfg.unwrap_or_else(|e| panic!("{name}: {e}"));
    for url in [&env["DATABASE_URL"], &env["GOTRUE_SMTP_HOST"]] {
        let (host, _) = host_port(url);
        assert!(services.contains(&host), "{name}: {url} names no service");
    }
    let metrics = cfg.metrics_addr.as_deref().expect("CASTELLAN_METRICS_ADDR");
    let (_, metrics_port) = host_port(metrics);
    // Prometheus scrapes each castellan process on that port.
    let prom = yaml("prometheus/prometheus.yml");
    let jobs = prom["scrape_configs"].as_vec().unwrap();
    let scraped = jobs.iter().any(|j| {
        let statics = j["static_configs"]
            .as_vec()
            .into_iter()
            .flatten()
            .flat_map(|s| strings(&s["targets"]));
        let dns = j["dns_sd_configs"]
            .as_vec()
            .into_iter()
            .flatten()
            .flat_map(|d| {
                let port = d["port"].as_i64();
                strings(&d["names"])
                    .into_iter()
                    .map(move |n| format!("{n}:{}", port.unwrap_or_default()))
            });
        statics
            .chain(dns)
            .any(|t| t == format!("{name}:{}", metrics_port.unwrap()))
    });
    if name != "migrate" {
        assert!(
            scraped,
            "{name}:{metrics_port:?} is not scraped by prometheus/prometheus.yml"
        );
    }
    // The published API port is the port castellan listens on.
    if let Some(ports) = get(svc, "ports") {
        for p in strings(ports) {
            let inner: u16 = p.rsplit(':').next().unwrap().parse().unwrap();
            assert_eq!(inner, cfg.port, "{name}: publishes {p}");
        }
    }
}

#[test]
fn grafana_provisioning_points_at_the_dashboards_and_prometheus() {
    let compose = yaml("docker-compose.yml");
    let grafana = merged(&compose["services"]["grafana"]);
    // Mount target -> source.
    let mounts: HashMap<String, String> = strings(get(&grafana, "volumes").unwrap())
        .into_iter()
        .map(|v| {
            let mut p = v.split(':');
            let source = p.next().unwrap().to_string();
            (p.next().unwrap().to_string(), source)
        })
        .collect();
    let provider = yaml("grafana/provisioning/dashboards/castellan.yml");
    let path = provider["providers"][0]["options"]["path"]
        .as_str()
        .unwrap();
    let source = mounts.get(path).expect("the provider's path is mounted");
    assert_eq!(source, "./grafana/dashboards");
    assert_eq!(
        mounts.get("/etc/grafana/provisioning").map(String::as_str),
        Some("./grafana/provisioning")
    );
    // The datasource is the compose Prometheus, the only one provisioned.
    // The panels name no uid of it: they query the dashboard's `datasource`
    // variable, which lists the Grafana's datasources of its type, so the
    // same JSON shows this Prometheus here and any other once imported.
    let provisioned = yaml("grafana/provisioning/datasources/prometheus.yml");
    let all = provisioned["datasources"].as_vec().expect("datasources");
    assert_eq!(all.len(), 1, "one datasource is provisioned");
    let ds = &all[0];
    let (host, port) = host_port(ds["url"].as_str().unwrap());
    assert!(
        compose["services"][host.as_str()].as_hash().is_some(),
        "{host}"
    );
    assert_eq!(port, Some(9090));
    let kind = ds["type"].as_str().unwrap();
    assert_eq!(kind, "prometheus");
    for file in std::fs::read_dir(repo("grafana/dashboards")).unwrap() {
        let path = file.unwrap().path();
        let board: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        let variable = board["templating"]["list"]
            .as_array()
            .expect("templating.list")
            .iter()
            .find(|v| v["name"] == "datasource")
            .unwrap_or_else(|| panic!("{}: no `datasource` variable", path.display()));
        assert_eq!(variable["type"], "datasource", "{}", path.display());
        assert_eq!(variable["query"], kind, "{}", path.display());
        for panel in board["panels"].as_array().unwrap() {
            let targets = panel["targets"].as_array().unwrap();
            let named = std::iter::once(&panel["datasource"])
                .chain(targets.iter().map(|t| &t["datasource"]));
            for ds in named {
                assert_eq!(
                    ds,
                    &serde_json::json!({"type": kind, "uid": "${datasource}"}),
                    "{}: {}",
                    path.display(),
                    panel["title"]
                );
            }
        }
    }
    // Prometheus loads the alert rules from beside its config.
    let prom = yaml("prometheus/prometheus.yml");
    for rules in strings(&prom["rule_files"]) {
        assert!(repo("prometheus").join(&rules).is_file(), "{rules}");
    }
}

#[test]
fn the_dockerfile_builds_the_workspace_and_runs_castellan() {
    let text = std::fs::read_to_string(repo("Dockerfile")).unwrap();
    let manifest = std::fs::read_to_string(repo("Cargo.toml")).unwrap();
    let members_line = manifest
        .lines()
        .find(|l| l.starts_with("members = ["))
        .expect("the workspace lists its members on one line");
    let members: Vec<String> = members_line
        .split('"')
        .skip(1)
        .step_by(2)
        .map(str::to_string)
        .collect();
    let copied: Vec<String> = text
        .lines()
        .filter_map(|l| l.strip_prefix("COPY "))
        .filter(|l| !l.starts_with("--from"))
        .flat_map(|l| {
            let parts: Vec<&str> = l.split_whitespace().collect();
            parts[..parts.len() - 1]
                .iter()
                .map(|s| s.to_string())
                .collect::<Vec<_>>()
        })
        .collect();
    for source in &copied {
        assert!(repo(source).exists(), "COPY {source}: no such file");
    }
    for member in members.iter().filter(|m| m.as_str() != ".") {
        assert!(
            copied.contains(member),
            "workspace member {member} is not copied"
        );
    }
    for needed in ["src", "migrations", "Cargo.lock"] {
        assert!(copied.iter().any(|c| c == needed), "{needed} is not copied");
    }
    assert!(text.contains("cargo build --release -p castellan --locked"));
    assert!(text.contains("ENTRYPOINT [\"castellan\"]"));
    assert!(text.contains("STOPSIGNAL SIGTERM"));
    assert!(
        text.lines()
            .any(|l| l.starts_with("USER ") && !l.contains("root"))
    );
}

/// Whether an image reference names one build: a digest, or a tag holding a
/// full version (1.2.3; PostgreSQL numbers its releases major.minor since
/// 10, so 16.6 is one) or a dated build (bookworm-20251229).
fn pinned(image: &str) -> bool {
    if image.contains("@sha256:") {
        return true;
    }
    // The tag follows the last ':' of the last path segment (a registry's
    // port comes before a '/').
    let last = image.rsplit('/').next().unwrap();
    let Some((name, tag)) = last.split_once(':') else {
        return false;
    };
    let parts_needed = if name == "postgres" { 2 } else { 3 };
    tag != "latest"
        && tag.trim_start_matches('v').split('-').any(|part| {
            let numbers: Vec<&str> = part.split('.').collect();
            let numeric = numbers
                .iter()
                .all(|n| !n.is_empty() && n.chars().all(|c| c.is_ascii_digit()));
            numeric && (numbers.len() >= parts_needed || (numbers.len() == 1 && part.len() == 8))
        })
}

/// Compose from a fresh clone is safe to start: the secrets come from `.env`
/// or compose refuses to start, nothing secret is written in the file, every
/// port is published on loopback only and /metrics on none, every image is
/// an exact version, and each long-running castellan process has a
/// healthcheck on the address it serves.
#[test]
fn docker_compose_is_safe_to_start_from_a_fresh_clone() {
    let text = std::fs::read_to_string(repo("docker-compose.yml")).unwrap();
    let compose = yaml("docker-compose.yml");
    let services = compose["services"].as_hash().expect("services");
    let secret_name = |n: &str| {
        let n = n.to_ascii_uppercase();
        ["SECRET", "PASS", "TOKEN", "PRIVATE", "_KEY"]
            .iter()
            .any(|w| n.contains(w))
    };

    // Every substitution in the file: a secret one must be `${VAR:?message}`
    // (compose stops with the message when .env lacks it), never a default.
    let mut scalars = Vec::new();
    collect_strings(&compose, &mut scalars);
    let mut required = BTreeSet::new();
    for value in &scalars {
        for (name, op) in substitutions(value) {
            if secret_name(&name) {
                assert!(
                    op.starts_with(":?") && op.len() > 2,
                    "{value:?}: {name} must be ${{{name}:?how to set it}}, not {op:?}"
                );
                required.insert(name);
            }
        }
    }
    for name in ["GOTRUE_JWT_SECRET", "POSTGRES_PASSWORD"] {
        assert!(required.contains(name), "{name} is not required from .env");
    }
    // The old published placeholder is gone for good.
    assert!(!text.contains("change-me"), "a placeholder secret is back");

    let built: BTreeSet<String> = services
        .values()
        .map(merged)
        .filter(|s| get(s, "build").is_some())
        .filter_map(|s| get(&s, "image").and_then(Yaml::as_str).map(str::to_string))
        .collect();
    let mut healthchecked = BTreeSet::new();
    for (name, service) in services {
        let name = name.as_str().unwrap();
        let svc = merged(service);
        // No literal secret: a secret variable is one required substitution,
        // and a URL's password is one too.
        for (key, value) in get(&svc, "environment")
            .and_then(Yaml::as_hash)
            .into_iter()
            .flatten()
        {
            let key = key.as_str().unwrap();
            let value = value.as_str().unwrap_or_default();
            if secret_name(key) {
                let subs = substitutions(value);
                assert!(
                    subs.len() == 1
                        && subs[0].1.starts_with(":?")
                        && value.starts_with("${")
                        && value.ends_with('}'),
                    "{name}: {key} is written out; take it from .env"
                );
            }
            if let Some((_, rest)) = value.split_once("://") {
                let userinfo = rest.rsplit_once('@').map(|(u, _)| u).unwrap_or_default();
                if let Some((_, password)) = userinfo.split_once(':') {
                    assert!(
                        password.starts_with("${")
                            && password.ends_with('}')
                            && substitutions(password)
                                .iter()
                                .all(|(_, op)| op.starts_with(":?")),
                        "{name}: {key} holds a password; take it from .env"
                    );
                }
            }
        }
        assert_ne!(
            get(&svc, "network_mode").and_then(Yaml::as_str),
            Some("host"),
            "{name}: the host's network publishes every port"
        );
        // Published on 127.0.0.1 only, and /metrics never.
        for port in get(&svc, "ports")
            .and_then(Yaml::as_vec)
            .into_iter()
            .flatten()
        {
            let (host_ip, published, target) = match port {
                Yaml::String(p) => {
                    let parts: Vec<&str> = p.split(':').collect();
                    assert_eq!(
                        parts.len(),
                        3,
                        "{name}: {p:?} is not 127.0.0.1:HOST:CONTAINER"
                    );
                    (
                        parts[0].to_string(),
                        parts[1].to_string(),
                        parts[2].to_string(),
                    )
                }
                Yaml::Hash(_) => (
                    port["host_ip"].as_str().unwrap_or_default().to_string(),
                    match &port["published"] {
                        Yaml::Integer(n) => n.to_string(),
                        other => other.as_str().unwrap_or_default().to_string(),
                    },
                    match &port["target"] {
                        Yaml::Integer(n) => n.to_string(),
                        other => other.as_str().unwrap_or_default().to_string(),
                    },
                ),
                other => panic!("{name}: a port written as {other:?}"),
            };
            assert_eq!(host_ip, "127.0.0.1", "{name}: {port:?} is not on loopback");
            let target = target.split('/').next().unwrap();
            assert!(
                published != "9102" && target != "9102",
                "{name}: {port:?} publishes /metrics"
            );
        }
        // An exact version, unless it is the image built here.
        let image = get(&svc, "image")
            .and_then(Yaml::as_str)
            .unwrap_or_default();
        let castellan = get(&svc, "build").is_some() || built.contains(image);
        if !castellan {
            assert!(pinned(image), "{name}: {image:?} is not an exact version");
            continue;
        }
        // A long-running castellan checks the address it serves: the API's
        // /ready, a worker's /metrics (all it serves).
        let command = strings(get(&svc, "command").expect("a command"));
        if command == ["migrate"] {
            continue;
        }
        let env = environment(name, &svc);
        let (_, metrics_port) = host_port(&env["CASTELLAN_METRICS_ADDR"]);
        let wanted = if command == ["worker"] {
            format!("http://127.0.0.1:{}/metrics", metrics_port.unwrap())
        } else {
            format!("http://127.0.0.1:{}/ready", env["PORT"])
        };
        let check = get(&svc, "healthcheck").unwrap_or_else(|| panic!("{name}: no healthcheck"));
        assert_ne!(check["disable"].as_bool(), Some(true), "{name}");
        let test = strings(&check["test"]);
        assert!(
            test.first().is_some_and(|t| t == "CMD-SHELL" || t == "CMD")
                && test.iter().any(|t| t.contains(&wanted)),
            "{name}: the healthcheck {test:?} does not ask {wanted}"
        );
        healthchecked.insert(name.to_string());
    }
    assert_eq!(
        healthchecked,
        BTreeSet::from(["api".to_string(), "worker".to_string()]),
        "the long-running castellan services"
    );

    // The rule itself.
    for (image, exact) in [
        ("postgres:16.6-bookworm", true),
        ("postgres:16", false),
        ("axllent/mailpit:v1.21.8", true),
        ("axllent/mailpit", false),
        ("prom/prometheus:v2.53", false),
        ("grafana/grafana:11.1.5", true),
        ("grafana/grafana:latest", false),
        ("debian:bookworm-20251229-slim", true),
        ("debian:bookworm-slim", false),
        ("rust:1.95.0-bookworm", true),
        ("rust:1.95-bookworm", false),
        ("localhost:5000/castellan", false),
        ("postgres@sha256:0123", true),
    ] {
        assert_eq!(pinned(image), exact, "{image}");
    }
}

/// Every string scalar of a YAML document (mapping keys left out).
fn collect_strings(y: &Yaml, out: &mut Vec<String>) {
    match y {
        Yaml::String(s) => out.push(s.clone()),
        Yaml::Array(items) => items.iter().for_each(|i| collect_strings(i, out)),
        Yaml::Hash(h) => h.values().for_each(|v| collect_strings(v, out)),
        _ => {}
    }
}

/// The Dockerfile's images are exact versions, and the SQLite default with
/// its generated secret lives in a volume, not in the container.
#[test]
fn the_dockerfile_pins_its_images_and_keeps_the_data_in_a_volume() {
    let text = std::fs::read_to_string(repo("Dockerfile")).unwrap();
    let lines: Vec<&str> = text.lines().map(str::trim).collect();
    let mut stages = Vec::new();
    for line in &lines {
        let Some(from) = line.strip_prefix("FROM ") else {
            continue;
        };
        let words: Vec<&str> = from.split_whitespace().collect();
        let image = words.iter().find(|w| !w.starts_with("--")).unwrap();
        if !stages.contains(&image.to_string()) {
            assert!(pinned(image), "FROM {image}: not an exact version");
        }
        if let Some(i) = words.iter().position(|w| w.eq_ignore_ascii_case("AS")) {
            stages.push(words[i + 1].to_string());
        }
    }
    assert!(!stages.is_empty(), "a builder stage");
    let at = |wanted: &[&str]| {
        lines
            .iter()
            .position(|l| wanted.contains(l))
            .unwrap_or_else(|| panic!("no {wanted:?}"))
    };
    // The default ./castellan.db (and castellan.db.jwt-secret beside it)
    // lands in the working directory: that directory is the volume.
    at(&["WORKDIR /var/lib/castellan"]);
    let volume = at(&[
        "VOLUME /var/lib/castellan",
        "VOLUME [\"/var/lib/castellan\"]",
    ]);
    // The directory exists, owned by castellan, before it becomes a volume:
    // a new volume starts as a copy of it, and what a step after VOLUME
    // changes in it is lost.
    let home = lines
        .iter()
        .position(|l| l.contains("--home-dir /var/lib/castellan"))
        .expect("the castellan user's home");
    assert!(home < volume, "VOLUME before the directory is made");
}

/// Prometheus sends its alerts to the compose Alertmanager, which loads the
/// example routing; every route names a receiver that exists.
#[test]
fn prometheus_alerts_reach_the_compose_alertmanager() {
    let compose = yaml("docker-compose.yml");
    let prom = yaml("prometheus/prometheus.yml");
    let targets: Vec<String> = prom["alerting"]["alertmanagers"]
        .as_vec()
        .expect("alerting.alertmanagers")
        .iter()
        .flat_map(|a| a["static_configs"].as_vec().cloned().unwrap_or_default())
        .flat_map(|s| strings(&s["targets"]))
        .collect();
    assert!(!targets.is_empty(), "no Alertmanager target");
    for target in &targets {
        let (host, port) = host_port(target);
        let am = compose["services"][host.as_str()]
            .as_hash()
            .unwrap_or_else(|| panic!("{target}: no such compose service"));
        assert_eq!(port, Some(9093), "{target}");
        // The file it reads is prometheus/alertmanager.yml, mounted.
        let command = get(am, "command").map(strings).unwrap_or_default();
        let config = command
            .iter()
            .find_map(|c| c.strip_prefix("--config.file="))
            .unwrap_or("/etc/alertmanager/alertmanager.yml");
        let mounts: Vec<String> = get(am, "volumes").map(strings).unwrap_or_default();
        assert!(
            mounts
                .iter()
                .any(|m| m.starts_with(&format!("./prometheus/alertmanager.yml:{config}"))),
            "{host}: prometheus/alertmanager.yml is not mounted at {config}: {mounts:?}"
        );
    }
    let am = yaml("prometheus/alertmanager.yml");
    let receivers: BTreeSet<String> = am["receivers"]
        .as_vec()
        .expect("receivers")
        .iter()
        .map(|r| r["name"].as_str().unwrap().to_string())
        .collect();
    let mut routes = vec![am["route"].clone()];
    while let Some(route) = routes.pop() {
        if let Some(r) = route["receiver"].as_str() {
            assert!(receivers.contains(r), "route to unknown receiver {r}");
        }
        routes.extend(route["routes"].as_vec().cloned().unwrap_or_default());
    }
    assert!(
        am["route"]["receiver"].as_str().is_some(),
        "a default receiver"
    );
}
