//! What the commands acting on a cluster share: the kubeconfig connection, the namespace, who is
//! asking, and kubectl's ways of showing ages and missing objects.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result, anyhow};
use k8s_openapi::api::authentication::v1::SelfSubjectReview;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::PostParams;
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Api, Client, Config};

/// Flags every cluster command takes, as kubectl spells them.
#[derive(clap::Args, Clone, Debug, Default)]
pub struct ClusterArgs {
    /// Namespace of the rollout; the kubeconfig context's namespace when unset.
    #[arg(short, long)]
    pub namespace: Option<String>,
    /// The kubeconfig context to use; the current context when unset.
    #[arg(long)]
    pub context: Option<String>,
    /// The global `--kubeconfig`, set by the command line before a command connects.
    #[arg(skip)]
    pub kubeconfig: Option<PathBuf>,
}

/// A connection to the cluster and what the commands need to know about the caller.
pub struct Session {
    pub client: Client,
    /// The namespace to act in: `--namespace`, or the context's default.
    pub namespace: String,
    /// The kubeconfig user of the context, for API servers without SelfSubjectReview; None
    /// in-cluster.
    pub user: Option<String>,
    pub now: Timestamp,
}

impl Session {
    /// Connects like kubectl: `--kubeconfig`, else `$KUBECONFIG` or `~/.kube/config` (the
    /// `--context` one or the current context), else the in-cluster service account.
    pub async fn connect(args: &ClusterArgs) -> Result<Self> {
        let (config, user) = client_config(args.kubeconfig.as_deref(), args.context.as_deref()).await?;
        let namespace = args.namespace.clone().unwrap_or_else(|| config.default_namespace.clone());
        let client = Client::try_from(config).context("cannot build a Kubernetes client")?;
        Ok(Self { client, namespace, user, now: Timestamp::now() })
    }

    /// Who the API server says is asking (a SelfSubjectReview, like `kubectl auth whoami`). An
    /// API server without it (before Kubernetes 1.28) leaves the kubeconfig context's user name,
    /// which the admission policy still checks against the authenticated one.
    pub async fn whoami(&self) -> Result<String> {
        let api: Api<SelfSubjectReview> = Api::all(self.client.clone());
        match api.create(&PostParams::default(), &SelfSubjectReview::default()).await {
            Ok(review) => review
                .status
                .and_then(|s| s.user_info)
                .and_then(|u| u.username)
                .filter(|u| !u.is_empty())
                .ok_or_else(|| anyhow!("the API server's SelfSubjectReview names no user")),
            Err(kube::Error::Api(e)) if e.is_not_found() => self.user.clone().ok_or_else(|| {
                anyhow!("cannot tell who you are: the API server has no SelfSubjectReview and the kubeconfig context names no user")
            }),
            Err(e) => Err(e).context("asking the API server who you are (SelfSubjectReview)"),
        }
    }
}

/// The kubeconfig as kubectl reads it: the `--kubeconfig` file alone when given, else the files
/// of `$KUBECONFIG` merged, else `~/.kube/config`.
pub fn read_kubeconfig(path: Option<&Path>) -> Result<Kubeconfig> {
    match path {
        // kube's message already holds its cause.
        Some(path) => Kubeconfig::read_from(path).map_err(|e| anyhow!("--kubeconfig {}: {e}", path.display())),
        None => Ok(Kubeconfig::read()?),
    }
}

