//! The Pods every agent watches, of every node: only what identities, the ipcache and endpoints
//! are made of. The watch deserializes them into [`SlimPod`], so serde skips the rest of each
//! object (containers' images, env and probes, volumes, annotations, managed fields) and no agent
//! holds the full spec of any pod.
use std::borrow::Cow;
use std::collections::BTreeMap;

use k8s_openapi::NamespaceResourceScope;
use k8s_openapi::api::core::v1::{ContainerPort, PodIP};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::Resource;
use serde::{Deserialize, Deserializer, Serialize};

/// A Pod as `palisade_policy::cluster::Pod::from_json` reads it.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct SlimPod {
    #[serde(deserialize_with = "slim_metadata")]
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: SlimPodSpec,
    #[serde(default)]
    pub status: SlimPodStatus,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SlimPodSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_account_name: Option<String>,
    /// Host-network pods are the node, not endpoints.
    #[serde(default)]
    pub host_network: bool,
    /// For their ports only (named ports in policies).
    #[serde(default)]
    pub containers: Vec<SlimContainer>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct SlimContainer {
    #[serde(default)]
    pub ports: Vec<ContainerPort>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SlimPodStatus {
    #[serde(default, rename = "podIP", skip_serializing_if = "Option::is_none")]
    pub pod_ip: Option<String>,
    #[serde(default, rename = "podIPs", skip_serializing_if = "Vec::is_empty")]
    pub pod_ips: Vec<PodIP>,
}

/// The metadata fields the agent reads (and the watch's resource version), not annotations or
/// managed fields, which can outweigh the rest of a pod.
fn slim_metadata<'de, D: Deserializer<'de>>(deserializer: D) -> Result<ObjectMeta, D::Error> {
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Slim {
        name: Option<String>,
        namespace: Option<String>,
        labels: Option<BTreeMap<String, String>>,
        resource_version: Option<String>,
    }
    let Slim { name, namespace, labels, resource_version } = Slim::deserialize(deserializer)?;
    Ok(ObjectMeta { name, namespace, labels, resource_version, ..ObjectMeta::default() })
}

impl Resource for SlimPod {
    type DynamicType = ();
    type Scope = NamespaceResourceScope;

    fn kind(_: &()) -> Cow<'_, str> {
        "Pod".into()
    }

    fn group(_: &()) -> Cow<'_, str> {
        "".into()
    }

    fn version(_: &()) -> Cow<'_, str> {
        "v1".into()
    }

    fn plural(_: &()) -> Cow<'_, str> {
        "pods".into()
    }

    fn meta(&self) -> &ObjectMeta {
        &self.metadata
    }

    fn meta_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn a_full_pod_keeps_only_what_identities_and_endpoints_need() {
        let full = json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "api-7d9f8b6c4-x2k9p", "namespace": "shop", "uid": "u-1", "resourceVersion": "42",
                "labels": {"app": "api"}, "annotations": {"kubectl.kubernetes.io/last-applied-configuration": "{}"},
                "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "api-7d9f8b6c4", "uid": "u-0"}],
                "managedFields": [{"manager": "kubelet", "operation": "Update", "fieldsType": "FieldsV1",
                    "fieldsV1": {"f:status": {}}}]},
            "spec": {"nodeName": "n2", "serviceAccountName": "api", "hostNetwork": false,
                "volumes": [{"name": "token", "projected": {"sources": []}}],
                "containers": [{"name": "api", "image": "shop/api:1.2", "env": [{"name": "DB", "value": "db:5432"}],
                    "ports": [{"name": "http", "containerPort": 8080, "protocol": "TCP"}],
                    "readinessProbe": {"httpGet": {"path": "/ready", "port": "http"}},
                    "resources": {"limits": {"memory": "128Mi"}}}]},
            "status": {"phase": "Running", "podIP": "10.200.2.1", "podIPs": [{"ip": "10.200.2.1"}, {"ip": "fd00::2:1"}],
                "conditions": [{"type": "Ready", "status": "True"}],
                "containerStatuses": [{"name": "api", "ready": true, "restartCount": 0, "image": "shop/api:1.2",
                    "imageID": "", "state": {"running": {}}}]}});
        let slim: SlimPod = serde_json::from_value(full).unwrap();
        assert_eq!(
            serde_json::to_value(&slim).unwrap(),
            json!({
                "metadata": {"name": "api-7d9f8b6c4-x2k9p", "namespace": "shop", "resourceVersion": "42",
                    "labels": {"app": "api"}},
                "spec": {"nodeName": "n2", "serviceAccountName": "api", "hostNetwork": false,
                    "containers": [{"ports": [{"name": "http", "containerPort": 8080, "protocol": "TCP"}]}]},
                "status": {"podIP": "10.200.2.1", "podIPs": [{"ip": "10.200.2.1"}, {"ip": "fd00::2:1"}]}})
        );
        let pod = palisade_policy::cluster::Pod::from_json(&serde_json::to_value(&slim).unwrap()).unwrap();
        assert_eq!(pod.ips, ["10.200.2.1".parse::<std::net::IpAddr>().unwrap(), "fd00::2:1".parse().unwrap()]);
        assert_eq!((pod.node_name.as_deref(), pod.service_account.as_str()), (Some("n2"), "api"));
        assert_eq!(pod.ports.len(), 1);
    }
}
