//! Strata's kube-scheduler extender (docs/architecture.md, csi-scheduler). The kube layer is thin:
//! - [`cache`]: watches on NodeStorage, LogicalVolume, PVC, StorageClass and Pod, each object
//!   reduced on arrival to the fields placement reads ([`record`]) and fed into
//!   [`index::ViewIndex`], which publishes a new [`view::ClusterView`] snapshot;
//! - [`view`]: the snapshot and a pod's demand (pure);
//! - [`extender`]: filter and prioritize (pure, over `csi_api::capacity` and `placement`);
//! - [`wire`]: the extender v1 JSON types ([`json_out`] writes the answers); [`http`]: the axum routes; [`metrics`]: Prometheus;
//! - [`room`]: each node's room per pool, precomputed for the fit check;
//! - `fixtures`: objects for the unit tests and the benchmarks, `reference`: the previous request
//!   path, the baseline of the equivalence tests and the churn bench (neither used by the binary).

pub mod cache;
pub mod extender;
#[doc(hidden)]
pub mod fixtures;
pub mod http;
pub mod index;
pub mod json_out;
pub mod metrics;
pub mod record;
#[doc(hidden)]
pub mod reference;
pub mod room;
pub mod view;
pub mod wire;

use axum::http::StatusCode;

/// What can go wrong answering a request.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The request cannot be understood; the text says why.
    #[error("{0}")]
    BadRequest(String),
    /// The caches have not been listed yet.
    #[error("the extender's cluster caches are not synced yet")]
    NotReady,
    /// A failure of the extender itself.
    #[error("internal error: {0}")]
    Internal(String),
}

impl Error {
    /// The HTTP status answered for this error.
    pub fn status(&self) -> StatusCode {
        match self {
            Error::BadRequest(_) => StatusCode::BAD_REQUEST,
            Error::NotReady => StatusCode::SERVICE_UNAVAILABLE,
            Error::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}
