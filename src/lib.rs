//! castellan: an authentication server that speaks the Supabase Auth
//! (GoTrue) HTTP API. This crate is the HTTP edge: the router, extractors,
//! error rendering and metrics; decisions live in `castellan-service`.

pub mod api;
pub mod config_example;
pub mod edge;
pub mod error;
pub mod extract;
pub mod limit;
pub mod listener;
pub mod observability;
pub mod preflight;
pub mod server;

pub use server::{Server, start};
