//! castellan-service: what handlers call. Two kinds of module, in two places:
//!
//! **Actors** ([`actors`]) exist because they own state; nobody else can
//! reach it, and callers ask them by message (each actor's file holds its
//! messages and the handle callers use):
//! - [`actors::session_manager`] and its shards: the live-session cache,
//!   kept true across processes.
//! - [`actors::rate_limiter`]: every bucket of the limit table and the live
//!   limits.
//! - [`actors::otp_issuer`]: the send windows this process has seen.
//! - [`actors::provider_broker`]: issuers' keys, fetches under way, a
//!   circuit breaker per provider.
//! - [`actors::supervisor`]: starts them, restarts them, escalates.
//!
//! **Services** (one module per flow family, at the top) hold no state of
//! their own and run in the caller's task, the database serializing what
//! must be and the password pool bounding the CPU; they ask the actors:
//! - [`sessions`]: session start, access tokens, the live check, logout.
//! - [`refresh`]: the refresh-token grant (legacy and v2) and its rules.
//! - [`otp`]: one-time tokens, their emails and SMS, their verification.
//! - [`accounts`]: sign-up, password sign-in, user updates.
//! - [`links`]: what `/recover`, `/otp` and `/resend` send.
//! - [`factors`]: MFA factors.
//! - [`providers`] and [`external`]: external sign-in; [`web3`]: wallets.
//! - [`admin`], [`limit_settings`], [`signing_keys`]: the operator's.
//! - [`captcha`] and [`pwned`]: the CAPTCHA and leaked-password checks,
//!   each a call to an outside API.
#![forbid(unsafe_code)]

pub mod accounts;
pub mod actors;
pub mod admin;
pub mod budget;
pub mod captcha;
pub mod context;
pub mod even_timing;
pub mod external;
pub mod factors;
mod follow;
pub mod hooks;
pub mod limit_settings;
pub mod links;
mod oauth1;
pub mod oauth_clients;
pub mod oauth_server;
pub mod otp;
pub mod passkeys;
pub mod providers;
pub mod pwned;
pub mod refresh;
pub mod relying_party;
pub mod sessions;
pub mod signing_keys;
mod sms_out;
pub mod web3;

pub use actors::supervisor::{Actors, start};
pub use context::Ctx;
