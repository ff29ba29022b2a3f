//! The gRPC server: Identity + Node (+ Controller in standalone mode) on one endpoint, a unix
//! socket made by `csi_api::runtime::bind_unix` (stale socket removed, mode 0660) or a TCP
//! address. On shutdown the listener closes and in-flight calls finish before [`serve`] returns.

use std::future::Future;

use csi_api::csi::controller_server::ControllerServer;
use csi_api::csi::identity_server::IdentityServer;
use csi_api::csi::node_server::NodeServer;
use csi_api::runtime::{Endpoint, bind_unix};
use tonic::transport::Server;

use super::controller::ControllerService;
use super::node::NodeService;
use csi_api::identity::{IdentityService, Readiness};

/// The services one process serves.
pub struct Services {
    pub identity: IdentityService<Readiness>,
    pub node: NodeService,
    /// Standalone mode only.
    pub controller: Option<ControllerService>,
}

/// Why the server could not run.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("cannot listen on {endpoint:?}: {source}")]
    Listen {
        endpoint: Endpoint,
        source: std::io::Error,
    },
    #[error("invalid TCP address {0:?}")]
    Address(String),
    #[error("gRPC server failed: {0}")]
    Transport(#[from] tonic::transport::Error),
}

/// Serves `services` on `endpoint` until `shutdown` completes, then lets in-flight calls finish.
pub async fn serve(
    endpoint: &Endpoint,
    services: Services,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ServeError> {
    let router = Server::builder()
        .add_service(IdentityServer::new(services.identity))
        .add_optional_service(services.controller.map(ControllerServer::new))
        .add_service(NodeServer::new(services.node));
    match endpoint {
        Endpoint::Unix(path) => {
            let incoming = bind_unix(path).map_err(|source| ServeError::Listen {
                endpoint: endpoint.clone(),
                source,
            })?;
            tracing::info!(socket = %path.display(), "serving CSI");
            router
                .serve_with_incoming_shutdown(incoming, shutdown)
                .await?;
            let _ = std::fs::remove_file(path);
        }
        Endpoint::Tcp(addr) => {
            let addr = tokio::net::lookup_host(addr.as_str())
                .await
                .ok()
                .and_then(|mut a| a.next())
                .ok_or_else(|| ServeError::Address(addr.clone()))?;
            tracing::info!(%addr, "serving CSI");
            router.serve_with_shutdown(addr, shutdown).await?;
        }
    }
    tracing::info!("CSI server stopped");
    Ok(())
}
