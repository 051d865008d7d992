//! The actors: each alone holds its state and is reached only through its
//! mailbox (see the crate's documentation for what each one owns).

pub mod mailbox;
pub mod otp_issuer;
pub mod provider_broker;
pub mod rate_limiter;
pub mod session_manager;
mod session_shard;
pub mod supervisor;
