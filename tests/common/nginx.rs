//! Debian's nginx on loopback, run with the shipped `nginx/castellan.conf`
//! (only its addresses changed) inside the few lines a configuration of its
//! own needs: for the deployment test and the scale-out benchmark.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Where nginx is: `$CASTELLAN_TEST_NGINX_DIR` (scripts/ensure-nginx.sh
/// prints it; scripts/test.sh sets it).
/// Unset (the benchmark, a single test run by hand), the script is asked.
pub fn nginx_dir() -> PathBuf {
    if let Ok(dir) = std::env::var("CASTELLAN_TEST_NGINX_DIR") {
        return PathBuf::from(dir);
    }
    let script = repo().join("scripts/ensure-nginx.sh");
    let out = std::process::Command::new(&script)
        .output()
        .unwrap_or_else(|e| panic!("{}: {e}", script.display()));
    assert!(
        out.status.success(),
        "no nginx: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
}

/// The repository's root (from the root crate or the benchmark's).
fn repo() -> PathBuf {
    let here = Path::new(env!("CARGO_MANIFEST_DIR"));
    match here.join("nginx").exists() {
        true => here.to_path_buf(),
        false => here.join(".."),
    }
}

/// A free loopback port.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// nginx on `listen`, in front of the castellan processes on `ports` (one
/// to three), its files in `dir`; killed when dropped.
pub async fn start(dir: &Path, listen: u16, ports: &[u16]) -> tokio::process::Child {
    let shipped = repo().join("nginx/castellan.conf");
    let mut conf = std::fs::read_to_string(shipped).unwrap();
    for (i, example) in ["9101", "9102", "9103"].iter().enumerate() {
        let example = format!("    server 127.0.0.1:{example} max_fails=0;\n");
        assert!(conf.contains(&example), "the example names {example}");
        let with = ports
            .get(i)
            .map(|p| format!("    server 127.0.0.1:{p} max_fails=0;\n"))
            .unwrap_or_default();
        conf = conf.replace(&example, &with);
    }
    conf = conf.replace(
        "listen 127.0.0.1:8080;",
        &format!("listen 127.0.0.1:{listen};"),
    );
    let d = dir.display();
    let whole = format!(
        "error_log {d}/error.log warn;\npid {d}/nginx.pid;\nevents {{ worker_connections 4096; }}\n\
         http {{\n access_log off;\n client_body_temp_path {d}/body;\n proxy_temp_path {d}/proxy;\n\
         fastcgi_temp_path {d}/fastcgi;\n uwsgi_temp_path {d}/uwsgi;\n scgi_temp_path {d}/scgi;\n{conf}\n}}\n"
    );
    std::fs::write(dir.join("nginx.conf"), whole).unwrap();
    let child = tokio::process::Command::new(nginx_dir().join("nginx"))
        .arg("-p")
        .arg(dir)
        .arg("-c")
        .arg(dir.join("nginx.conf"))
        .args(["-g", "daemon off; master_process off;"])
        .kill_on_drop(true)
        .spawn()
        .expect("start nginx");
    let deadline = Instant::now() + Duration::from_secs(10);
    while tokio::net::TcpStream::connect(("127.0.0.1", listen))
        .await
        .is_err()
    {
        let log = std::fs::read_to_string(dir.join("error.log")).unwrap_or_default();
        assert!(Instant::now() < deadline, "nginx did not listen:\n{log}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    child
}
