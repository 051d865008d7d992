//! Where a browser flow may send the user back to: `GOTRUE_SITE_URL`'s
//! origin, a loopback address, or a host matching a `GOTRUE_URI_ALLOW_LIST`
//! glob. Anything else silently falls back to the site URL (GoTrue's rules).

use std::net::IpAddr;

use url::{Host, Url};

/// Glob match where `*` stays within a segment (does not cross `.` or `/`)
/// and `**` crosses them, as GoTrue compiles its allow list.
pub fn glob_match(pattern: &str, text: &str) -> bool {
    fn go(p: &[u8], t: &[u8]) -> bool {
        match p.first() {
            None => t.is_empty(),
            Some(b'*') if p.get(1) == Some(&b'*') => (0..=t.len()).any(|i| go(&p[2..], &t[i..])),
            Some(b'*') => {
                let mut i = 0;
                loop {
                    if go(&p[1..], &t[i..]) {
                        return true;
                    }
                    if i == t.len() || t[i] == b'.' || t[i] == b'/' {
                        return false;
                    }
                    i += 1;
                }
            }
            Some(b'?') => !t.is_empty() && t[0] != b'.' && t[0] != b'/' && go(&p[1..], &t[1..]),
            Some(c) => t.first() == Some(c) && go(&p[1..], &t[1..]),
        }
    }
    go(pattern.as_bytes(), text.as_bytes())
}

fn is_local_name(host: &str) -> bool {
    matches!(
        host,
        "localhost" | "127.0.0.1" | "::1" | "[::1]" | "0.0.0.0" | "::" | "[::]"
    )
}

/// Whether `candidate` is an allowed redirect target.
pub fn is_allowed(candidate: &str, site_url: &str, allow_list: &[String]) -> bool {
    allowed(candidate, site_url, allow_list).is_some()
}

/// The URL to send the browser to when `candidate` is allowed: the very
/// URL that was validated, so a client that parses it by other rules (a
/// `\` read as userinfo, say) cannot land on a host other than the one
/// checked. A candidate already in normal form is echoed as given.
pub fn allowed(candidate: &str, site_url: &str, allow_list: &[String]) -> Option<String> {
    let url = Url::parse(candidate).ok()?;
    if !permits(&url, candidate, site_url, allow_list) {
        return None;
    }
    let normal = url.as_str();
    let same = normal == candidate || normal.strip_suffix('/') == Some(candidate);
    Some(if same {
        candidate.to_string()
    } else {
        normal.to_string()
    })
}

fn permits(url: &Url, candidate: &str, site_url: &str, allow_list: &[String]) -> bool {
    let web = matches!(url.scheme(), "http" | "https");
    if let Ok(site) = Url::parse(site_url) {
        let host = url.host_str().unwrap_or_default();
        let same_host = url.scheme() == site.scheme() && url.host_str() == site.host_str();
        if same_host
            && (url.port_or_known_default() == site.port_or_known_default() || is_local_name(host))
        {
            return true;
        }
    }
    // The loopback exception is for web pages on this machine, never
    // `javascript:`, `data:` or `file:` URLs that merely name a loopback host.
    match url.host() {
        Some(Host::Ipv4(ip)) => web && IpAddr::V4(ip).is_loopback(),
        Some(Host::Ipv6(ip)) => web && IpAddr::V6(ip).is_loopback(),
        Some(Host::Domain(d)) => {
            let plain = d
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-')
                && !d.starts_with(['.', '-'])
                && !d.ends_with(['.', '-'])
                && !d.chars().all(|c| c.is_ascii_digit());
            if !plain && web {
                return false;
            }
            let mut bare = url.clone();
            bare.set_fragment(None);
            let text = bare.as_str();
            // `Url` adds a trailing slash to a bare origin; match with and without it.
            let trimmed =
                if bare.path() == "/" && bare.query().is_none() && !candidate.ends_with('/') {
                    &text[..text.len() - 1]
                } else {
                    text
                };
            allow_list
                .iter()
                .any(|g| glob_match(g, text) || glob_match(g, trimmed))
        }
        None => allow_list
            .iter()
            .any(|g| glob_match(g, candidate.split('#').next().unwrap_or_default())),
    }
}

