//! The one CSI Identity service of the agent and the controller: plugin name and version,
//! capabilities (the Controller service only where the process serves it: the controller, the
//! standalone agent), and Probe, which asks a [`Probe`] of the process: the agent's
//! [`Readiness`] (not ready until its first discovery and LVM pass), the controller's API check.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tonic::{Request, Response, Status};

use crate::csi::plugin_capability::service::Type as ServiceType;
use crate::csi::plugin_capability::volume_expansion::Type as ExpansionType;
use crate::csi::plugin_capability::{Service, Type as CapType, VolumeExpansion};
use crate::csi::{self, PluginCapability};
use crate::names;

/// What the Probe RPC answers: whether the process can serve volumes now.
pub trait Probe: Send + Sync + 'static {
    fn ready(&self) -> impl Future<Output = bool> + Send;
}

/// A readiness flag set once by whatever brings the process up; shared (cheap to clone).
#[derive(Clone, Debug, Default)]
pub struct Readiness(Arc<AtomicBool>);

impl Readiness {
    pub fn set_ready(&self) {
        self.0.store(true, Ordering::Release);
    }

    pub fn is_ready(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }
}

impl Probe for Readiness {
    async fn ready(&self) -> bool {
        self.is_ready()
    }
}

/// The Identity service.
#[derive(Clone, Debug)]
pub struct IdentityService<P> {
    controller: bool,
    probe: P,
}

impl<P: Probe> IdentityService<P> {
    /// `controller`: whether this process also serves the Controller service.
    pub fn new(controller: bool, probe: P) -> Self {
        IdentityService { controller, probe }
    }

    /// The capabilities advertised by GetPluginCapabilities.
    pub fn capabilities(&self) -> Vec<PluginCapability> {
        let service = |t: ServiceType| PluginCapability {
            r#type: Some(CapType::Service(Service { r#type: t as i32 })),
        };
        let mut caps = Vec::new();
        if self.controller {
            caps.push(service(ServiceType::ControllerService));
        }
        caps.push(service(ServiceType::VolumeAccessibilityConstraints));
        caps.push(PluginCapability {
            r#type: Some(CapType::VolumeExpansion(VolumeExpansion {
                r#type: ExpansionType::Online as i32,
            })),
        });
        caps
    }
}

#[tonic::async_trait]
impl<P: Probe> csi::identity_server::Identity for IdentityService<P> {
    async fn get_plugin_info(
        &self,
        _request: Request<csi::GetPluginInfoRequest>,
    ) -> Result<Response<csi::GetPluginInfoResponse>, Status> {
        Ok(Response::new(csi::GetPluginInfoResponse {
            name: names::DRIVER_NAME.to_owned(),
            vendor_version: env!("CARGO_PKG_VERSION").to_owned(),
            manifest: Default::default(),
        }))
    }

    async fn get_plugin_capabilities(
        &self,
        _request: Request<csi::GetPluginCapabilitiesRequest>,
    ) -> Result<Response<csi::GetPluginCapabilitiesResponse>, Status> {
        Ok(Response::new(csi::GetPluginCapabilitiesResponse {
            capabilities: self.capabilities(),
        }))
    }

    async fn probe(
        &self,
        _request: Request<csi::ProbeRequest>,
    ) -> Result<Response<csi::ProbeResponse>, Status> {
        Ok(Response::new(csi::ProbeResponse {
            ready: Some(self.probe.ready().await),
        }))
    }
}

#[cfg(test)]
mod tests {
    use csi::identity_server::Identity;

    use super::*;

    #[tokio::test]
    async fn controller_capability_only_in_standalone_mode() {
        let standalone = IdentityService::new(true, Readiness::default()).capabilities();
        let node_only = IdentityService::new(false, Readiness::default()).capabilities();
        let controller = PluginCapability {
            r#type: Some(CapType::Service(Service {
                r#type: ServiceType::ControllerService as i32,
            })),
        };
        assert!(standalone.contains(&controller));
        assert!(!node_only.contains(&controller));
        assert_eq!(standalone.len(), 3);
        assert_eq!(node_only.len(), 2);
    }

    #[tokio::test]
    async fn probe_follows_readiness_and_info_names_the_driver() {
        let ready = Readiness::default();
        let svc = IdentityService::new(true, ready.clone());
        let probe = || async {
            svc.probe(Request::new(csi::ProbeRequest {}))
                .await
                .unwrap()
                .into_inner()
                .ready
        };
        assert_eq!(probe().await, Some(false));
        ready.set_ready();
        assert_eq!(probe().await, Some(true));
        let info = svc
            .get_plugin_info(Request::new(csi::GetPluginInfoRequest {}))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(info.name, "local.strata.io");
        assert_eq!(info.vendor_version, env!("CARGO_PKG_VERSION"));
    }
}
