//! `page`/`per_page` parsing and GoTrue's `X-Total-Count` and `Link` headers.

use axum::http::{HeaderMap, HeaderValue};
use castellan_core::ApiError;
use castellan_core::store::Page;

pub const DEFAULT_PER_PAGE: i64 = 50;
/// More rows than this in one answer is refused, so one request cannot
/// make the server hold an unbounded list in memory.
pub const MAX_PER_PAGE: i64 = 1000;

/// The query string as ordered pairs (kept whole to rebuild the `Link` URLs).
pub struct Query {
    pub pairs: Vec<(String, String)>,
}

impl Query {
    pub fn parse(raw: Option<&str>) -> Result<Self, ApiError> {
        crate::extract::parse_query(raw.unwrap_or_default()).map(|pairs| Query { pairs })
    }

    /// The first value of `key`; an empty value counts as absent, as the
    /// official client sends `?page=&per_page=`.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.pairs
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
            .filter(|v| !v.is_empty())
    }

    fn number(&self, key: &str, default: i64, max: i64) -> Result<i64, ApiError> {
        let Some(v) = self.get(key) else {
            return Ok(default);
        };
        // Not a plain number: GoTrue's words (Go's ParseUint's).
        let go = |why: &str| {
            ApiError::validation(format!(
                "Bad Pagination Parameters: strconv.ParseUint: parsing {v:?}: {why}"
            ))
        };
        if !v.bytes().all(|b| b.is_ascii_digit()) {
            return Err(go("invalid syntax"));
        }
        match v.parse::<u64>() {
            Err(_) => Err(go("value out of range")),
            Ok(n) if (1..=max as u64).contains(&n) => Ok(n as i64),
            Ok(_) => Err(ApiError::validation(format!(
                "Bad Pagination Parameters: {key} must be a whole number from 1 to {max}, got {v:?}"
            ))),
        }
    }

    /// GoTrue's paging: `page` from 1, `per_page` 50 by default. Zero,
    /// negative or non-numeric values are 400 (GoTrue answers 500 for `per_page=0`).
    pub fn paging(&self) -> Result<Paging, ApiError> {
        let page = self.number("page", 1, i64::MAX / MAX_PER_PAGE)?;
        let per_page = self.number("per_page", DEFAULT_PER_PAGE, MAX_PER_PAGE)?;
        Ok(Paging { page, per_page })
    }
}

/// The paging parameters, for the OpenAPI document: [`Query`] reads them
/// itself, keeping every pair to rebuild the `Link` URLs.
#[derive(utoipa::IntoParams)]
#[allow(dead_code)]
pub struct PagingParams {
    /// From 1.
    page: Option<u64>,
    /// From 1 to 1000; 50 by default.
    per_page: Option<u64>,
}

#[derive(Debug, Clone, Copy)]
pub struct Paging {
    pub page: i64,
    pub per_page: i64,
}

impl Paging {
    pub fn page(&self) -> Page {
        Page {
            limit: self.per_page,
            offset: (self.page - 1) * self.per_page,
        }
    }

    /// `X-Total-Count` and `Link` as GoTrue builds them: the request's own
    /// path and query with `page` replaced, keys sorted, `rel="next"` only
    /// when a next page exists, `rel="last"` always.
    pub fn headers(&self, path: &str, q: &Query, total: i64) -> HeaderMap {
        let last = (total + self.per_page - 1) / self.per_page;
        let url = |page: i64| {
            let mut pairs: Vec<(String, String)> = q
                .pairs
                .iter()
                .filter(|(k, _)| k != "page")
                .cloned()
                .collect();
            pairs.push(("page".into(), page.to_string()));
            pairs.sort_by(|a, b| a.0.cmp(&b.0));
            format!(
                "{path}?{}",
                serde_urlencoded::to_string(&pairs).unwrap_or_default()
            )
        };
        let mut links = Vec::new();
        if self.page * self.per_page < total {
            links.push(format!("<{}>; rel=\"next\"", url(self.page + 1)));
        }
        links.push(format!("<{}>; rel=\"last\"", url(last)));
        let mut h = HeaderMap::new();
        h.insert("x-total-count", HeaderValue::from(total));
        if let Ok(v) = HeaderValue::from_str(&links.join(", ")) {
            h.insert("link", v);
        }
        h
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn link(raw: &str, total: i64) -> String {
        let q = Query::parse(Some(raw)).unwrap();
        let p = q.paging().unwrap();
        p.headers("/admin/users", &q, total)["link"]
            .to_str()
            .unwrap()
            .to_string()
    }

    #[test]
    fn gotrue_link_headers() {
        assert_eq!(link("", 0), "</admin/users?page=0>; rel=\"last\"");
        assert_eq!(
            link("per_page=1", 2),
            "</admin/users?page=2&per_page=1>; rel=\"next\", </admin/users?page=2&per_page=1>; rel=\"last\""
        );
        assert_eq!(
            link("page=2&per_page=1", 2),
            "</admin/users?page=2&per_page=1>; rel=\"last\""
        );
        assert_eq!(
            link("page=&per_page=", 3),
            "</admin/users?page=1&per_page=>; rel=\"last\""
        );
    }

    #[test]
    fn bad_paging_is_refused() {
        for raw in [
            "page=0",
            "per_page=0",
            "page=x",
            "per_page=-1",
            "per_page=1001",
        ] {
            let e = Query::parse(Some(raw)).unwrap().paging().unwrap_err();
            assert_eq!((e.status, e.code), (400, "validation_failed"), "{raw}");
        }
    }
}