/// The client configuration of a command that talks to the API server, and the kubeconfig
/// context's user (None in-cluster): `--kubeconfig` (nothing else then), else `$KUBECONFIG` or
/// `~/.kube/config`, else the in-cluster service account unless a `--context` was asked for.
pub async fn client_config(kubeconfig: Option<&Path>, context: Option<&str>) -> Result<(Config, Option<String>)> {
    let options = KubeConfigOptions { context: context.map(String::from), ..KubeConfigOptions::default() };
    let read = read_kubeconfig(kubeconfig);
    match read {
        Ok(kubeconfig) => {
            let user = context_user(&kubeconfig, context);
            let config =
                Config::from_custom_kubeconfig(kubeconfig, &options).await.context("cannot use the kubeconfig")?;
            Ok((config, user))
        }
        Err(e) if kubeconfig.is_some() => Err(e),
        Err(e) if context.is_some() => Err(e).context("cannot read the kubeconfig for --context"),
        Err(kubeconfig) => {
            let config = Config::incluster().map_err(|in_cluster| {
                anyhow!("no kubeconfig ({kubeconfig}) and not running in a cluster ({in_cluster})")
            })?;
            Ok((config, None))
        }
    }
}

fn context_user(kubeconfig: &Kubeconfig, context: Option<&str>) -> Option<String> {
    let name = context.or(kubeconfig.current_context.as_deref())?;
    let context = kubeconfig.contexts.iter().find(|c| c.name == name)?.context.as_ref()?;
    context.user.clone().filter(|u| !u.is_empty())
}

/// The API server's error for a missing object, in kubectl's words; anything else unchanged.
pub fn not_found(e: kube::Error, resource: &str, name: &str, namespace: &str) -> anyhow::Error {
    match e {
        kube::Error::Api(status) if status.is_not_found() => {
            anyhow!("{resource} \"{name}\" not found in namespace \"{namespace}\"")
        }
        e => e.into(),
    }
}

/// kubectl's AGE: two significant units at most, coarser as the age grows
/// (k8s.io/apimachinery/pkg/util/duration.HumanDuration).
pub fn human_duration(d: SignedDuration) -> String {
    let seconds = d.as_secs();
    if seconds < -1 {
        return "<invalid>".into();
    }
    if seconds < 0 {
        return "0s".into();
    }
    // Two units while the larger one is small, as kubectl shows them: 5m30s, 3h20m, 4d6h, 3y45d.
    let two = |large: i64, large_unit: &str, small: i64, small_unit: &str| match small {
        0 => format!("{large}{large_unit}"),
        _ => format!("{large}{large_unit}{small}{small_unit}"),
    };
    let (minutes, hours) = (seconds / 60, seconds / 3600);
    let (days, years) = (hours / 24, hours / 24 / 365);
    if seconds < 60 * 2 {
        format!("{seconds}s")
    } else if minutes < 10 {
        two(minutes, "m", seconds % 60, "s")
    } else if minutes < 60 * 3 {
        format!("{minutes}m")
    } else if hours < 8 {
        two(hours, "h", minutes % 60, "m")
    } else if hours < 48 {
        format!("{hours}h")
    } else if hours < 24 * 8 {
        two(days, "d", hours % 24, "h")
    } else if hours < 24 * 365 * 2 {
        format!("{days}d")
    } else if hours < 24 * 365 * 8 {
        two(years, "y", days % 365, "d")
    } else {
        format!("{years}y")
    }
}

/// The age of something that happened at `then`.
pub fn age(now: Timestamp, then: Timestamp) -> String {
    human_duration(then.duration_until(now))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ages_read_like_kubectl() {
        let cases = [
            (0, "0s"),
            (119, "119s"),
            (120, "2m"),
            (125, "2m5s"),
            (600, "10m"),
            (179 * 60 + 59, "179m"),
            (3 * 3600 + 60, "3h1m"),
            (8 * 3600, "8h"),
            (47 * 3600, "47h"),
            (48 * 3600 + 3600, "2d1h"),
            (8 * 86400, "8d"),
            (2 * 365 * 86400 + 3 * 86400, "2y3d"),
            (9 * 365 * 86400, "9y"),
        ];
        for (seconds, want) in cases {
            assert_eq!(human_duration(SignedDuration::from_secs(seconds)), want, "{seconds}s");
        }
        assert_eq!(human_duration(SignedDuration::from_secs(-5)), "<invalid>");
    }
}
