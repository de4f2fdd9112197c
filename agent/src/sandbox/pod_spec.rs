//! What a container's spec must become to run in its pod's VM, before libcontainer
//! builds it: the pod's namespaces it joins checked, its `net.*` sysctls applied to the
//! guest's network namespace (the pod's), and a privileged container given the guest's
//! devices.

use std::path::Path;

use oci_spec::runtime::Spec;

use super::setup::{self, Target};
use super::{lock, Result, Sandbox};
use crate::container;
use tracing::info;

impl Sandbox {
    /// Checks and adjusts container `id`'s spec for the pod (see the module's comment).
    pub(super) fn fit_to_pod(&self, id: &str, spec: &mut Spec) -> Result<()> {
        // Only a running container of this pod can lend its pid/ipc/uts namespace.
        let running: Vec<i32> = lock(&self.containers)
            .values()
            .filter(|e| e.init.exit.get().is_none())
            .map(|e| e.init.pid)
            .collect();
        container::check_joined_namespaces(spec, &running).map_err(container::Error::from)?;
        container::normalize_rootfs_propagation(spec).map_err(container::Error::from)?;
        // The guest's network namespace is the pod's, where the spec's net.* sysctls
        // belong (see `setup::take_net_sysctls`).
        let net_sysctls = setup::take_net_sysctls(spec);
        setup::set_sysctls(&self.target, net_sysctls.iter())?;
        // A privileged container gets the guest's devices (never the host's: on the host,
        // `husk-agent serve` adds none).
        if matches!(self.target, Target::Guest) {
            let n = container::guest_devices::add_guest_devices(spec, Path::new("/dev"));
            if n > 0 {
                info!("Container {id} is privileged: {n} guest devices added");
            }
        }
        Ok(())
    }
}
