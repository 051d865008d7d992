//! External sign-in providers as data: where each one's authorize, token
//! and profile endpoints are, which scopes it is asked for, and how its
//! profile becomes an identity, the way GoTrue maps it. One description
//! per provider serves one flow for all (`ProviderBroker`).

use serde_json::{Map, Value, json};

/// A host of a provider: its default, and what is appended to the
/// provider's `_URL` when one is set (GoTrue's `chooseHost`: a set `_URL`
/// replaces every host).
#[derive(Debug, Clone, Copy)]
pub struct Host {
    pub default: &'static str,
    pub with_url: &'static str,
}

const fn host(default: &'static str, with_url: &'static str) -> Host {
    Host { default, with_url }
}

/// How the token endpoint takes the client's credentials.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Credentials {
    /// HTTP Basic first, the form body if that is refused (GoTrue's auto-detection).
    Either,
    /// In the form body only.
    Body,
}

/// One profile request: its URL (`{api}`/`{auth}` templates) and headers;
/// the answer is put under `key` in the profile document.
#[derive(Debug, Clone, Copy)]
pub struct Fetch {
    pub key: &'static str,
    pub url: &'static str,
    /// Extra headers; `{client_id}` is replaced.
    pub headers: &'static [(&'static str, &'static str)],
}

/// Where a value of the profile comes from.
#[derive(Debug, Clone, Copy)]
pub enum Src {
    /// A JSON pointer into the profile document (a number becomes its digits).
    At(&'static str),
    /// These values joined by a space, trimmed.
    Join(&'static [&'static str]),
    /// Computed from the document (a provider's quirk).
    With(fn(&Value) -> Option<String>),
}

/// How a provider tells its user's email and whether it is verified.
#[derive(Debug, Clone, Copy)]
pub enum Emails {
    /// One address (primary), verified as `verified` says.
    One {
        email: &'static str,
        verified: Verified,
    },
    /// A list of `{email, primary, verified}` objects under the pointer,
    /// with these field names.
    List {
        at: &'static str,
        email: &'static str,
        primary: &'static str,
        verified: &'static str,
    },
}

#[derive(Debug, Clone, Copy)]
pub enum Verified {
    Always,
    Never,
    /// A boolean at this pointer.
    Flag(&'static str),
    /// A non-empty value at this pointer (GitLab's `confirmed_at`).
    Present(&'static str),
    /// Computed (a provider's quirk).
    With(fn(&Value) -> bool),
}

/// How a provider grants access.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// OAuth 2.0: the browser brings back a code, exchanged at `token`.
    OAuth2,
    /// OAuth 1.0a (RFC 5849, Twitter): a request token is fetched here
    /// (a template) before the browser goes to `authorize` with it; the
    /// browser brings back a verifier, exchanged with the request token at
    /// `token`; every request is signed (HMAC-SHA1), the profile's too.
    OAuth1 { request_token: &'static str },
}

/// One provider.
#[derive(Debug)]
pub struct Provider {
    pub name: &'static str,
    pub protocol: Protocol,
    pub auth: Host,
    pub api: Host,
    /// Templates over `{auth}` and `{api}`.
    pub authorize: &'static str,
    pub token: &'static str,
    pub scopes: &'static [&'static str],
    /// Whether the user's `scopes` are added (some providers take none).
    pub user_scopes: bool,
    /// GoTrue's `_URL` is required (Keycloak's realm).
    pub needs_url: bool,
    /// PKCE towards the provider.
    pub pkce: bool,
    pub credentials: Credentials,
    /// The profile requests; none means the token response is the profile
    /// (under `token`).
    pub fetch: &'static [Fetch],
    /// `iss` (a template over `{auth}`/`{api}`).
    pub issuer: &'static str,
    pub sub: Src,
    pub emails: Emails,
    /// identity_data keys and where their values come from.
    pub claims: &'static [(&'static str, Src)],
    /// `custom_claims` keys (always present when listed).
    pub custom: &'static [(&'static str, &'static str)],
    /// The issuer of its OpenID Connect ID tokens (a template over
    /// `{auth}`), for the `id_token` grant; `None`: it issues none.
    pub id_token_issuer: Option<&'static str>,
    /// Profile requests carry `appsecret_proof` (Facebook's HMAC of the
    /// access token under the client secret).
    pub appsecret_proof: bool,
    /// The profile is the ID token the token answer carries, checked
    /// against the issuer's keys (Apple, LinkedIn, Azure).
    pub profile_from_id_token: bool,
    /// Parameters every authorize URL carries.
    pub authorize_params: &'static [(&'static str, &'static str)],
    /// The last path segments of `{auth}` that name no tenant but let any
    /// tenant sign in (Azure's `common`): its ID tokens are then checked
    /// against their own tenant's issuer on the same host.
    pub multi_tenant: &'static [&'static str],
}

/// The issuer an ID token is checked against, and for a multi-tenant
/// endpoint the tenant its `tid` claim must name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExpectedIssuer {
    pub issuer: String,
    pub tenant: Option<String>,
}

impl ExpectedIssuer {
    /// Whether verified claims belong to the tenant (always, for one issuer).
    pub fn admits(&self, claims: &Map<String, Value>) -> bool {
        self.tenant
            .as_deref()
            .is_none_or(|t| claims.get("tid").and_then(Value::as_str) == Some(t))
    }
}

