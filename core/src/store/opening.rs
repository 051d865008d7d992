//! Why a database could not be opened, said so a person knows what to fix:
//! which variable, which address or file, and the likely cause, rather than
//! "pool timed out" or a PostgreSQL source line.

use std::io::ErrorKind;
use std::path::Path;

use sqlx::postgres::PgConnectOptions;

use crate::config::DatabaseUrl;

/// `host:port` of a PostgreSQL URL, for messages.
fn pg_address(url: &str) -> String {
    match url.parse::<PgConnectOptions>() {
        Ok(o) => format!("{}:{}", o.get_host(), o.get_port()),
        Err(_) => "the address in DATABASE_URL".into(),
    }
}

/// The sentence for an error met while opening `url`.
pub fn explain(url: &DatabaseUrl, e: &sqlx::Error) -> String {
    match url {
        DatabaseUrl::Postgres(u) => explain_pg(&pg_address(u), e),
        DatabaseUrl::Sqlite(path) => explain_sqlite(path, e),
    }
}

fn explain_pg(at: &str, e: &sqlx::Error) -> String {
    match e {
        sqlx::Error::Configuration(c) => {
            format!(
                "DATABASE_URL is not a valid PostgreSQL URL ({c}); the form is postgres://USER:PASSWORD@HOST:PORT/DATABASE"
            )
        }
        sqlx::Error::Io(io) if io.kind() == ErrorKind::ConnectionRefused => {
            format!(
                "PostgreSQL refused the connection at {at} (DATABASE_URL): is it running, and listening there?"
            )
        }
        sqlx::Error::Io(io) => {
            format!("cannot reach PostgreSQL at {at} (DATABASE_URL): {io}")
        }
        sqlx::Error::PoolTimedOut => {
            format!(
                "PostgreSQL at {at} (DATABASE_URL) did not answer within 5 s: check the host, the port and any firewall"
            )
        }
        sqlx::Error::Database(db) => {
            let code = db.code().unwrap_or_default();
            let hint = match &code[..code.len().min(2)] {
                "28" => "check the user and password in DATABASE_URL",
                "3D" => "create the database (createdb NAME) or fix its name in DATABASE_URL",
                "53" => {
                    "the server has no room for another connection; raise its max_connections or close others"
                }
                _ => "check DATABASE_URL and the server's log",
            };
            format!("PostgreSQL at {at} refused: {}; {hint}", db.message())
        }
        other => format!("cannot open PostgreSQL at {at} (DATABASE_URL): {other}"),
    }
}

/// The directory a SQLite database file goes in.
fn sqlite_dir(path: &str) -> &Path {
    Path::new(path)
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
}

/// Why the SQLite database at `path` cannot be created: its directory is
/// missing. Checked before start-up and again when opening fails.
pub fn sqlite_dir_missing(path: &str) -> Option<String> {
    let dir = sqlite_dir(path);
    (!dir.is_dir()).then(|| {
        format!(
            "cannot create the SQLite database {path} (DATABASE_URL): the directory {} does not exist; create it or choose another path",
            dir.display()
        )
    })
}

/// Why a SQLite database cannot be used at `path` before anything is
/// opened: its directory missing or not writable (SQLite writes its journal
/// and the generated secret there), or the path naming something that is
/// not a writable file.
pub fn sqlite_unusable(path: &str) -> Option<String> {
    if let Some(missing) = sqlite_dir_missing(path) {
        return Some(missing);
    }
    let writable = |p: &Path| rustix::fs::access(p, rustix::fs::Access::WRITE_OK).is_ok();
    let dir = sqlite_dir(path);
    if !writable(dir) {
        return Some(format!(
            "cannot use the SQLite database {path} (DATABASE_URL): this user may not write in {}; give it the directory or choose another path",
            dir.display()
        ));
    }
    match std::fs::metadata(path) {
        Ok(m) if !m.is_file() => Some(format!(
            "cannot use the SQLite database {path} (DATABASE_URL): it is not a file; name the database file, e.g. {}/castellan.db",
            path.trim_end_matches('/')
        )),
        Ok(_) if !writable(Path::new(path)) => Some(format!(
            "cannot use the SQLite database {path} (DATABASE_URL): this user may not write it; check its owner and mode"
        )),
        _ => None,
    }
}

fn explain_sqlite(path: &str, e: &sqlx::Error) -> String {
    if let Some(missing) = sqlite_dir_missing(path) {
        return missing;
    }
    let dir = sqlite_dir(path);
    let why = match e {
        sqlx::Error::Database(db) => db.message().to_string(),
        other => other.to_string(),
    };
    format!(
        "cannot open the SQLite database {path} (DATABASE_URL): {why}; check that the file and {} are readable and writable by this user",
        dir.display()
    )
}
