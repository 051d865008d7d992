//! castellan-core: everything that knows nothing about HTTP, actors or queues.
//!
//! Domain types, GoTrue-compatible configuration, the error type with GoTrue's
//! `error_code`s, crypto (passwords, tokens, JWTs) and the `Store` with its two
//! backends (PostgreSQL in GoTrue's `auth` schema, SQLite as the embedded default).

pub mod client;
pub mod clock;
pub mod config;
pub mod config_doc;
pub mod crypto;
pub mod duration;
pub mod error;
pub mod handles;
pub mod hooks;
pub mod limits;
pub mod models;
pub mod oauth;
pub mod outside;
pub mod redirect;
pub mod store;
pub mod unread;
pub mod validate;

pub use clock::Clock;
pub use config::Config;
pub use error::{ApiError, ApiResult};
pub use store::Store;