/// The redirect to use: the candidate when allowed, else the site URL.
pub fn resolve(candidate: Option<&str>, site_url: &str, allow_list: &[String]) -> String {
    candidate
        .filter(|c| !c.is_empty())
        .and_then(|c| allowed(c, site_url, allow_list))
        .unwrap_or_else(|| site_url.to_string())
}

/// `base` with `query` pairs added to its query and its fragment replaced
/// by `fragment` pairs (none: left as it is). A fragment already on `base`
/// is dropped rather than followed by a second `#`, which no client reads.
pub fn with_params(base: &str, query: &[(&str, String)], fragment: &[(&str, String)]) -> String {
    let (mut out, old_fragment) = match base.split_once('#') {
        Some((b, f)) => (b.to_string(), Some(f)),
        None => (base.to_string(), None),
    };
    if !query.is_empty() {
        out.push(if out.contains('?') { '&' } else { '?' });
        out.push_str(&encode(query));
    }
    match (fragment.is_empty(), old_fragment) {
        (false, _) => {
            out.push('#');
            out.push_str(&encode(fragment));
        }
        (true, Some(f)) => {
            out.push('#');
            out.push_str(f);
        }
        (true, None) => {}
    }
    out
}

/// Go's `url.Values.Encode`: keys sorted, spaces as `+`.
pub fn encode(pairs: &[(&str, String)]) -> String {
    let mut sorted = pairs.to_vec();
    sorted.sort_by(|a, b| a.0.cmp(b.0));
    url::form_urlencoded::Serializer::new(String::new())
        .extend_pairs(sorted)
        .finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn globs_respect_separators() {
        assert!(glob_match(
            "https://*.example.com/**",
            "https://app.example.com/a/b"
        ));
        assert!(!glob_match(
            "https://*.example.com/**",
            "https://a.b.example.com/x"
        ));
        assert!(glob_match(
            "https://**.example.com/**",
            "https://a.b.example.com/x"
        ));
        assert!(!glob_match(
            "https://example.com/*",
            "https://example.com/a/b"
        ));
        assert!(glob_match(
            "https://example.com/*",
            "https://example.com/cb"
        ));
    }

    #[test]
    fn redirects() {
        let site = "http://localhost:3000";
        let allow = list(&["https://*.example.com/**", "myapp://callback"]);
        assert!(is_allowed("http://localhost:3000/welcome", site, &allow));
        assert!(
            is_allowed("http://localhost:4000/x", site, &allow),
            "port ignored for localhost"
        );
        assert!(
            is_allowed("http://127.0.0.1:9999/cb", site, &[]),
            "loopback literal"
        );
        assert!(is_allowed("http://[::1]/cb", site, &[]));
        assert!(is_allowed("https://app.example.com/cb#frag", site, &allow));
        assert!(!is_allowed("https://evil.com/cb", site, &allow));
        assert!(!is_allowed(
            "https://app.example.com.evil.com/cb",
            site,
            &allow
        ));
        assert!(
            !is_allowed("http://10.0.0.1/cb", site, &allow),
            "non-loopback IP literal"
        );
        assert!(!is_allowed("not a url", site, &allow));
        assert!(!is_allowed("javascript://[::1]/%0aalert(1)", site, &[]));
        assert!(!is_allowed("file://127.0.0.1/etc/passwd", site, &[]));
        assert_eq!(resolve(Some("https://evil.com"), site, &allow), site);
        assert_eq!(
            resolve(Some("https://app.example.com\\@evil.com/cb"), site, &allow),
            "https://app.example.com/@evil.com/cb",
            "echo the URL whose host was checked"
        );
        assert_eq!(resolve(Some(site), site, &allow), site, "kept as given");
        assert_eq!(resolve(None, site, &allow), site);
        assert_eq!(
            resolve(Some("https://app.example.com/x"), site, &allow),
            "https://app.example.com/x"
        );
    }
}

#[cfg(test)]
mod params {
    use super::*;

    #[test]
    fn fragments_are_replaced_and_queries_extended() {
        let f = [("a", "1 2".to_string())];
        assert_eq!(
            with_params("https://x.test/cb#old", &[], &f),
            "https://x.test/cb#a=1+2"
        );
        assert_eq!(
            with_params("https://x.test/cb?k=v#keep", &[("code", "c".into())], &[]),
            "https://x.test/cb?k=v&code=c#keep"
        );
        assert_eq!(
            with_params("https://x.test", &f, &f),
            "https://x.test?a=1+2#a=1+2"
        );
    }
}
