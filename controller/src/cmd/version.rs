//! `palisade version`: this client's version and the controller's, read from the image tag of
//! its Deployment like `kubectl version` reads the server's. A cluster that cannot be reached,
//! or has no controller, is said on one line and is no error: the client's version still stands.
use std::io::Write;
use std::path::Path;
use std::time::Duration;

use anyhow::Result;
use clap::ValueEnum;
use k8s_openapi::api::apps::v1::Deployment;
use kube::{Api, Client};
use serde_json::json;

use super::cluster::client_config;

/// Where `kubectl apply -k manifests/` installs the controller.
pub const CONTROLLER_NAMESPACE: &str = "palisade-system";
pub const CONTROLLER_DEPLOYMENT: &str = "palisade-controller";
/// The controller's container in its Deployment.
const CONTROLLER_CONTAINER: &str = "controller";
/// How long to wait for the API server, as kubectl would for a version.
const TIMEOUT: Duration = Duration::from_secs(10);

#[derive(clap::Args)]
pub struct Args {
    /// Only this client's version; the cluster is not asked.
    #[arg(long)]
    client: bool,
    /// The namespace the controller's Deployment is in.
    #[arg(long, value_name = "NAMESPACE", default_value = CONTROLLER_NAMESPACE)]
    controller_namespace: String,
    /// The kubeconfig context to use; the current context when unset.
    #[arg(long)]
    context: Option<String>,
    #[arg(short, long, value_enum)]
    output: Option<Format>,
}

#[derive(Clone, Copy, ValueEnum)]
enum Format {
    Json,
    Yaml,
}

/// What is known of the controller.
enum Controller {
    Running { version: String, image: String, ready: i32, replicas: i32 },
    NotInstalled(String),
    Unavailable(String),
}

pub fn run(args: Args, kubeconfig: Option<&Path>, out: &mut impl Write) -> Result<u8> {
    let client_version = env!("CARGO_PKG_VERSION");
    let controller = if args.client {
        None
    } else {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        Some(runtime.block_on(controller(kubeconfig, args.context.as_deref(), &args.controller_namespace)))
    };
    match args.output {
        None => {
            writeln!(out, "Client Version: {client_version}")?;
            match controller {
                None => {}
                Some(Controller::Running { version, image, ready, replicas }) => {
                    writeln!(out, "Controller Version: {version} ({image}, {ready}/{replicas} ready)")?
                }
                Some(Controller::NotInstalled(why)) => writeln!(out, "Controller Version: not installed: {why}")?,
                Some(Controller::Unavailable(why)) => writeln!(out, "Controller Version: unavailable: {why}")?,
            }
        }
        Some(format) => {
            let mut value = json!({"clientVersion": client_version});
            match controller {
                None => {}
                Some(Controller::Running { version, image, ready, replicas }) => {
                    value["controllerVersion"] = json!(version);
                    value["controllerImage"] = json!(image);
                    value["controllerReplicas"] = json!({"ready": ready, "desired": replicas});
                }
                Some(Controller::NotInstalled(why) | Controller::Unavailable(why)) => {
                    value["controllerError"] = json!(why);
                }
            }
            match format {
                Format::Json => writeln!(out, "{}", serde_json::to_string_pretty(&value)?)?,
                Format::Yaml => write!(out, "{}", palisade_policy::yaml::to_yaml(&value))?,
            }
        }
    }
    Ok(0)
}

async fn controller(kubeconfig: Option<&Path>, context: Option<&str>, namespace: &str) -> Controller {
    let (config, _) = match client_config(kubeconfig, context).await {
        Ok(config) => config,
        Err(e) => return Controller::Unavailable(format!("{e:#}")),
    };
    let url = config.cluster_url.to_string();
    let client = match Client::try_from(config) {
        Ok(client) => client,
        Err(e) => return Controller::Unavailable(format!("cannot build a Kubernetes client: {e}")),
    };
    let api: Api<Deployment> = Api::namespaced(client, namespace);
    let deployment = match tokio::time::timeout(TIMEOUT, api.get_opt(CONTROLLER_DEPLOYMENT)).await {
        Err(_) => return Controller::Unavailable(format!("no answer from the API server at {url} in {TIMEOUT:?}")),
        Ok(Err(kube::Error::Api(status))) => return Controller::Unavailable(status.message.clone()),
        Ok(Err(e)) => {
            return Controller::Unavailable(format!("cannot reach the API server at {url}: {}", root_cause(&e)));
        }
        Ok(Ok(None)) => {
            return Controller::NotInstalled(format!(
                "no deployment {CONTROLLER_DEPLOYMENT} in namespace {namespace} (kubectl apply -k manifests/)"
            ));
        }
        Ok(Ok(Some(deployment))) => deployment,
    };
    let containers = deployment.spec.template.spec.as_ref().map_or(&[][..], |s| s.containers.as_slice());
    let container = containers.iter().find(|c| c.name == CONTROLLER_CONTAINER).or_else(|| containers.first());
    let Some(image) = container.and_then(|c| c.image.clone()) else {
        return Controller::Unavailable(format!(
            "deployment {CONTROLLER_DEPLOYMENT} in namespace {namespace} names no image"
        ));
    };
    let status = deployment.status.unwrap_or_default();
    let replicas = deployment.spec.replicas.unwrap_or(1);
    Controller::Running { version: image_version(&image), image, ready: status.ready_replicas.unwrap_or(0), replicas }
}

/// The version an image reference names: its tag, else its digest, else `latest`.
fn image_version(image: &str) -> String {
    let (name, digest) = image.split_once('@').map_or((image, None), |(name, digest)| (name, Some(digest)));
    // A colon after the last slash is the tag's; before it, a registry's port.
    let last = name.rsplit('/').next().unwrap_or(name);
    match (last.split_once(':'), digest) {
        (Some((_, tag)), _) => tag.to_string(),
        (None, Some(digest)) => digest.to_string(),
        (None, None) => "latest".to_string(),
    }
}

/// The innermost reason (`Connection refused (os error 111)`), under the client's wrapping.
fn root_cause(error: &(dyn std::error::Error + 'static)) -> String {
    let mut cause = error;
    while let Some(source) = cause.source() {
        cause = source;
    }
    cause.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_of_image_references() {
        assert_eq!(image_version("palisade:0.1.0"), "0.1.0");
        assert_eq!(image_version("registry.example.com:5000/team/palisade:0.2.1"), "0.2.1");
        assert_eq!(image_version("registry.example.com:5000/palisade"), "latest");
        assert_eq!(image_version("palisade@sha256:abcd"), "sha256:abcd");
        assert_eq!(image_version("palisade:0.1.0@sha256:abcd"), "0.1.0");
    }
}
