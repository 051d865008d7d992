//! castellan-actors: the supervision tree and the services handlers call.
//!
//! - [`supervisor`]: the root supervisor; restarts a crashed child and counts it.
//! - [`session_manager`]: a ractor factory keyed by session id that owns
//!   session issue, refresh-token rotation and logout.
//! - [`rate_limiter`]: owns the per-key limits and publishes them for the hot path.
//! - [`accounts`]: sign-up, password sign-in and user updates. These are
//!   stateless and parallel per user, so they run in the caller's task with the
//!   password pool bounding the CPU; every session they create or end goes
//!   through the `SessionManager`.

pub mod accounts;
pub mod admin;
pub mod context;
pub mod otp_issuer;
pub mod rate_limiter;
pub mod session_manager;
pub mod supervisor;

pub use context::Ctx;
pub use supervisor::{Actors, start};
