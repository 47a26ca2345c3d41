//! The container's environment: the caller's, then the image's, then the
//! user's `--env`/`--env-file`, with deny rules so host loader settings and
//! per-task variables cannot break the image or be clobbered by it.
//!
//! Pure: takes lists, returns a list. Reading `--env-file` is the caller's
//! job ([`parse_env_file`] parses its text).

use std::collections::BTreeMap;

/// Host variables never carried in: the host's loader settings point at host
/// libraries, and PATH names host directories (it is set from the image or
/// [`DEFAULT_PATH`]). A trailing `*` matches a prefix.
pub const DEFAULT_DENY: &[&str] = &["LD_*", "PATH"];

/// Variables the image's config may not override: who the user is and what
/// Slurm/PMI told this task.
pub const PROTECTED: &[&str] = &[
    "HOME", "USER", "LOGNAME", "SLURM_*", "PMI_*", "PMIX_*", "SHOAL_*",
];

/// Variables no deny rule drops: how a Slurm task reaches its step (ranks,
/// node lists) and its PMI-1/PMI-2/PMIx server (`PMI_FD`, `PMIX_SERVER_URI*`,
/// `PMIX_NAMESPACE`, ...). Without them an MPI program in the image cannot
/// start, and a broad site pattern (`P*`) must not turn into that.
pub const NEVER_DENIED: &[&str] = &["SLURM_*", "PMI_*", "PMIX_*"];

/// PATH when the image sets none.
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// One `NAME=value` that could not be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EnvError {
    #[error("invalid environment setting {input:?}{at}: expected `NAME=VALUE` with a name of letters, digits and `_`")]
    Malformed { input: String, at: String },
}

fn matches(pattern: &str, name: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => name.starts_with(prefix),
        None => pattern == name,
    }
}

/// Splits `NAME=VALUE`, checking the name.
pub fn parse_assignment(s: &str) -> Result<(String, String), EnvError> {
    let bad = || EnvError::Malformed { input: s.to_string(), at: String::new() };
    let (k, v) = s.split_once('=').ok_or_else(bad)?;
    let valid = !k.is_empty()
        && !k.starts_with(|c: char| c.is_ascii_digit())
        && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    if !valid {
        return Err(bad());
    }
    Ok((k.to_string(), v.to_string()))
}

/// Parses an env file: `NAME=VALUE` lines, blank lines and `#` comments
/// ignored, an optional `export ` prefix accepted. `origin` names the file in
/// errors.
pub fn parse_env_file(text: &str, origin: &str) -> Result<Vec<(String, String)>, EnvError> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let line = line.strip_prefix("export ").unwrap_or(line);
        out.push(parse_assignment(line).map_err(|_| EnvError::Malformed {
            input: line.to_string(),
            at: format!(" in {origin} line {}", i + 1),
        })?);
    }
    Ok(out)
}

