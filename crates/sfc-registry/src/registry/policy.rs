//! Identity binding (`sfc registry --policy FILE`): which client certificate may do what.
//!
//! Grants come from two places:
//! - SAN URIs in the certificate: `sfc://group/<name>` may register instances in group
//!   `<name>`; `sfc://observer` may query and watch; `sfc://admin` may do everything;
//! - the policy file, by exact certificate subject:
//!
//! ```json
//! { "identities": [
//!     { "subject": "CN=billing-1, O=acme", "role": "service", "groups": ["billing"] },
//!     { "subject": "CN=ops, O=acme", "role": "admin" } ],
//!   "anonymous": "none" }
//! ```
//!
//! `anonymous` says what a client without a certificate may do: `none` (default) or
//! `observer`. Every identity with a grant may query and watch; only `service` (in its groups)
//! and `admin` may register; only `admin` may send commands or deregister (HTTP API).

use std::path::Path;

use serde::Deserialize;

use crate::error::{Error, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PolicyRole {
    None,
    Observer,
    Service,
    Admin,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct IdentityRule {
    subject: String,
    role: PolicyRole,
    #[serde(default)]
    groups: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PolicyFile {
    #[serde(default)]
    identities: Vec<IdentityRule>,
    #[serde(default = "none")]
    anonymous: PolicyRole,
}

fn none() -> PolicyRole {
    PolicyRole::None
}

/// What one identity may do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    pub role: PolicyRole,
    /// Groups it may register in (`service`); every group for `admin`.
    pub groups: Vec<String>,
}

impl Grant {
    pub fn may_register(&self, group: &str) -> bool {
        self.role == PolicyRole::Admin || (self.role == PolicyRole::Service && self.groups.iter().any(|g| g == group))
    }

    pub fn may_observe(&self) -> bool {
        self.role >= PolicyRole::Observer
    }

    pub fn is_admin(&self) -> bool {
        self.role == PolicyRole::Admin
    }
}

#[derive(Debug)]
pub struct Policy {
    rules: Vec<IdentityRule>,
    anonymous: PolicyRole,
}

impl Policy {
    pub fn load(path: &Path) -> Result<Policy> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::read_file(path, e))?;
        Self::parse(&text).map_err(|e| match e {
            Error::Invalid { why, .. } => Error::invalid(format!("policy file {}", path.display()), why),
            other => other,
        })
    }

    pub fn parse(text: &str) -> Result<Policy> {
        let f: PolicyFile = serde_json::from_str(text).map_err(|e| Error::invalid("policy", e.to_string()))?;
        for r in &f.identities {
            if r.subject.trim().is_empty() {
                return Err(Error::invalid("policy", "an identity has an empty subject"));
            }
            if r.role == PolicyRole::Service && r.groups.is_empty() {
                return Err(Error::invalid("policy", format!("service identity {:?} lists no groups", r.subject)));
            }
        }
        Ok(Policy { rules: f.identities, anonymous: f.anonymous })
    }

    /// The grant of a peer: its certificate subject (None: no certificate) and SAN URIs.
    pub fn grant(&self, subject: Option<&str>, san_uris: &[String]) -> Grant {
        if subject.is_none() {
            return Grant { role: self.anonymous, groups: Vec::new() };
        }
        let mut g = Grant { role: PolicyRole::None, groups: Vec::new() };
        let mut add = |role: PolicyRole, groups: &[String]| {
            g.role = g.role.max(role);
            g.groups.extend(groups.iter().cloned());
        };
        for uri in san_uris {
            match uri.strip_prefix("sfc://") {
                Some("admin") => add(PolicyRole::Admin, &[]),
                Some("observer") => add(PolicyRole::Observer, &[]),
                Some(rest) => {
                    if let Some(group) = rest.strip_prefix("group/").filter(|g| !g.is_empty()) {
                        add(PolicyRole::Service, &[group.to_string()]);
                    }
                }
                None => {}
            }
        }
        for r in self.rules.iter().filter(|r| Some(r.subject.as_str()) == subject) {
            add(r.role, &r.groups);
        }
        g
    }
}

/// Record quotas (`--max-instances`, `--max-group-instances`, and the tighter caps on legacy
/// records, which anonymous writers make): whether the state may take one more identity
/// `id` in `group`. An identity it already holds always passes (updates and reconnects are
/// never refused). Counting a group or the legacy records walks the records, so it is done
/// only for a new identity and only when the total is at least the cap in question (with the
/// defaults, a v1 hello never walks). Returns why not, for the error and the audit line.
pub(crate) fn check_quota(
    st: &super::state::State,
    cfg: &super::RegistryConfig,
    group: &str,
    id: &str,
    legacy: bool,
) -> std::result::Result<(), String> {
    if st.instances.contains_key(id) {
        return Ok(());
    }
    let total = st.instances.len();
    if total >= cfg.admission.max_instances {
        return Err(format!("the registry holds its maximum of {} records (--max-instances)", cfg.admission.max_instances));
    }
    if total >= cfg.admission.max_group_instances {
        let n = st.instances.values().filter(|i| i.record.group == group).count();
        if n >= cfg.admission.max_group_instances {
            return Err(format!(
                "group {group:?} holds its maximum of {} records (--max-group-instances)",
                cfg.admission.max_group_instances
            ));
        }
    }
    if legacy && total >= cfg.admission.max_legacy_group_instances.min(cfg.admission.max_legacy_instances) {
        let (mut all, mut in_group) = (0usize, 0usize);
        for i in st.instances.values().filter(|i| i.record.wire == "legacy") {
            all += 1;
            in_group += usize::from(i.record.group == group);
        }
        if all >= cfg.admission.max_legacy_instances {
            return Err(format!(
                "the registry holds its maximum of {} legacy records (--max-legacy-instances)",
                cfg.admission.max_legacy_instances
            ));
        }
        if in_group >= cfg.admission.max_legacy_group_instances {
            return Err(format!(
                "group {group:?} holds its maximum of {} legacy records (--max-legacy-group-instances)",
                cfg.admission.max_legacy_group_instances
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grants_from_uris_and_subjects() {
        let p = Policy::parse(r#"{"identities":[{"subject":"CN=ops","role":"admin"},
            {"subject":"CN=b","role":"service","groups":["billing"]}]}"#).unwrap();
        let g = p.grant(Some("CN=x"), &["sfc://group/orders".into()]);
        assert!(g.may_register("orders") && !g.may_register("billing") && g.may_observe() && !g.is_admin());
        assert!(p.grant(Some("CN=ops"), &[]).is_admin());
        assert!(p.grant(Some("CN=b"), &[]).may_register("billing"));
        let obs = p.grant(Some("CN=o"), &["sfc://observer".into()]);
        assert!(obs.may_observe() && !obs.may_register("orders"));
        let nobody = p.grant(None, &[]);
        assert!(!nobody.may_observe());
        assert!(!p.grant(Some("CN=unknown"), &[]).may_observe());
    }

    #[test]
    fn bad_policies_say_what_is_wrong() {
        let e = Policy::parse(r#"{"identities":[{"subject":"CN=b","role":"service"}]}"#).unwrap_err().to_string();
        assert!(e.contains("CN=b") && e.contains("no groups"), "{e}");
        let e = Policy::parse(r#"{"identities":[{"subject":"CN=b","role":"king"}]}"#).unwrap_err().to_string();
        assert!(e.contains("king"), "{e}");
        let e = Policy::parse(r#"{"identitees":[]}"#).unwrap_err().to_string();
        assert!(e.contains("identitees"), "{e}");
    }
}
