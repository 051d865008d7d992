//! Who is asking: the client's address and user agent, recorded on audit
//! entries and sessions as GoTrue records them. The HTTP layer sets them
//! once per request; the store reads them where it writes those rows.
//! Outside a request (the CLI, the workers) they are empty.

use std::future::Future;
use std::net::IpAddr;

/// The most of a user agent that is kept.
const MAX_USER_AGENT: usize = 512;
/// `audit_log_entries.ip_address` is `varchar(64)`.
const MAX_ADDRESS: usize = 64;

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Client {
    /// What the audit log shows: the address the rate limits count.
    pub address: String,
    /// The same when it is an IP address (`sessions.ip` is `inet`).
    pub ip: Option<IpAddr>,
    pub user_agent: Option<String>,
}

impl Client {
    pub fn new(address: &str, user_agent: Option<&str>) -> Client {
        let cut = |s: &str, n: usize| s.chars().take(n).collect::<String>();
        Client {
            address: cut(address, MAX_ADDRESS),
            ip: address.parse().ok(),
            user_agent: user_agent
                .filter(|s| !s.is_empty())
                .map(|s| cut(s, MAX_USER_AGENT)),
        }
    }
}

tokio::task_local! {
    static CURRENT: Client;
}

/// Runs `f` as a request from `client`.
pub async fn serving<F: Future>(client: Client, f: F) -> F::Output {
    CURRENT.scope(client, f).await
}

/// The client of the request being served, or nobody.
pub fn current() -> Client {
    CURRENT.try_with(Client::clone).unwrap_or_default()
}
