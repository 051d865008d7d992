//! The admin API (`requireAdminCredentials` in GoTrue): users, their
//! factors, passkeys and sessions, the audit log, the rate limits, the job
//! queues, the signing keys and the OAuth server's clients.

mod audit;
mod generate_link;
mod keys;
mod oauth_clients;
mod paging;
mod passkeys;
mod queues;
mod rate_limits;
mod sessions;
mod users;

use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::server::AppState;

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(users::list, users::create))
        .routes(routes!(users::get, users::update, users::delete))
        .routes(routes!(users::factors))
        .routes(routes!(sessions::list, sessions::end_all))
        .routes(routes!(sessions::end_one))
        .routes(routes!(users::update_factor, users::delete_factor))
        .routes(routes!(passkeys::list))
        .routes(routes!(passkeys::delete))
        .routes(routes!(oauth_clients::list, oauth_clients::create))
        .routes(routes!(
            oauth_clients::get,
            oauth_clients::update,
            oauth_clients::delete
        ))
        .routes(routes!(oauth_clients::regenerate_secret))
        .routes(routes!(audit::list))
        .routes(routes!(generate_link::generate_link))
        .routes(routes!(rate_limits::get, rate_limits::set))
        .routes(routes!(rate_limits::usage))
        .routes(routes!(queues::list))
        .routes(routes!(queues::jobs))
        .routes(routes!(queues::retry))
        .routes(routes!(queues::discard))
        .routes(routes!(keys::list, keys::add))
        .routes(routes!(keys::promote))
        .routes(routes!(keys::retire))
        // Who the users are, their sessions and keys: never kept by a cache
        // (the console reads them with a cookie a shared cache might not key on).
        .route_layer(axum::middleware::map_response(no_store))
}

async fn no_store(mut r: axum::response::Response) -> axum::response::Response {
    r.headers_mut().insert(
        axum::http::header::CACHE_CONTROL,
        axum::http::HeaderValue::from_static("no-store"),
    );
    r
}
