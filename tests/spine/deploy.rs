//! The shipped deployment (issue 14): docker-compose.yml, the Dockerfile and
//! the Prometheus and Grafana provisioning refer only to things that exist.
//! Docker does not run where the tests run, so this reads the files the way
//! compose would and checks every reference: services, files, ports,
//! variables and commands.

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
    let env: HashMap<String, String> = get(svc, "environment")
        .and_then(Yaml::as_hash)
        .expect("environment")
        .iter()
        .map(|(k, v)| {
            let value = match v {
                Yaml::String(s) => s.clone(),
                other => panic!("{name}: {k:?} is not quoted: {other:?}"),
            };
            // ${VAR:-default} as compose substitutes it when VAR is unset.
            let value = match value.split_once(":-") {
                Some((_, rest)) if value.starts_with("${") => {
                    rest.trim_end_matches('}').to_string()
                }
                _ => value,
            };
            (k.as_str().unwrap().to_string(), value)
        })
        .collect();
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
    // The datasource is the compose Prometheus, under the uid every panel uses.
    let ds = yaml("grafana/provisioning/datasources/prometheus.yml");
    let ds = &ds["datasources"][0];
    let (host, port) = host_port(ds["url"].as_str().unwrap());
    assert!(
        compose["services"][host.as_str()].as_hash().is_some(),
        "{host}"
    );
    assert_eq!(port, Some(9090));
    let uid = ds["uid"].as_str().unwrap();
    for file in std::fs::read_dir(repo("grafana/dashboards")).unwrap() {
        let path = file.unwrap().path();
        let board: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        for panel in board["panels"].as_array().unwrap() {
            assert_eq!(
                panel["datasource"]["uid"],
                uid,
                "{}: {}",
                path.display(),
                panel["title"]
            );
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
