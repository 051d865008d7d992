//! Variables in the environment that the configuration did not read: those
//! GoTrue reads that castellan does not use as configured, and those nobody
//! reads (a misspelling, most likely). Said once at start and by `config
//! check`; neither stops castellan, as neither stops GoTrue.

use std::collections::{HashMap, HashSet};

use crate::config::Setting;

/// Every variable GoTrue reads (its `internal/conf`, listed with its own
/// configuration library, at supabase/auth bc32168), under its `GOTRUE_`
/// name or its alternative.
const GOTRUE: &str = include_str!("gotrue-variables.txt");

/// Read outside the configuration: the log filter.
const ELSEWHERE: [&str; 2] = ["CASTELLAN_LOG", "GOTRUE_LOG_LEVEL"];

#[derive(Debug, Default, PartialEq, Eq)]
pub struct Unread {
    /// GoTrue's, which castellan does not use as configured (a feature it
    /// lacks, or the settings of a provider not chosen).
    pub ignored: Vec<String>,
    /// Neither castellan's nor GoTrue's.
    pub unknown: Vec<String>,
}

impl Unread {
    /// The `GOTRUE_*` and `CASTELLAN_*` variables in `env` that none of
    /// `settings` names, sorted.
    pub fn of(env: &HashMap<String, String>, settings: &[Setting]) -> Self {
        let read: HashSet<&str> = settings
            .iter()
            .flat_map(|s| s.names.iter().map(String::as_str))
            .chain(ELSEWHERE)
            .collect();
        let gotrue: HashSet<&str> = GOTRUE.lines().map(str::trim).collect();
        let mut unread = Unread::default();
        // An empty variable is an unset one, as the configuration reads it.
        let mut names: Vec<&String> = env
            .iter()
            .filter(|(_, v)| !v.trim().is_empty())
            .map(|(k, _)| k)
            .filter(|k| k.starts_with("GOTRUE_") || k.starts_with("CASTELLAN_"))
            .filter(|k| !k.starts_with("CASTELLAN_TEST_"))
            .filter(|k| !read.contains(k.as_str()))
            .collect();
        names.sort();
        for name in names {
            match gotrue.contains(name.as_str()) {
                true => unread.ignored.push(name.clone()),
                false => unread.unknown.push(name.clone()),
            }
        }
        unread
    }

    /// One line for each, as `serve` logs them and `config check` prints them.
    pub fn warnings(&self) -> Vec<String> {
        let mut out = Vec::new();
        if !self.ignored.is_empty() {
            out.push(format!(
                "read by GoTrue, unused by castellan as configured: {}",
                self.ignored.join(", ")
            ));
        }
        if !self.unknown.is_empty() {
            out.push(format!(
                "unknown variables (misspelt?), ignored: {}",
                self.unknown.join(", ")
            ));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Config;

    #[test]
    fn ignored_and_misspelt_variables_are_told_apart() {
        let env: HashMap<String, String> = [
            ("GOTRUE_JWT_SECRET", "read"),
            ("GOTRUE_JWT_VALIDMETHODS", "HS256"),
            ("GOTRUE_SAML_ENABLED", "true"),
            ("GOTRUE_JWT_SECRTE", "misspelt"),
            ("CASTELLAN_SESION_SHARDS", "2"),
            ("CASTELLAN_LOG", "debug"),
            ("CASTELLAN_TEST_PG_URL", "postgres://"),
            ("HOME", "/root"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let (settings, _) = Config::settings(&env);
        let unread = Unread::of(&env, &settings);
        assert_eq!(unread.ignored, ["GOTRUE_SAML_ENABLED"]);
        assert_eq!(
            unread.unknown,
            ["CASTELLAN_SESION_SHARDS", "GOTRUE_JWT_SECRTE"]
        );
        assert_eq!(unread.warnings().len(), 2);
    }

    #[test]
    fn the_list_of_gotrue_variables_is_gotrues() {
        let names: Vec<&str> = GOTRUE.lines().collect();
        assert!(names.len() > 600);
        for name in [
            "GOTRUE_JWT_SECRET",
            "GOTRUE_SMS_TWILIO_ACCOUNT_SID",
            "GOTRUE_MAILER_AUTOCONFIRM",
        ] {
            assert!(names.contains(&name), "{name}");
        }
        assert!(names.iter().all(|n| n.starts_with("GOTRUE_")));
    }
}
