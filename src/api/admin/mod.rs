//! The admin API (`requireAdminCredentials` in GoTrue): users and the audit log.

mod audit;
mod generate_link;
mod paging;
mod users;

use axum::Router;
use axum::routing::get;

use crate::server::AppState;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/admin/users", get(users::list).post(users::create))
        .route(
            "/admin/users/{user_id}",
            get(users::get).put(users::update).delete(users::delete),
        )
        .route("/admin/users/{user_id}/factors", get(users::factors))
        .route("/admin/audit", get(audit::list))
        .route(
            "/admin/generate_link",
            axum::routing::post(generate_link::generate_link),
        )
}
