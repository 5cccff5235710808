//! `sfc agent --config agent.toml`: the agent's settings for one or several services.
//!
//! ```toml
//! # Optional; the flags and SFC_* variables apply where the file says nothing.
//! registry = ["127.0.0.1:7480"]
//! ca = "/etc/sfc/ca.pem"
//! interval = "1s"
//! kill_timeout = "5s"
//!
//! [[service]]
//! group = "shop"
//! service = "web"
//! instance_id = "web-1"
//! endpoints = ["http=http://127.0.0.1:8000"]
//! tags = ["python"]
//! checks = ["http://127.0.0.1:8000/health interval=2s timeout=1s"]
//! command = ["python3", "-m", "http.server", "8000"]   # or: pid = 1234
//! [service.commands]
//! rotate-logs = ["/usr/local/bin/rotate-web-logs"]
//! ```

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use serde::Deserialize;

use sfc_client::error::{Error, Result};

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub registry: Option<Vec<String>>,
    pub ca: Option<String>,
    pub cert: Option<String>,
    pub key: Option<String>,
    pub insecure_plaintext: Option<bool>,
    pub interval: Option<String>,
    pub kill_timeout: Option<String>,
    #[serde(default, rename = "service")]
    pub services: Vec<FileService>,
}

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
pub struct FileService {
    pub group: Option<String>,
    pub service: Option<String>,
    pub instance_id: Option<String>,
    #[serde(default)]
    pub endpoints: Vec<String>,
    #[serde(default)]
    pub tags: Vec<String>,
    #[serde(default)]
    pub checks: Vec<String>,
    pub command: Option<Vec<String>>,
    pub pid: Option<u32>,
    #[serde(default)]
    pub commands: BTreeMap<String, Vec<String>>,
    pub kill_timeout: Option<String>,
}

impl FileConfig {
    pub fn read(path: &Path) -> Result<FileConfig> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::read_file(path, e))?;
        let c: FileConfig = toml::from_str(&text)
            .map_err(|e| Error::invalid(format!("config {}", path.display()), e.to_string()))?;
        if c.services.is_empty() {
            return Err(Error::invalid(
                format!("config {}", path.display()),
                "no [[service]] table: nothing to run",
            ));
        }
        Ok(c)
    }
}

/// A duration setting of the file, named in the error.
pub fn duration(what: &str, v: &Option<String>) -> Result<Option<Duration>> {
    v.as_deref().map(|s| sfc_client::duration::parse(what, s)).transpose()
}
