//! A resource's group: what runs on the Primary after promotion, in order, and is stopped in
//! reverse order before demotion. replicatord starts the exports (NBD, iSCSI) itself on
//! promotion and stops them on demotion; the group adds the floating IPs and the OCF agents.

use replicator::config::ClusterResource;

/// Starts and stops a resource's group (blocking; clusterd calls it from its worker thread).
pub trait Group: Send {
    /// Starts every member in order; on a failure, stops those already started and says which
    /// failed.
    fn start(&mut self, resource: &ClusterResource) -> Result<(), String>;
    /// Stops every member in reverse order; every member is tried, the first failure returned.
    fn stop(&mut self, resource: &ClusterResource) -> Result<(), String>;
}

/// The group as far as clusterd implements it so far: the exports are replicatord's; VIPs and
/// OCF agents are logged and skipped until their drivers are wired in.
#[derive(Debug, Default)]
pub struct ExportsOnly;

impl Group for ExportsOnly {
    fn start(&mut self, r: &ClusterResource) -> Result<(), String> {
        for (ip, prefix) in &r.vips {
            tracing::warn!(resource = %r.name, "vip {ip}/{prefix}: floating IPs are not implemented yet; skipped");
        }
        for (agent, _) in &r.ocf {
            tracing::warn!(resource = %r.name, "ocf {agent}: OCF agents are not implemented yet; skipped");
        }
        Ok(())
    }

    fn stop(&mut self, _r: &ClusterResource) -> Result<(), String> {
        Ok(())
    }
}
