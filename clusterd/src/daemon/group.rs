//! A resource's group as the daemon runs it: what runs on the Primary after promotion, in
//! order, and is stopped in reverse order before demotion. replicatord starts the exports (NBD,
//! iSCSI) itself on promotion and stops them on demotion; the group adds the OCF agents, in
//! configuration order, then the floating IPs last, so clients are sent to the node only once
//! everything behind the address runs.

use std::collections::BTreeMap;
use std::time::Duration;

use replicator::config::ClusterResource;

use crate::group::{self as members, Members, OcfMember};
use crate::ocf::{OcfResource, Runner};
use crate::vip::Vip;

/// Starts, stops and monitors resources' groups (blocking; clusterd calls it from its worker
/// thread).
pub trait Group: Send {
    /// Starts every member in order; on a failure, stops those already started and says which
    /// failed.
    fn start(&mut self, resource: &ClusterResource) -> Result<(), String>;
    /// Stops every member in reverse order.
    fn stop(&mut self, resource: &ClusterResource) -> Result<(), String>;
    /// Checks every member of a started group; the failed ones, with why.
    fn monitor(&mut self, resource: &ClusterResource) -> Result<(), String>;
}

/// The groups of the configuration: OCF agents through [`crate::ocf`], floating IPs through
/// [`crate::vip`].
pub struct Configured {
    groups: BTreeMap<String, Members>,
}

/// `OCF_RESOURCE_INSTANCE` of the `n`th agent of `resource` (`r0-Filesystem`, then
/// `r0-Filesystem-2` for a second of the same type).
fn instance(resource: &str, spec: &str, seen: &mut BTreeMap<String, usize>) -> String {
    let kind = spec.rsplit(':').next().unwrap_or(spec);
    let n = seen.entry(kind.to_string()).or_insert(0);
    *n += 1;
    if *n == 1 {
        format!("{resource}-{kind}")
    } else {
        format!("{resource}-{kind}-{n}")
    }
}

impl Configured {
    /// Builds every resource's members; an OCF agent spec that does not parse is an error
    /// naming it.
    pub fn new(resources: &[ClusterResource], runner: Runner) -> Result<Configured, String> {
        let mut groups = BTreeMap::new();
        for r in resources {
            let mut list: Members = Vec::new();
            let mut seen = BTreeMap::new();
            for (spec, params) in &r.ocf {
                let inst = instance(&r.name, spec, &mut seen);
                let resource = OcfResource::new(&inst, spec, params)
                    .map_err(|e| format!("resource {}: ocf {spec}: {e}", r.name))?;
                list.push(Box::new(OcfMember {
                    runner: runner.clone(),
                    resource,
                    start_timeout: Duration::from_millis(r.ops.start_timeout_ms),
                    stop_timeout: Duration::from_millis(r.ops.stop_timeout_ms),
                    monitor_timeout: Duration::from_millis(r.ops.monitor_timeout_ms),
                }));
            }
            for &(addr, prefix) in &r.vips {
                list.push(Box::new(Vip {
                    addr,
                    prefix,
                    interface: None,
                }));
            }
            groups.insert(r.name.clone(), list);
        }
        Ok(Configured { groups })
    }

    fn members(&mut self, r: &ClusterResource) -> &mut Members {
        self.groups.entry(r.name.clone()).or_default()
    }
}

impl Group for Configured {
    fn start(&mut self, r: &ClusterResource) -> Result<(), String> {
        members::start(self.members(r)).map_err(|e| e.to_string())
    }

    fn stop(&mut self, r: &ClusterResource) -> Result<(), String> {
        members::stop(self.members(r)).map_err(|e| e.to_string())
    }

    fn monitor(&mut self, r: &ClusterResource) -> Result<(), String> {
        let bad = members::monitor(self.members(r));
        if bad.is_empty() {
            return Ok(());
        }
        Err(bad
            .into_iter()
            .map(|(name, e)| match e {
                Some(e) => format!("{name}: {e}"),
                None => format!("{name}: not running"),
            })
            .collect::<Vec<_>>()
            .join("; "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use replicator::config::OcfOps;

    #[test]
    fn instance_names_are_unique_per_resource() {
        let mut seen = BTreeMap::new();
        assert_eq!(
            instance("r0", "heartbeat:Filesystem", &mut seen),
            "r0-Filesystem"
        );
        assert_eq!(instance("r0", "ocf:heartbeat:Dummy", &mut seen), "r0-Dummy");
        assert_eq!(
            instance("r0", "heartbeat:Filesystem", &mut seen),
            "r0-Filesystem-2"
        );
    }

    #[test]
    fn a_bad_agent_spec_is_named() {
        let r = ClusterResource {
            name: "r0".into(),
            export_nbd: true,
            export_iscsi: false,
            ocf: vec![("no/such:thing:at:all".into(), vec![])],
            vips: vec![],
            migration_threshold: 3,
            ops: OcfOps::DEFAULT,
        };
        let err = Configured::new(&[r], Runner::default()).err().unwrap();
        assert!(
            err.contains("resource r0: ocf no/such:thing:at:all"),
            "{err}"
        );
    }
}
