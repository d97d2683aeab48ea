//! tandem's configuration: DRBD's syntax, validated in two stages.
//!
//! 1. [`syntax`] reads the text (and its includes) into a raw tree of items, keeping every
//!    word's `file:line:column` (it lives in `target::conf` so that `targetd` reads the same
//!    file the same way).
//! 2. [`validate`] checks keywords, values and ranges, merges `common` into each resource and
//!    produces the typed [`Config`]; options DRBD knows but tandem does not implement yet become
//!    [`Warning`]s, everything else wrong is a [`ConfigError`] naming where.
//!
//! [`Config::node_view`] then picks this node's `on` section (`--node`).

pub mod dump;
pub mod model;
pub mod units;
pub mod validate;

use std::path::Path;

pub use model::*;
/// The lexer and raw tree, shared with `targetd` (they live in the `target` crate).
pub use target::conf::syntax;
pub use target::conf::{ConfigError, Span, DEFAULT_CONFIG_PATH};

impl Config {
    /// Reads, parses and validates the config file at `path` (with its includes).
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let items = syntax::parse_file(path)?;
        validate::validate(&items)
    }

    /// Parses and validates config text; `name` is used in error positions and relative
    /// includes are resolved against the current directory.
    pub fn parse_str(text: &str, name: &str) -> Result<Config, ConfigError> {
        let items = syntax::parse_text(text, name.into(), Path::new("."), 0)?;
        validate::validate(&items)
    }

    /// The resource called `name`.
    pub fn resource(&self, name: &str) -> Result<&Resource, ConfigError> {
        self.resources
            .iter()
            .find(|r| r.name == name)
            .ok_or_else(|| {
                let known: Vec<&str> = self.resources.iter().map(|r| r.name.as_str()).collect();
                ConfigError::Invalid(if known.is_empty() {
                    format!("no resource '{name}': the config defines no resources")
                } else {
                    format!(
                        "no resource '{name}' in the config (it has: {})",
                        known.join(", ")
                    )
                })
            })
    }

    /// Resource `name` as seen from node `node`: fails with `file:line:column` when the
    /// resource has no `on NODE` section.
    pub fn node_view(&self, name: &str, node: &str) -> Result<NodeView<'_>, ConfigError> {
        let resource = self.resource(name)?;
        let local = resource.host(node).ok_or_else(|| {
            let hosts: Vec<&str> = resource.hosts.iter().map(|h| h.name.as_str()).collect();
            ConfigError::syntax(
                &resource.span,
                format!(
                    "resource {name} has no 'on {node}' section for this node (it has: {}); \
                     pass --node NAME to choose one",
                    hosts.join(", ")
                ),
            )
        })?;
        Ok(NodeView { resource, local })
    }
}

#[cfg(test)]
mod tests;
