use axum::{Extension, Json};
use serde::Serialize;
use utoipa::ToSchema;

use crate::observability::Probe;

/// GoTrue's health answer (the name is GoTrue's, for clients that check it).
#[derive(Serialize, ToSchema)]
pub struct Health {
    version: &'static str,
    name: &'static str,
    description: &'static str,
}

/// Whether the server is up.
#[utoipa::path(get, path = "/health", tag = "health", responses((status = 200, body = Health)))]
pub async fn health() -> (Extension<Probe>, Json<Health>) {
    let health = Json(Health {
        version: env!("CARGO_PKG_VERSION"),
        name: "GoTrue",
        description: "GoTrue is a user registration and authentication API",
    });
    (Extension(Probe), health)
}
