//! A kubeconfig pointing at the fake API server over plain HTTP with no credentials, for child
//! processes (csi-agent, csi-controller, csi-scheduler) started with `KUBECONFIG=<file>`.

use std::path::Path;

/// The kubeconfig YAML for `server` (e.g. `http://127.0.0.1:8080`), default namespace `namespace`.
pub fn yaml(server: &str, namespace: &str) -> String {
    format!(
        "apiVersion: v1\n\
         kind: Config\n\
         clusters:\n\
         - name: fake\n  cluster:\n    server: {server}\n\
         users:\n\
         - name: fake\n  user: {{}}\n\
         contexts:\n\
         - name: fake\n  context:\n    cluster: fake\n    user: fake\n    namespace: {namespace}\n\
         current-context: fake\n"
    )
}

/// Writes [`yaml`] to `path`.
pub fn write(path: &Path, server: &str, namespace: &str) -> std::io::Result<()> {
    std::fs::write(path, yaml(server, namespace))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kube_reads_it() {
        let kc =
            kube::config::Kubeconfig::from_yaml(&yaml("http://127.0.0.1:1234", "strata")).unwrap();
        assert_eq!(kc.current_context.as_deref(), Some("fake"));
        let cluster = kc.clusters[0].cluster.as_ref().unwrap();
        assert_eq!(cluster.server.as_deref(), Some("http://127.0.0.1:1234"));
        let ctx = kc.contexts[0].context.as_ref().unwrap();
        assert_eq!(ctx.namespace.as_deref(), Some("strata"));
    }
}
