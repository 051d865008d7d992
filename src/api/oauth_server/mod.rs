//! castellan as an OAuth 2.1 and OpenID Connect provider: its clients, the
//! authorization flow through the site's consent page, the token,
//! revocation and userinfo endpoints, and the user's grants.

use castellan_core::ApiError;

use crate::extract::Feature;
use crate::server::AppState;

mod clients;
mod flow;
mod grants;
mod token;

pub use clients::*;
pub use flow::*;
pub use grants::*;
pub use token::*;

/// The OAuth server is on: GoTrue answers 404 `feature_disabled` otherwise.
pub struct ServerOn;

impl Feature for ServerOn {
    fn on(st: &AppState) -> Result<(), ApiError> {
        st.oauth_clients.on().map(drop)
    }
}

pub type On = crate::extract::On<ServerOn>;

/// Dynamic registration is allowed (403 otherwise, after the 404 of the
/// server being off).
pub struct DynamicOn;

impl Feature for DynamicOn {
    fn on(st: &AppState) -> Result<(), ApiError> {
        st.oauth_clients.dynamic_allowed()
    }
}
