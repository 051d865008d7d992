//! castellan-jobs: durable job queues on the users' own database (apalis).
//!
//! - [`email`]: the email job, its templates and its delivery (SMTP through
//!   lettre, or the server log when no SMTP host is configured).
//! - [`queue`]: enqueueing inside the caller's transaction, so a token and
//!   the email that carries it commit together or not at all.
//! - [`worker`]: the workers that deliver, with retries and metrics.
//! - [`inspect`]: the queues as an operator sees them (counts, jobs, a
//!   dead job sent again or discarded).
//! - [`lite_backend`]: the queues on SQLite, their statements in the
//!   writer's turn.

pub mod email;
pub mod hooked;
pub mod inspect;
pub mod lite_backend;
pub mod queue;
pub mod sms;
pub mod templates;
pub mod worker;

pub use email::{EmailJob, EmailKind};
