//! Black-box tests of the spine: the real server over HTTP, on a fresh
//! SQLite file and a fresh PostgreSQL database per test.

#[path = "../common/authenticator.rs"]
mod authenticator;
#[path = "../common/mod.rs"]
mod common;
#[path = "../common/hook_server.rs"]
mod hook_server;
#[path = "../common/nginx.rs"]
mod nginx;
#[path = "../common/oauth_provider.rs"]
mod oauth_provider;
#[path = "../common/oidc_issuer.rs"]
mod oidc_issuer;
#[path = "../common/security_apis.rs"]
mod security_apis;
#[path = "../common/sms_provider.rs"]
mod sms_provider;
#[path = "../common/smtp_sink.rs"]
mod smtp_sink;
#[path = "../common/twitter_provider.rs"]
mod twitter_provider;

mod admin;
mod bots;
mod cache;
mod cli;
mod console;
mod dashboards;
mod deploy;
mod disk;
mod durability;
mod email;
mod fuzz;
mod hardening;
mod hashing;
mod hooks;
mod http;
mod id_token;
mod indexes;
mod keys;
mod limits;
mod listener;
mod mfa;
mod oauth;
mod oauth_flow;
mod oauth_server;
mod operator_api;
mod outage;
mod passkeys;
mod phone;
mod refresh_v2;
mod resilience;
mod scale_out;
mod signup;
mod sms;
mod timing;
mod token;
mod twitter;
mod user;
mod web3;
mod webauthn_factors;
