//! Consumer groups as an administrator configures them (RocketMQ's subscription group
//! config): whether the group consumes orderly (FIFO), and how many times a message is
//! retried before it is dead-lettered. Kept in one JSON file, rewritten whole on change
//! (temporary file, fsync, rename).

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Longest consumer group name (RocketMQ's limit).
pub const NAME_MAX: usize = 255;

/// RocketMQ's rule for group names: `%`, `|`, letters, digits, `_` and `-`.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= NAME_MAX
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'%' | b'|' | b'_' | b'-'))
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupConfig {
    /// Messages of one message group are delivered in order, one at a time.
    pub fifo: bool,
    /// Retries before a message goes to the dead-letter topic; the server's default
    /// when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_max_times: Option<u32>,
}

#[derive(Debug)]
pub struct Groups {
    path: PathBuf,
    configs: BTreeMap<String, GroupConfig>,
}

impl Groups {
    /// Reads `dir/groups.json` (none yet: no configured groups). Blocking.
    pub fn open(dir: &Path) -> std::io::Result<Groups> {
        let path = dir.join("groups.json");
        let configs = match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| {
                std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!("{}: {e}", path.display()),
                )
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => BTreeMap::new(),
            Err(e) => return Err(e),
        };
        Ok(Groups { path, configs })
    }

    pub fn get(&self, name: &str) -> GroupConfig {
        self.configs.get(name).copied().unwrap_or_default()
    }

    /// Sets a group's config and stores it durably. Blocking.
    pub fn set(&mut self, name: &str, config: GroupConfig) -> std::io::Result<()> {
        let before = self.configs.insert(name.to_string(), config);
        if let Err(e) = self.save() {
            match before {
                Some(b) => self.configs.insert(name.to_string(), b),
                None => self.configs.remove(name),
            };
            return Err(e);
        }
        Ok(())
    }

    fn save(&self) -> std::io::Result<()> {
        let tmp = self.path.with_extension("tmp");
        let bytes = serde_json::to_vec_pretty(&self.configs).map_err(std::io::Error::other)?;
        {
            let mut file = std::fs::File::create(&tmp)?;
            file.write_all(&bytes)?;
            file.sync_all()?;
        }
        std::fs::rename(&tmp, &self.path)?;
        if let Some(dir) = self.path.parent() {
            std::fs::File::open(dir)?.sync_all()?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn configs_survive_a_reopen_and_unknown_groups_get_the_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let mut groups = Groups::open(dir.path()).unwrap();
        assert_eq!(groups.get("g"), GroupConfig::default());
        let fifo = GroupConfig {
            fifo: true,
            retry_max_times: Some(2),
        };
        groups.set("g", fifo).unwrap();
        assert_eq!(Groups::open(dir.path()).unwrap().get("g"), fifo);
        assert!(valid_name("GID_order-1") && valid_name("%DLQ%g"));
        assert!(!valid_name("") && !valid_name("a b") && !valid_name(&"g".repeat(256)));
    }
}
