//! Calls to outside APIs (CAPTCHA providers, Have I Been Pwned, auth
//! hooks): a client that follows no redirect and gives up after its
//! timeout, and answers read only up to a bound.

use std::time::Duration;

/// A client for one outside API.
pub fn client(timeout: Duration, user_agent: Option<&str>) -> Result<reqwest::Client, String> {
    let mut b = reqwest::ClientBuilder::new()
        // A redirect is never followed (SSRF).
        .redirect(reqwest::redirect::Policy::none())
        .timeout(timeout);
    if let Some(ua) = user_agent {
        b = b.user_agent(ua.to_string());
    }
    b.build().map_err(|e| e.to_string())
}

/// An answer's body, refused past `limit` bytes (the client's timeout
/// bounds the time).
pub async fn read_bounded(mut answer: reqwest::Response, limit: usize) -> Result<Vec<u8>, String> {
    let mut body = Vec::new();
    while let Some(chunk) = answer.chunk().await.map_err(|e| e.to_string())? {
        if body.len() + chunk.len() > limit {
            return Err(format!("answer longer than {limit} bytes"));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}