/// What a provider says about its user, mapped as GoTrue maps it.
#[derive(Debug, Clone, PartialEq)]
pub struct ExternalUser {
    /// The provider's id for the user (`identities.provider_id`).
    pub sub: String,
    pub emails: Vec<ProviderEmail>,
    /// `identity_data` (also merged into `user_metadata`).
    pub data: Map<String, Value>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProviderEmail {
    pub email: String,
    pub verified: bool,
    pub primary: bool,
}

impl ExternalUser {
    /// GoTrue's choice among the emails: the first primary one, else the last.
    pub fn email(&self) -> Option<&ProviderEmail> {
        self.emails
            .iter()
            .find(|e| e.primary)
            .or_else(|| self.emails.last())
    }
}

fn text(v: Option<&Value>) -> Option<String> {
    match v? {
        Value::String(s) if !s.is_empty() => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

impl Src {
    fn get(&self, doc: &Value) -> Option<String> {
        match self {
            Src::At(p) => text(doc.pointer(p)),
            Src::Join(ps) => {
                let parts: Vec<String> = ps.iter().filter_map(|p| text(doc.pointer(p))).collect();
                Some(parts.join(" ").trim().to_string()).filter(|s| !s.is_empty())
            }
            Src::With(f) => f(doc),
        }
    }
}

impl Verified {
    fn get(&self, doc: &Value) -> bool {
        match self {
            Verified::Always => true,
            Verified::Never => false,
            Verified::Flag(p) => doc.pointer(p).and_then(Value::as_bool).unwrap_or(false),
            Verified::Present(p) => text(doc.pointer(p)).is_some(),
            Verified::With(f) => f(doc),
        }
    }
}

impl Provider {
    /// Fills `{auth}` and `{api}` for the configured `_URL`.
    pub fn url(&self, template: &str, configured: Option<&str>) -> String {
        let pick = |h: Host| match configured {
            Some(u) => format!("{}{}", u.strip_suffix('/').unwrap_or(u), h.with_url),
            None => h.default.to_string(),
        };
        template
            .replace("{auth}", &pick(self.auth))
            .replace("{api}", &pick(self.api))
    }

    /// The scopes to ask for: the provider's, then the user's (comma-separated).
    pub fn scope(&self, asked: Option<&str>) -> String {
        let mut all: Vec<&str> = self.scopes.to_vec();
        if self.user_scopes
            && let Some(a) = asked.filter(|a| !a.is_empty())
        {
            all.extend(a.split(','));
        }
        all.join(" ")
    }

    /// The issuer to check an ID token of this provider against. `claimed`
    /// is the token's own (unverified) `iss`: it decides only for a
    /// multi-tenant endpoint, and only as a tenant of the configured host.
    pub fn expected_issuer(
        &self,
        configured: Option<&str>,
        claimed: Option<&str>,
    ) -> Option<ExpectedIssuer> {
        let fixed = self.url(self.id_token_issuer?, configured);
        let base = self.url("{auth}", configured);
        let host = match base.rsplit_once('/') {
            Some((host, segment)) if self.multi_tenant.contains(&segment) => host,
            _ => {
                return Some(ExpectedIssuer {
                    issuer: fixed,
                    tenant: None,
                });
            }
        };
        let suffix = fixed.strip_prefix(&base)?;
        let claimed = claimed?;
        let tenant = claimed
            .strip_prefix(host)?
            .strip_prefix('/')?
            .strip_suffix(suffix)?;
        let plain = |c: char| c.is_ascii_alphanumeric() || c == '-';
        (!tenant.is_empty() && tenant.chars().all(plain) && !self.multi_tenant.contains(&tenant))
            .then(|| ExpectedIssuer {
                issuer: claimed.to_string(),
                tenant: Some(tenant.to_string()),
            })
    }

    /// The identity a profile document describes; None when it names no user.
    pub fn map(&self, doc: &Value, configured: Option<&str>) -> Option<ExternalUser> {
        let sub = self.sub.get(doc)?;
        let emails = match self.emails {
            Emails::One { email, verified } => text(doc.pointer(email))
                .map(|e| {
                    vec![ProviderEmail {
                        email: e,
                        verified: verified.get(doc),
                        primary: true,
                    }]
                })
                .unwrap_or_default(),
            Emails::List {
                at,
                email,
                primary,
                verified,
            } => doc
                .pointer(at)
                .and_then(Value::as_array)
                .map(|list| {
                    list.iter()
                        .filter_map(|e| {
                            Some(ProviderEmail {
                                email: text(e.get(email))?,
                                verified: e.get(verified).and_then(Value::as_bool) == Some(true),
                                primary: e.get(primary).and_then(Value::as_bool) == Some(true),
                            })
                        })
                        .collect()
                })
                .unwrap_or_default(),
        };
        let mut data = Map::new();
        data.insert("iss".into(), json!(self.url(self.issuer, configured)));
        data.insert("sub".into(), json!(sub));
        data.insert("provider_id".into(), json!(sub));
        for (key, src) in self.claims {
            if let Some(v) = src.get(doc) {
                data.insert((*key).into(), json!(v));
            }
        }
        if !self.custom.is_empty() {
            let custom: Map<String, Value> = self
                .custom
                .iter()
                .map(|(k, p)| {
                    (
                        (*k).to_string(),
                        doc.pointer(p).cloned().unwrap_or(json!("")),
                    )
                })
                .collect();
            data.insert("custom_claims".into(), Value::Object(custom));
        }
        let mut user = ExternalUser { sub, emails, data }.cleaned()?;
        // GoTrue overwrites the profile's email with the chosen one.
        let (email, verified) = user
            .email()
            .map(|e| (Some(e.email.clone()), e.verified))
            .unwrap_or((None, false));
        match email {
            Some(e) => user.data.insert("email".into(), json!(e)),
            None => user.data.remove("email"),
        };
        user.data.insert("email_verified".into(), json!(verified));
        user.data.insert("phone_verified".into(), json!(false));
        Some(user)
    }
}

/// The identity an ID token's claims describe (the `id_token` grant), as
/// GoTrue's generic OIDC mapping gives it; None without a subject.
pub fn from_id_token(claims: &Map<String, Value>, issuer: &str) -> Option<ExternalUser> {
    let sub = text(claims.get("sub"))?;
    // Some providers send `email_verified` as a string.
    let verified = match claims.get("email_verified") {
        Some(Value::Bool(b)) => *b,
        Some(Value::String(s)) => s == "true",
        _ => false,
    };
    let emails: Vec<ProviderEmail> = text(claims.get("email"))
        .map(|email| {
            vec![ProviderEmail {
                email,
                verified,
                primary: true,
            }]
        })
        .unwrap_or_default();
    let mut data = Map::new();
    data.insert("iss".into(), json!(issuer));
    data.insert("sub".into(), json!(sub));
    data.insert("provider_id".into(), json!(sub));
    for key in [
        "name",
        "given_name",
        "family_name",
        "middle_name",
        "nickname",
        "preferred_username",
        "profile",
        "picture",
        "website",
        "locale",
    ] {
        if let Some(v) = text(claims.get(key)) {
            data.insert(key.into(), json!(v));
        }
    }
    if let Some(name) = text(claims.get("name")) {
        data.insert("full_name".into(), json!(name));
    }
    if let Some(picture) = text(claims.get("picture")) {
        data.insert("avatar_url".into(), json!(picture));
    }
    let mut user = ExternalUser { sub, emails, data }.cleaned()?;
    let (email, verified) = user
        .emails
        .first()
        .map(|e| (Some(e.email.clone()), e.verified))
        .unwrap_or((None, false));
    if let Some(e) = email {
        user.data.insert("email".into(), json!(e));
    }
    user.data.insert("email_verified".into(), json!(verified));
    user.data.insert("phone_verified".into(), json!(false));
    Some(user)
}

impl ExternalUser {
    /// Provider claims are input like any other: a subject the identities
    /// table can hold (else no user), only addresses our own rules accept
    /// (the others count as none), and no NUL anywhere (PostgreSQL refuses
    /// it in text and `jsonb`).
    fn cleaned(mut self) -> Option<Self> {
        crate::validate::short_text("sub", &self.sub, 255).ok()?;
        self.emails
            .retain(|e| crate::validate::email(&e.email).is_ok());
        for (_, v) in self.data.iter_mut() {
            strip_nul(v);
        }
        self.data.retain(|k, _| !k.contains('\0'));
        Some(self)
    }
}

fn strip_nul(v: &mut Value) {
    match v {
        Value::String(s) if s.contains('\0') => s.retain(|c| c != '\0'),
        Value::Array(a) => a.iter_mut().for_each(strip_nul),
        Value::Object(m) => {
            m.retain(|k, _| !k.contains('\0'));
            m.values_mut().for_each(strip_nul);
        }
        _ => {}
    }
}

/// Discord's avatar URL, as GoTrue computes it.
fn discord_avatar(doc: &Value) -> Option<String> {
    let id = text(doc.pointer("/user/id"))?;
    match text(doc.pointer("/user/avatar")) {
        Some(a) => {
            let ext = if a.starts_with("a_") { "gif" } else { "png" };
            Some(format!("https://cdn.discordapp.com/avatars/{id}/{a}.{ext}"))
        }
        None => {
            let d: u64 = text(doc.pointer("/user/discriminator"))?.parse().ok()?;
            Some(format!(
                "https://cdn.discordapp.com/embed/avatars/{}.png",
                d % 5
            ))
        }
    }
}

fn discord_name(doc: &Value) -> Option<String> {
    let user = text(doc.pointer("/user/username"))?;
    let d = text(doc.pointer("/user/discriminator")).unwrap_or_else(|| "0".into());
    Some(format!("{user}#{d}"))
}

/// Spotify's largest image.
fn spotify_image(doc: &Value) -> Option<String> {
    let images = doc.pointer("/user/images")?.as_array()?;
    let area = |i: &Value| {
        i.get("height").and_then(Value::as_u64).unwrap_or(0)
            * i.get("width").and_then(Value::as_u64).unwrap_or(0)
    };
    let mut best: Option<&Value> = None;
    for i in images {
        if best.is_none_or(|b| area(i) > area(b)) {
            best = Some(i);
        }
    }
    text(best?.get("url"))
}

fn kakao_verified(doc: &Value) -> bool {
    let flag = |p| doc.pointer(p).and_then(Value::as_bool) == Some(true);
    flag("/user/kakao_account/is_email_verified") && flag("/user/kakao_account/is_email_valid")
}

fn zoom_verified(doc: &Value) -> bool {
    let login_type = text(doc.pointer("/user/login_type")).unwrap_or_default();
    let verified = doc
        .pointer("/user/verified")
        .and_then(Value::as_i64)
        .unwrap_or(0);
    login_type != "100" || verified != 0
}

fn google_verified(doc: &Value) -> bool {
    let flag = |p| doc.pointer(p).and_then(Value::as_bool) == Some(true);
    flag("/user/verified_email") || flag("/user/email_verified")
}

fn x_profile(doc: &Value) -> Option<String> {
    Some(format!(
        "https://x.com/{}",
        text(doc.pointer("/user/data/username"))?
    ))
}

const BEARER: &[(&str, &str)] = &[];

/// What most providers share; each description says what differs.
const BASE: Provider = Provider {
    name: "",
    protocol: Protocol::OAuth2,
    auth: host("", ""),
    api: host("", ""),
    authorize: "",
    token: "",
    scopes: &[],
    user_scopes: true,
    needs_url: false,
    pkce: false,
    credentials: Credentials::Either,
    fetch: &[],
    issuer: "{api}",
    sub: Src::At("/user/id"),
    emails: Emails::One {
        email: "/user/email",
        verified: Verified::Never,
    },
    claims: &[],
    custom: &[],
    id_token_issuer: None,
    appsecret_proof: false,
    profile_from_id_token: false,
    authorize_params: &[],
    multi_tenant: &[],
};

/// The providers castellan signs in with, by GoTrue's name.
pub const PROVIDERS: &[Provider] = &[
    Provider {
        name: "github",
        auth: host("https://github.com", ""),
        api: host("https://api.github.com", "/api/v3"),
        authorize: "{auth}/login/oauth/authorize",
        token: "{auth}/login/oauth/access_token",
        scopes: &["user:email"],
        fetch: &[
            Fetch {
                key: "user",
                url: "{api}/user",
                headers: BEARER,
            },
            Fetch {
                key: "emails",
                url: "{api}/user/emails",
                headers: BEARER,
            },
        ],
        emails: Emails::List {
            at: "/emails",
            email: "email",
            primary: "primary",
            verified: "verified",
        },
        claims: &[
            ("name", Src::At("/user/name")),
            ("full_name", Src::At("/user/name")),
            ("preferred_username", Src::At("/user/login")),
            ("user_name", Src::At("/user/login")),
            ("avatar_url", Src::At("/user/avatar_url")),
        ],
        ..BASE
    },
    Provider {
        name: "gitlab",
        auth: host("https://gitlab.com", ""),
        api: host("https://gitlab.com", ""),
        authorize: "{auth}/oauth/authorize",
        token: "{auth}/oauth/token",
        scopes: &["read_user"],
        fetch: &[Fetch {
            key: "user",
            url: "{api}/api/v4/user",
            headers: BEARER,
        }],
        emails: Emails::One {
            email: "/user/email",
            verified: Verified::Present("/user/confirmed_at"),
        },
        claims: &[
            ("name", Src::At("/user/name")),
            ("full_name", Src::At("/user/name")),
            ("picture", Src::At("/user/avatar_url")),
            ("avatar_url", Src::At("/user/avatar_url")),
        ],
        ..BASE
    },
    // GoTrue reads Google's id token; its userinfo answer carries the same
    // profile. Unlike GoTrue, `_URL` moves Google too (a proxy, a stand-in).
    Provider {
        name: "google",
        auth: host("https://accounts.google.com", ""),
        api: host("https://www.googleapis.com", ""),
        authorize: "{auth}/o/oauth2/v2/auth",
        token: "{api}/oauth2/v4/token",
        scopes: &["email", "profile"],
        fetch: &[Fetch {
            key: "user",
            url: "{api}/userinfo/v2/me",
            headers: BEARER,
        }],
        issuer: "https://accounts.google.com",
        emails: Emails::One {
            email: "/user/email",
            verified: Verified::With(google_verified),
        },
        claims: &[
            ("name", Src::At("/user/name")),
            ("full_name", Src::At("/user/name")),
            ("picture", Src::At("/user/picture")),
            ("avatar_url", Src::At("/user/picture")),
        ],
        id_token_issuer: Some("{auth}"),
        ..BASE
    },
    Provider {
        name: "discord",
        auth: host("https://discord.com/api", "/api"),
        api: host("https://discord.com/api", "/api"),
        authorize: "{auth}/oauth2/authorize",
        token: "{auth}/oauth2/token",
        scopes: &["email", "identify"],
        fetch: &[Fetch {
            key: "user",
            url: "{api}/users/@me",
            headers: BEARER,
        }],
        emails: Emails::One {
            email: "/user/email",
            verified: Verified::Flag("/user/verified"),
        },
        claims: &[
            ("name", Src::With(discord_name)),
            ("full_name", Src::At("/user/username")),
            ("picture", Src::With(discord_avatar)),
            ("avatar_url", Src::With(discord_avatar)),
        ],
        custom: &[("global_name", "/user/global_name")],
        ..BASE
    },
    // Apple posts the browser back (form_post) and says who signed in only
    // in its ID token. Its secret is the client-secret JWT Apple's console
    // makes, as GoTrue takes it.
    Provider {
        name: "apple",
        auth: host("https://appleid.apple.com", ""),
        api: host("https://appleid.apple.com", ""),
        authorize: "{auth}/auth/authorize",
        token: "{auth}/auth/token",
        scopes: &["email", "name"],
        id_token_issuer: Some("{auth}"),
        profile_from_id_token: true,
        authorize_params: &[("response_mode", "form_post")],
        ..BASE
    },
    // Azure's tenant is its `_URL` (`https://login.microsoftonline.com/<tenant>`);
    // `common` (the default), `organizations` and `consumers` let users of
    // any tenant in, each token checked against its own tenant's issuer.
    Provider {
        name: "azure",
        auth: host("https://login.microsoftonline.com/common", ""),
        api: host("https://login.microsoftonline.com/common", ""),
        authorize: "{auth}/oauth2/v2.0/authorize",
        token: "{auth}/oauth2/v2.0/token",
        scopes: &["openid"],
        id_token_issuer: Some("{auth}/v2.0"),
        profile_from_id_token: true,
        multi_tenant: &["common", "organizations", "consumers"],
        ..BASE
    },
    Provider {
        name: "linkedin_oidc",
        auth: host("https://www.linkedin.com", ""),
        api: host("https://api.linkedin.com", ""),
        authorize: "{auth}/oauth/v2/authorization",
        token: "{auth}/oauth/v2/accessToken",
        scopes: &["openid", "email", "profile"],
        id_token_issuer: Some("{auth}/oauth"),
        profile_from_id_token: true,
        ..BASE
    },
    Provider {
        name: "bitbucket",
        auth: host("https://bitbucket.org", ""),
        api: host("https://api.bitbucket.org/2.0", "/2.0"),
        authorize: "{auth}/site/oauth2/authorize",
        token: "{auth}/site/oauth2/access_token",
        scopes: &["account", "email"],
        user_scopes: false,
        fetch: &[
            Fetch {
                key: "user",
                url: "{api}/user",
                headers: BEARER,
            },
            Fetch {
                key: "emails",
                url: "{api}/user/emails",
                headers: BEARER,
            },
        ],
        sub: Src::At("/user/uuid"),
        emails: Emails::List {
            at: "/emails/values",
            email: "email",
            primary: "is_primary",
            verified: "is_confirmed",
        },
        claims: &[
            ("name", Src::At("/user/display_name")),
            ("full_name", Src::At("/user/display_name")),
            ("picture", Src::At("/user/avatar/href")),
            ("avatar_url", Src::At("/user/avatar/href")),
        ],
        ..BASE
    },
    Provider {
        name: "facebook",
        auth: host("https://www.facebook.com", ""),
        api: host("https://graph.facebook.com", ""),
        authorize: "{auth}/dialog/oauth",
        token: "{api}/oauth/access_token",
        scopes: &["email"],
        fetch: &[Fetch {
            key: "user",
            url: "{api}/me?fields=email,first_name,last_name,name,picture",
            headers: BEARER,
        }],
        issuer: "{api}/me?fields=email,first_name,last_name,name,picture",
        emails: Emails::One {
            email: "/user/email",
            verified: Verified::Always,
        },
        claims: &[
            ("name", Src::Join(&["/user/first_name", "/user/last_name"])),
            (
                "full_name",
                Src::Join(&["/user/first_name", "/user/last_name"]),
            ),
            ("nickname", Src::At("/user/name")),
            ("slug", Src::At("/user/name")),
            ("picture", Src::At("/user/picture/data/url")),
            ("avatar_url", Src::At("/user/picture/data/url")),
        ],
        appsecret_proof: true,
        ..BASE
    },
    Provider {
        name: "figma",
        auth: host("https://www.figma.com", ""),
        api: host("https://api.figma.com", ""),
        authorize: "{auth}/oauth",
        token: "{api}/v1/oauth/token",
        scopes: &["current_user:read"],
        fetch: &[Fetch {
            key: "user",
            url: "{api}/v1/me",
            headers: BEARER,
        }],
        emails: Emails::One {
            email: "/user/email",
            verified: Verified::Always,
        },
        claims: &[
            ("name", Src::At("/user/handle")),
            ("full_name", Src::At("/user/handle")),
            ("avatar_url", Src::At("/user/img_url")),
        ],
        ..BASE
    },
    Provider {
        name: "kakao",
        auth: host("https://kauth.kakao.com", ""),
        api: host("https://kapi.kakao.com", ""),
        authorize: "{auth}/oauth/authorize",
        token: "{auth}/oauth/token",
        scopes: &["account_email", "profile_image", "profile_nickname"],
        credentials: Credentials::Body,
        fetch: &[Fetch {
            key: "user",
            url: "{api}/v2/user/me",
            headers: BEARER,
        }],
        emails: Emails::One {
            email: "/user/kakao_account/email",
            verified: Verified::With(kakao_verified),
        },
        claims: &[
            ("name", Src::At("/user/kakao_account/profile/nickname")),
            ("full_name", Src::At("/user/kakao_account/profile/nickname")),
            (
                "preferred_username",
                Src::At("/user/kakao_account/profile/nickname"),
            ),
            ("user_name", Src::At("/user/kakao_account/profile/nickname")),
            (
                "avatar_url",
                Src::At("/user/kakao_account/profile/profile_image_url"),
            ),
        ],
        id_token_issuer: Some("{auth}"),
        ..BASE
    },
    Provider {
        name: "keycloak",
        auth: host("", ""),
        api: host("", ""),
        authorize: "{auth}/protocol/openid-connect/auth",
        token: "{auth}/protocol/openid-connect/token",
        scopes: &["profile", "email"],
        needs_url: true,
        fetch: &[Fetch {
            key: "user",
            url: "{api}/protocol/openid-connect/userinfo",
            headers: BEARER,
        }],
        sub: Src::At("/user/sub"),
        emails: Emails::One {
            email: "/user/email",
            verified: Verified::Flag("/user/email_verified"),
        },
        claims: &[
            ("name", Src::At("/user/name")),
            ("full_name", Src::At("/user/name")),
            ("preferred_username", Src::At("/user/preferred_username")),
        ],
        id_token_issuer: Some("{auth}"),
        ..BASE
    },
    Provider {
        name: "notion",
        auth: host("https://api.notion.com", ""),
        api: host("https://api.notion.com", ""),
        authorize: "{auth}/v1/oauth/authorize",
        token: "{auth}/v1/oauth/token",
        scopes: &[],
        user_scopes: false,
        fetch: &[Fetch {
            key: "user",
            url: "{api}/v1/users/me",
            headers: &[("Notion-Version", "2021-08-16")],
        }],
        sub: Src::At("/user/bot/owner/user/id"),
        emails: Emails::One {
            email: "/user/bot/owner/user/person/email",
            verified: Verified::Always,
        },
        claims: &[
            ("name", Src::At("/user/bot/owner/user/name")),
            ("full_name", Src::At("/user/bot/owner/user/name")),
            ("picture", Src::At("/user/bot/owner/user/avatar_url")),
            ("avatar_url", Src::At("/user/bot/owner/user/avatar_url")),
        ],
        ..BASE
    },
    Provider {
        name: "slack_oidc",
        auth: host("https://slack.com", ""),
        api: host("https://slack.com", ""),
        authorize: "{auth}/openid/connect/authorize",
        token: "{auth}/api/openid.connect.token",
        scopes: &["profile", "email", "openid"],
        fetch: &[Fetch {
            key: "user",
            url: "{api}/api/openid.connect.userInfo",
            headers: BEARER,
        }],
        issuer: "{api}/api",
        sub: Src::At("/user/https:~1~1slack.com~1user_id"),
        emails: Emails::One {
            email: "/user/email",
            verified: Verified::Flag("/user/email_verified"),
        },
        claims: &[
            ("name", Src::At("/user/name")),
            ("full_name", Src::At("/user/name")),
            ("picture", Src::At("/user/picture")),
            ("avatar_url", Src::At("/user/picture")),
        ],
        custom: &[(
            "https://slack.com/team_id",
            "/user/https:~1~1slack.com~1team_id",
        )],
        ..BASE
    },
    Provider {
        name: "spotify",
        auth: host("https://accounts.spotify.com", ""),
        api: host("https://api.spotify.com/v1", ""),
        authorize: "{auth}/authorize",
        token: "{auth}/api/token",
        scopes: &["user-read-email"],
        fetch: &[Fetch {
            key: "user",
            url: "{api}/me",
            headers: BEARER,
        }],
        emails: Emails::One {
            email: "/user/email",
            verified: Verified::Never,
        },
        claims: &[
            ("name", Src::At("/user/display_name")),
            ("full_name", Src::At("/user/display_name")),
            ("picture", Src::With(spotify_image)),
            ("avatar_url", Src::With(spotify_image)),
        ],
        ..BASE
    },
    Provider {
        name: "twitch",
        auth: host("https://id.twitch.tv", ""),
        api: host("https://api.twitch.tv", ""),
        authorize: "{auth}/oauth2/authorize",
        token: "{auth}/oauth2/token",
        scopes: &["user:read:email"],
        fetch: &[Fetch {
            key: "user",
            url: "{api}/helix/users",
            headers: &[("Client-Id", "{client_id}")],
        }],
        sub: Src::At("/user/data/0/id"),
        emails: Emails::One {
            email: "/user/data/0/email",
            verified: Verified::Always,
        },
        claims: &[
            ("name", Src::At("/user/data/0/login")),
            ("full_name", Src::At("/user/data/0/login")),
            ("nickname", Src::At("/user/data/0/display_name")),
            ("slug", Src::At("/user/data/0/display_name")),
            ("picture", Src::At("/user/data/0/profile_image_url")),
            ("avatar_url", Src::At("/user/data/0/profile_image_url")),
        ],
        custom: &[
            ("broadcaster_type", "/user/data/0/broadcaster_type"),
            ("description", "/user/data/0/description"),
            ("type", "/user/data/0/type"),
            ("offline_image_url", "/user/data/0/offline_image_url"),
            ("view_count", "/user/data/0/view_count"),
        ],
        ..BASE
    },
    Provider {
        name: "zoom",
        auth: host("https://zoom.us/oauth", "/oauth"),
        api: host("https://api.zoom.us/v2", "/v2"),
        authorize: "{auth}/authorize",
        token: "{auth}/token",
        scopes: &[],
        user_scopes: false,
        fetch: &[Fetch {
            key: "user",
            url: "{api}/users/me",
            headers: BEARER,
        }],
        emails: Emails::One {
            email: "/user/email",
            verified: Verified::With(zoom_verified),
        },
        claims: &[
            ("name", Src::Join(&["/user/first_name", "/user/last_name"])),
            (
                "full_name",
                Src::Join(&["/user/first_name", "/user/last_name"]),
            ),
            ("picture", Src::At("/user/pic_url")),
            ("avatar_url", Src::At("/user/pic_url")),
        ],
        ..BASE
    },
    // WorkOS answers the profile with the token.
    Provider {
        name: "workos",
        auth: host("https://api.workos.com", ""),
        api: host("https://api.workos.com", ""),
        authorize: "{auth}/sso/authorize",
        token: "{auth}/sso/token",
        scopes: &[],
        user_scopes: false,
        fetch: &[],
        sub: Src::At("/token/profile/id"),
        emails: Emails::One {
            email: "/token/profile/email",
            verified: Verified::Always,
        },
        claims: &[
            (
                "name",
                Src::Join(&["/token/profile/first_name", "/token/profile/last_name"]),
            ),
            (
                "full_name",
                Src::Join(&["/token/profile/first_name", "/token/profile/last_name"]),
            ),
        ],
        custom: &[
            ("connection_id", "/token/profile/connection_id"),
            ("organization_id", "/token/profile/organization_id"),
        ],
        ..BASE
    },
    // Twitter's OAuth 1.0a API; `x` is its OAuth 2.0 successor. GoTrue
    // names the profile endpoint as the issuer.
    Provider {
        name: "twitter",
        protocol: Protocol::OAuth1 {
            request_token: "{auth}/oauth/request_token",
        },
        auth: host("https://api.twitter.com", ""),
        api: host("https://api.twitter.com", ""),
        authorize: "{auth}/oauth/authenticate",
        token: "{auth}/oauth/access_token",
        user_scopes: false,
        fetch: &[Fetch {
            key: "user",
            url: "{api}/1.1/account/verify_credentials.json?include_entities=false&skip_status=true&include_email=true",
            headers: BEARER,
        }],
        issuer: "{api}/1.1/account/verify_credentials.json",
        sub: Src::At("/user/id_str"),
        emails: Emails::One {
            email: "/user/email",
            verified: Verified::Always,
        },
        claims: &[
            ("name", Src::At("/user/name")),
            ("full_name", Src::At("/user/name")),
            ("preferred_username", Src::At("/user/screen_name")),
            ("user_name", Src::At("/user/screen_name")),
            ("picture", Src::At("/user/profile_image_url_https")),
            ("avatar_url", Src::At("/user/profile_image_url_https")),
        ],
        ..BASE
    },
    Provider {
        name: "x",
        auth: host("https://x.com", ""),
        api: host("https://api.x.com", ""),
        authorize: "{auth}/i/oauth2/authorize",
        token: "{api}/2/oauth2/token",
        scopes: &["users.email", "tweet.read", "users.read", "offline.access"],
        pkce: true,
        fetch: &[Fetch {
            key: "user",
            url: "{api}/2/users/me?user.fields=id,name,username,confirmed_email,profile_image_url,url,created_at",
            headers: BEARER,
        }],
        sub: Src::At("/user/data/id"),
        emails: Emails::One {
            email: "/user/data/confirmed_email",
            verified: Verified::Always,
        },
        claims: &[
            ("name", Src::At("/user/data/name")),
            ("full_name", Src::At("/user/data/name")),
            ("preferred_username", Src::At("/user/data/username")),
            ("user_name", Src::At("/user/data/username")),
            ("picture", Src::At("/user/data/profile_image_url")),
            ("avatar_url", Src::At("/user/data/profile_image_url")),
            ("profile", Src::With(x_profile)),
            ("website", Src::At("/user/data/url")),
        ],
        custom: &[("created_at", "/user/data/created_at")],
        ..BASE
    },
];

/// A provider castellan can sign in with, by GoTrue's name.
pub fn provider(name: &str) -> Option<&'static Provider> {
    PROVIDERS.iter().find(|p| p.name == name)
}

#[cfg(test)]
mod tests {

    #[test]
    fn provider_claims_are_validated_like_input() {
        let claims = |v: Value| v.as_object().unwrap().clone();
        let u = from_id_token(
            &claims(json!({"sub": "abc", "email": "not an email", "name": "a\u{0}b"})),
            "https://issuer.example",
        )
        .unwrap();
        assert!(u.emails.is_empty(), "not an address: no email");
        assert!(u.data.get("email").is_none());
        assert_eq!(u.data["name"], "ab", "NUL stripped");
        let long = format!("{}@example.com", "a".repeat(300));
        let u = from_id_token(&claims(json!({"sub": "abc", "email": long})), "i").unwrap();
        assert!(u.emails.is_empty(), "too long for the column: no email");
        let u = from_id_token(
            &claims(json!({"sub": "abc", "email": "Ok@Example.com"})),
            "i",
        );
        assert_eq!(u.unwrap().emails[0].email, "Ok@Example.com");
        for sub in ["a\u{0}b".to_string(), "s".repeat(256)] {
            assert!(from_id_token(&claims(json!({"sub": sub})), "i").is_none());
        }
    }

    use super::*;

    #[test]
    fn azure_checks_a_multi_tenant_token_against_its_own_tenant() {
        let p = provider("azure").unwrap();
        let tenant = "9188040d-6c67-4c5b-b112-36a304b66dad";
        let own = format!("https://login.microsoftonline.com/{tenant}/v2.0");
        let e = p.expected_issuer(None, Some(&own)).unwrap();
        assert_eq!(e.issuer, own);
        assert!(e.admits(json!({"tid": tenant}).as_object().unwrap()));
        assert!(!e.admits(json!({"tid": "another"}).as_object().unwrap()));
        assert!(!e.admits(&Map::new()));
        // Another host, the multi-tenant names themselves, paths: refused.
        for claimed in [
            format!("https://evil.example.com/{tenant}/v2.0"),
            "https://login.microsoftonline.com/common/v2.0".to_string(),
            format!("https://login.microsoftonline.com/{tenant}/x/v2.0"),
            format!("https://login.microsoftonline.com/../{tenant}/v2.0"),
            "https://login.microsoftonline.com//v2.0".to_string(),
        ] {
            assert_eq!(p.expected_issuer(None, Some(&claimed)), None, "{claimed}");
        }
        assert_eq!(p.expected_issuer(None, None), None);
        // A tenant's own URL: its issuer, whatever the token claims.
        let url = format!("https://login.microsoftonline.com/{tenant}");
        let e = p.expected_issuer(Some(&url), Some("https://x.example.com/t/v2.0"));
        assert_eq!(
            e,
            Some(ExpectedIssuer {
                issuer: own.clone(),
                tenant: None
            })
        );
        // `organizations` on a stand-in host.
        let e = p.expected_issuer(
            Some("http://127.0.0.1:9/organizations"),
            Some("http://127.0.0.1:9/t1/v2.0"),
        );
        assert_eq!(e.unwrap().tenant.as_deref(), Some("t1"));
        // Providers of one issuer ignore the claim.
        let kc = provider("keycloak").unwrap();
        let e = kc.expected_issuer(Some("http://127.0.0.1:9/realms/r"), Some("https://evil"));
        assert_eq!(e.unwrap().issuer, "http://127.0.0.1:9/realms/r");
    }

    #[test]
    fn github_maps_as_gotrue_does() {
        let p = provider("github").unwrap();
        let doc = json!({
            "user": {"id": 42, "login": "octo", "name": "Octo Cat", "avatar_url": "https://a/x.png", "email": "ignored@x"},
            "emails": [
                {"email": "old@x.com", "primary": false, "verified": true},
                {"email": "octo@x.com", "primary": true, "verified": true}
            ]
        });
        let u = p.map(&doc, None).unwrap();
        assert_eq!(u.sub, "42");
        assert_eq!(u.email().unwrap().email, "octo@x.com");
        assert_eq!(u.data["iss"], "https://api.github.com");
        assert_eq!(u.data["email"], "octo@x.com");
        assert_eq!(u.data["email_verified"], true);
        assert_eq!(u.data["phone_verified"], false);
        assert_eq!(u.data["user_name"], "octo");
        assert_eq!(u.data["provider_id"], "42");
        assert!(u.data.get("picture").is_none());
        // Enterprise: every host moves, the API under /api/v3.
        assert_eq!(
            p.url(p.token, Some("https://ghe.test/")),
            "https://ghe.test/login/oauth/access_token"
        );
        assert_eq!(
            p.url("{api}/user", Some("https://ghe.test")),
            "https://ghe.test/api/v3/user"
        );
        assert_eq!(p.scope(Some("repo,gist")), "user:email repo gist");
    }

    #[test]
    fn facebook_proves_the_app_secret() {
        assert_eq!(
            crate::crypto::hmac_sha256_hex(b"key", b"The quick brown fox jumps over the lazy dog"),
            "f7bc83f430538424b13298e6aa6fb143ef4d59a14946175997479dbc2d1a3cd8"
        );
        let p = provider("facebook").unwrap();
        assert!(p.appsecret_proof);
        let doc = json!({"user": {"id": "10", "first_name": "Ada", "last_name": "L", "name": "ada.l",
            "email": "ada@x.com", "picture": {"data": {"url": "https://pic"}}}});
        let u = p.map(&doc, None).unwrap();
        assert_eq!(u.data["name"], "Ada L");
        assert_eq!(u.data["slug"], "ada.l");
        assert_eq!(u.data["avatar_url"], "https://pic");
        assert_eq!(u.data["email_verified"], true);
        assert_eq!(
            u.data["iss"],
            "https://graph.facebook.com/me?fields=email,first_name,last_name,name,picture"
        );
    }

    #[test]
    fn twitter_maps_as_gotrue_does() {
        let p = provider("twitter").unwrap();
        let doc = json!({"user": {"id": 12, "id_str": "12", "screen_name": "jack", "name": "Jack",
            "profile_image_url_https": "https://pbs/x.jpg", "email": "jack@x.com"}});
        let u = p.map(&doc, None).unwrap();
        assert_eq!(u.sub, "12");
        assert_eq!(u.email().unwrap().email, "jack@x.com");
        assert!(u.email().unwrap().verified);
        assert_eq!(
            u.data["iss"],
            "https://api.twitter.com/1.1/account/verify_credentials.json"
        );
        assert_eq!(u.data["user_name"], "jack");
        assert_eq!(u.data["preferred_username"], "jack");
        assert_eq!(u.data["avatar_url"], "https://pbs/x.jpg");
        assert_eq!(
            p.url(p.token, Some("http://127.0.0.1:9/")),
            "http://127.0.0.1:9/oauth/access_token"
        );
        assert!(matches!(p.protocol, Protocol::OAuth1 { .. }));
        // Twitter takes no scopes.
        assert_eq!(p.scope(Some("repo")), "");
    }

    #[test]
    fn quirks_are_computed() {
        let d = provider("discord").unwrap();
        let doc = json!({"user": {"id": "7", "username": "dd", "discriminator": "3", "avatar": "a_b", "email": "d@x", "verified": false}});
        let u = d.map(&doc, None).unwrap();
        assert_eq!(u.data["name"], "dd#3");
        assert_eq!(
            u.data["avatar_url"],
            "https://cdn.discordapp.com/avatars/7/a_b.gif"
        );
        assert_eq!(u.data["custom_claims"], json!({"global_name": ""}));
        assert_eq!(u.data["email_verified"], false);
        // No user id: no identity.
        assert!(d.map(&json!({"user": {}}), None).is_none());
    }
}
