//! castellan-actors: the supervision tree, the actors and the services
//! handlers call.
//!
//! Actors exist because they own state:
//! - [`session_manager`]: the live-session cache, kept true across processes.
//! - [`rate_limiter`]: the per-key limits and their live settings.
//!
//! Services hold no state of their own and run in the caller's task, with
//! the database serializing what must be serialized and the password pool
//! bounding the CPU:
//! - [`sessions`]: session start, refresh-token rotation, logout. Every
//!   session ends through it.
//! - [`otp_issuer`]: one-time tokens, their emails, their verification.
//! - [`accounts`]: sign-up, password sign-in, user updates.
//! - [`admin`]: the admin API.

pub mod accounts;
pub mod admin;
pub mod context;
pub mod even_timing;
pub mod external;
pub mod factors;
mod follow;
pub mod limit_settings;
pub mod links;
pub mod mailbox;
mod oauth1;
pub mod otp_issuer;
pub mod provider_broker;
pub mod rate_limiter;
mod refresh_v2;
pub mod session_manager;
mod session_shard;
pub mod sessions;
pub mod signing_keys;
mod sms_out;
pub mod supervisor;

pub use context::Ctx;
pub use supervisor::{Actors, start};