/// The environment, sorted by name. `deny` adds site patterns to
/// [`DEFAULT_DENY`] (neither drops [`NEVER_DENIED`] names); `image` is the
/// image config's `NAME=VALUE` list.
pub fn compose(
    host: &[(String, String)],
    image: &[String],
    user: &[(String, String)],
    deny: &[String],
    identity: &[(String, String)],
) -> Vec<(String, String)> {
    let denied = |name: &str| {
        !NEVER_DENIED.iter().any(|p| matches(p, name))
            && (DEFAULT_DENY.iter().any(|p| matches(p, name)) || deny.iter().any(|p| matches(p, name)))
    };
    let mut env: BTreeMap<String, String> = host
        .iter()
        .filter(|(k, _)| !denied(k))
        .cloned()
        .collect();
    // Who the user is comes from the plan, not from whatever the caller had.
    for (k, v) in identity {
        env.insert(k.clone(), v.clone());
    }
    for kv in image {
        if let Ok((k, v)) = parse_assignment(kv) {
            if !PROTECTED.iter().any(|p| matches(p, &k)) {
                env.insert(k, v);
            }
        }
    }
    env.entry("PATH".into()).or_insert_with(|| DEFAULT_PATH.into());
    for (k, v) in user {
        env.insert(k.clone(), v.clone());
    }
    env.into_iter().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kv(s: &[(&str, &str)]) -> Vec<(String, String)> {
        s.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }
    fn get<'a>(env: &'a [(String, String)], k: &str) -> Option<&'a str> {
        env.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str())
    }

    #[test]
    fn host_loader_vars_and_path_are_dropped() {
        let host = kv(&[
            ("LD_PRELOAD", "/host/x.so"),
            ("LD_LIBRARY_PATH", "/host/lib"),
            ("PATH", "/host/bin"),
            ("TERM", "xterm"),
        ]);
        let env = compose(&host, &[], &[], &[], &[]);
        assert_eq!(get(&env, "LD_PRELOAD"), None);
        assert_eq!(get(&env, "LD_LIBRARY_PATH"), None);
        assert_eq!(get(&env, "PATH"), Some(DEFAULT_PATH));
        assert_eq!(get(&env, "TERM"), Some("xterm"));
    }

    #[test]
    fn image_env_wins_except_for_protected_names() {
        let host = kv(&[("LANG", "C"), ("SLURM_PROCID", "3"), ("HOME", "/home/u")]);
        let image = vec![
            "LANG=C.UTF-8".to_string(),
            "PATH=/opt/bin:/bin".to_string(),
            "SLURM_PROCID=0".to_string(),
            "HOME=/root".to_string(),
            "LD_LIBRARY_PATH=/opt/lib".to_string(),
        ];
        let env = compose(&host, &image, &[], &[], &[]);
        assert_eq!(get(&env, "LANG"), Some("C.UTF-8"));
        assert_eq!(get(&env, "PATH"), Some("/opt/bin:/bin"));
        assert_eq!(get(&env, "SLURM_PROCID"), Some("3"));
        assert_eq!(get(&env, "HOME"), Some("/home/u"));
        // The image's own loader path is the image's business.
        assert_eq!(get(&env, "LD_LIBRARY_PATH"), Some("/opt/lib"));
    }

    #[test]
    fn user_settings_win_and_site_deny_applies() {
        let host = kv(&[("SECRET_TOKEN", "x"), ("A", "host")]);
        let env = compose(
            &host,
            &["A=image".into()],
            &kv(&[("A", "user"), ("PATH", "/mine")]),
            &["SECRET_*".into()],
            &kv(&[("USER", "u")]),
        );
        assert_eq!(get(&env, "A"), Some("user"));
        assert_eq!(get(&env, "PATH"), Some("/mine"));
        assert_eq!(get(&env, "SECRET_TOKEN"), None);
        assert_eq!(get(&env, "USER"), Some("u"));
    }

    #[test]
    fn slurm_and_pmi_variables_survive_every_deny_rule() {
        let host = kv(&[
            ("PMIX_SERVER_URI41", "pmix-server.1;tcp4://127.0.0.1:4000"),
            ("PMIX_RANK", "3"),
            ("PMI_FD", "7"),
            ("SLURM_PROCID", "3"),
            ("PROMPT", "x"),
        ]);
        let env = compose(&host, &[], &[], &["P*".into(), "SLURM_*".into()], &[]);
        assert_eq!(get(&env, "PMIX_SERVER_URI41"), Some("pmix-server.1;tcp4://127.0.0.1:4000"));
        assert_eq!(get(&env, "PMIX_RANK"), Some("3"));
        assert_eq!(get(&env, "PMI_FD"), Some("7"));
        assert_eq!(get(&env, "SLURM_PROCID"), Some("3"));
        assert_eq!(get(&env, "PROMPT"), None);
        assert_eq!(get(&env, "PATH"), Some(DEFAULT_PATH));
    }

    #[test]
    fn env_file_parses_and_names_bad_lines() {
        let v = parse_env_file("# c\n\nA=1\nexport B=x=y\n", "f.env").unwrap();
        assert_eq!(v, kv(&[("A", "1"), ("B", "x=y")]));
        let e = parse_env_file("A=1\n1B=2\n", "f.env").unwrap_err().to_string();
        assert!(e.contains("f.env line 2"), "{e}");
        assert!(parse_assignment("NOEQUALS").is_err());
    }
}
