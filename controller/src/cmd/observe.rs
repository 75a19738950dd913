//! `palisade observe`: the flows an agent's datapath reports (drops, audits, shadow
//! differences), Hubble-style, from local mode's `<state>/observe.sock` or an agent's `/flows`.
//! An agent serves them to a bearer token it reviews with the API server: the kubeconfig user's,
//! sent to the agent directly (the API server's pod proxy would not pass it on).
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use http_body_util::{BodyExt, Empty};
use hyper::body::{Bytes, Incoming};
use hyper::header;
use hyper::{Request, Response, StatusCode};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use k8s_openapi::jiff::Timestamp;
use k8s_openapi::jiff::tz::TimeZone;
use kube::config::Kubeconfig;
use palisade_agent::observe::{
    DecidedBy, FlowFilter, FlowType, FlowVerdict, FlowsQuery, L7Flow, ObserveLine, ObservedFlow, VerdictFilter,
};
use palisade_netsim::DEFAULT_STATE_DIR;
use secrecy::ExposeSecret;

use super::Output;

#[derive(clap::Args)]
#[command(group = clap::ArgGroup::new("from").required(true).args(["local", "agent"]))]
pub struct Args {
    /// Flows with either end in this namespace.
    #[arg(long, short = 'n')]
    namespace: Option<String>,
    /// Flows with either end a pod whose name starts with this (`api` or `shop/api`).
    #[arg(long)]
    pod: Option<String>,
    /// Only drops, audit-mode would-be drops, or flows the candidate judges differently.
    #[arg(long, value_parser = clap::builder::PossibleValuesParser::new(["dropped", "audit", "diff"]))]
    verdict: Option<String>,
    /// Only requests the node's L7 proxy judged (`l7`: HTTP requests, DNS queries), or only the
    /// flows the datapath reported (`l4`).
    #[arg(long = "type", value_name = "TYPE", value_parser = clap::builder::PossibleValuesParser::new(["l7", "l4"]))]
    flow_type: Option<String>,
    #[arg(short, long, value_enum, default_value_t)]
    output: Output,
    /// Observe `palisade local run` (its socket in the state directory).
    #[arg(long)]
    local: bool,
    #[arg(long, value_name = "DIR", default_value = DEFAULT_STATE_DIR, requires = "local")]
    state: PathBuf,
    /// Observe a node agent: its metrics address, `http://NODE:9964`. It serves the flows to the
    /// kubeconfig's current user when that user may get PolicyAuditReports in the namespace
    /// (`-n`), or cluster-wide for every flow.
    #[arg(long, value_name = "URL")]
    agent: Option<String>,
    /// The bearer token to send to the agent, from this file, instead of the kubeconfig user's
    /// (for users who authenticate with a client certificate or an exec plugin).
    #[arg(long, value_name = "PATH", requires = "agent")]
    token_file: Option<PathBuf>,
    /// First show up to N of the flows the agent remembers.
    #[arg(long, value_name = "N")]
    last: Option<usize>,
    /// First show the remembered flows since then: `5m`, `30s`, `1h` ago, or an RFC 3339 time.
    #[arg(long, value_name = "TIME")]
    since: Option<String>,
}

pub fn run(args: Args, kubeconfig: Option<&Path>) -> Result<u8> {
    let since = args.since.as_deref().map(parse_since).transpose()?;
    let verdict = args.verdict.as_deref().map(str::parse::<VerdictFilter>).transpose().map_err(anyhow::Error::msg)?;
    let flow_type = args.flow_type.as_deref().map(str::parse::<FlowType>).transpose().map_err(anyhow::Error::msg)?;
    let query = FlowsQuery {
        filter: FlowFilter { namespace: args.namespace.clone(), pod: args.pod.clone(), verdict, flow_type, since },
        last: args.last,
        follow: true,
    };
    let timezone = TimeZone::system();
    let path_and_query = format!("/flows?{}", query.to_query());
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(async {
        let mut body = match &args.agent {
            Some(url) => {
                let authority = url.strip_prefix("http://").unwrap_or(url);
                if url.starts_with("https://") {
                    bail!("--agent {url}: the agent serves plain HTTP");
                }
                let host = authority.split('/').next().unwrap_or_default();
                let host = if host.contains(':') { host.to_owned() } else { format!("{host}:9964") };
                let uri = format!("http://{host}{path_and_query}");
                let token = agent_token(args.token_file.as_deref(), kubeconfig)?;
                let mut request = request(&uri)?;
                let bearer = header::HeaderValue::from_str(&format!("Bearer {token}"))
                    .context("the token is not fit for an HTTP header")?;
                request.headers_mut().insert(header::AUTHORIZATION, bearer);
                let client = Client::builder(TokioExecutor::new()).build_http();
                let response = client.request(request).await.map_err(|e| {
                    if e.is_connect() {
                        anyhow::Error::new(io_error(&e)).context(format!("connect to the agent at {host}"))
                    } else {
                        anyhow::Error::new(e).context("read the response")
                    }
                })?;
                body_of(response).await?
            }
            None => {
                let path = args.state.join("observe.sock");
                let stream = tokio::net::UnixStream::connect(&path)
                    .await
                    .with_context(|| format!("connect to {} (is `palisade local run` running?)", path.display()))?;
                let (mut sender, connection) =
                    hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.context("read the response")?;
                tokio::spawn(connection);
                let mut request = request(&path_and_query)?;
                request.headers_mut().insert(header::HOST, header::HeaderValue::from_static("localhost"));
                body_of(sender.send_request(request).await.context("read the response")?).await?
            }
        };
        let mut pending = Vec::new();
        loop {
            let frame = body.frame().await.transpose().context("read the flow stream")?;
            let Some(data) = frame.map(|f| f.into_data()) else { break };
            let Ok(data) = data else { continue };
            pending.extend_from_slice(&data);
            while let Some(end) = pending.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = pending.drain(..=end).collect();
                let text = std::str::from_utf8(&line[..end]).context("read the flow stream")?;
                if !show(text.strip_suffix('\r').unwrap_or(text), args.output, &timezone) {
                    // The reader went away (`| head`).
                    return Ok(0);
                }
            }
        }
        if !pending.is_empty() {
            let text = std::str::from_utf8(&pending).context("read the flow stream")?;
            if !show(text, args.output, &timezone) {
                return Ok(0);
            }
        }
        eprintln!("the agent stopped");
        Ok(0)
    })
}

fn request(uri: &str) -> Result<Request<Empty<Bytes>>> {
    Ok(Request::get(uri).header(header::ACCEPT, "application/x-ndjson").body(Empty::new())?)
}

/// The body of a 200, or the status and body as the error.
async fn body_of(response: Response<Incoming>) -> Result<Incoming> {
    let code = response.status();
    let status = format!("{:?} {code}", response.version());
    if !code.is_success() {
        let body = response.into_body().collect().await.context("read the response")?.to_bytes();
        let body = String::from_utf8_lossy(&body).trim().to_owned();
        match code {
            StatusCode::UNAUTHORIZED => bail!(
                "the agent did not accept the token ({status}): {body}\nPass a token it can review with --token-file \
                 PATH (e.g. from `kubectl create token`)."
            ),
            StatusCode::FORBIDDEN => bail!("the agent refused the flows asked for ({status}): {body}"),
            _ => bail!("{status}: {body}"),
        }
    }
    Ok(response.into_body())
}

/// The bearer token the agent reviews: `--token-file`'s, else the kubeconfig's current user's
/// (of `--kubeconfig` when given).
fn agent_token(token_file: Option<&Path>, kubeconfig: Option<&Path>) -> Result<String> {
    if let Some(path) = token_file {
        return read_token(path, "--token-file");
    }
    let config = super::cluster::read_kubeconfig(kubeconfig)
        .context("read the kubeconfig for a token to send to the agent (or pass one with --token-file PATH)")?;
    kubeconfig_token(&config)
}

/// The current context's user's `token`, or the content of its `tokenFile`.
fn kubeconfig_token(config: &Kubeconfig) -> Result<String> {
    let context = config
        .current_context
        .as_deref()
        .context("the kubeconfig has no current context to take a token from; pass one with --token-file PATH")?;
    let user = config
        .contexts
        .iter()
        .find(|c| c.name == context)
        .and_then(|c| c.context.as_ref()?.user.clone())
        .with_context(|| {
            format!("the kubeconfig's context {context:?} names no user; pass a token with --token-file PATH")
        })?;
    let auth = config.auth_infos.iter().find(|a| a.name == user).and_then(|a| a.auth_info.as_ref());
    let Some(auth) = auth else {
        bail!("the kubeconfig has no user {user:?} (of context {context:?}); pass a token with --token-file PATH");
    };
    if let Some(token) = &auth.token {
        return Ok(token.expose_secret().trim().to_owned());
    }
    if let Some(path) = &auth.token_file {
        return read_token(Path::new(path), &format!("the tokenFile of kubeconfig user {user:?}"));
    }
    let how = if auth.client_certificate.is_some() || auth.client_certificate_data.is_some() {
        "a client certificate"
    } else if auth.exec.is_some() {
        "an exec plugin"
    } else if auth.auth_provider.is_some() {
        "an auth provider"
    } else if auth.username.is_some() {
        "a username and password"
    } else {
        "no credentials"
    };
    bail!(
        "the kubeconfig's user {user:?} authenticates with {how}, not with a bearer token the agent can check; \
         pass one with --token-file PATH (e.g. `kubectl create token NAME > PATH`)"
    )
}

fn read_token(path: &Path, what: &str) -> Result<String> {
    let text = std::fs::read_to_string(path).with_context(|| format!("{what}: read {}", path.display()))?;
    let token = text.trim();
    if token.is_empty() {
        bail!("{what}: {} holds no token", path.display());
    }
    Ok(token.to_owned())
}

/// The operating system's reason a connection failed, under the client's wrapping.
fn io_error(error: &hyper_util::client::legacy::Error) -> std::io::Error {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(e) = source {
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            return std::io::Error::new(io.kind(), io.to_string());
        }
        source = e.source();
    }
    std::io::Error::other(error.to_string())
}

/// Prints one line of the stream; false once stdout is gone.
fn show(text: &str, output: Output, timezone: &TimeZone) -> bool {
    if text.trim().is_empty() {
        return true;
    }
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    let written = match output {
        Output::Json => writeln!(out, "{text}"),
        Output::Text => match serde_json::from_str::<ObserveLine>(text) {
            Ok(ObserveLine::Flow(flow)) => writeln!(out, "{}", render(&flow, timezone)),
            Ok(ObserveLine::Lost { lost_events }) => {
                eprintln!("warning: {lost_events} flows lost: this observer fell behind");
                Ok(())
            }
            Err(e) => {
                eprintln!("warning: unreadable line ({e}): {text}");
                Ok(())
            }
        },
    };
    written.is_ok()
}

fn parse_since(text: &str) -> Result<Timestamp> {
    if let Ok(at) = text.parse::<Timestamp>() {
        return Ok(at);
    }
    let ago = palisade_rollout::parse_duration(text)
        .map_err(|e| anyhow::anyhow!("--since {text}: expected 5m, 30s, 1h or a time ({e})"))?;
    Ok(Timestamp::now() - ago)
}

/// `Nov 21 13:38:33.295  shop/api (10.200.10.20) -> shop/db-0 (10.200.10.30) 5432/TCP  DROPPED  by
/// CiliumNetworkPolicy shop/db spec.ingressDeny[0] (main@4b15b4e)`; a flow through a Service
/// shows it before the backend: `-> shop/db:5432 -> shop/db-0 (10.200.10.30) 5432/TCP`.
fn render(flow: &ObservedFlow, timezone: &TimeZone) -> String {
    let time = flow
        .time
        .parse::<Timestamp>()
        .map(|t| t.to_zoned(timezone.clone()).strftime("%b %d %H:%M:%S%.3f").to_string())
        .unwrap_or_else(|_| flow.time.clone());
    let port = match flow.protocol.as_str() {
        "ICMP" | "ICMPv6" => flow.protocol.clone(),
        protocol => format!("{}/{protocol}", flow.port),
    };
    let port = match &flow.l7 {
        Some(l7) => format!("{port} {}", l7_request(l7)),
        None => port,
    };
    let revision = |r: &Option<String>| r.as_ref().map(|r| format!(" ({r})")).unwrap_or_default();
    let reason = flow.drop_reason.as_ref().map(|r| format!(" ({r})")).unwrap_or_default();
    let service = flow.service.as_ref().map(|s| format!("{} -> ", s.name())).unwrap_or_default();
    let mut line = format!(
        "{time}  {} ({}) -> {service}{} ({}) {port}  {}{reason}  ",
        flow.source.name(),
        flow.source.ip,
        flow.destination.name(),
        flow.destination.ip,
        flow.verdict.as_str(),
    );
    match flow.verdict {
        FlowVerdict::Audit => line.push_str("would be dropped by "),
        _ => line.push_str("by "),
    }
    line.push_str(&short(&flow.decided_by));
    line.push_str(&revision(&flow.enforced_revision));
    if let Some(candidate) = flow.candidate.as_ref().filter(|c| c.differs) {
        let what = match candidate.verdict {
            FlowVerdict::Dropped => "DROP",
            _ => "FORWARD",
        };
        let name = flow.candidate_revision.as_deref().unwrap_or("the candidate");
        line.push_str(&format!(", candidate {name} would {what} ({})", short(&candidate.decided_by)));
    }
    line
}

/// What the L7 proxy saw, as Hubble prints it: `HTTP/1.1 GET /admin -> 403`,
/// `DNS api.example.com -> NOERROR 10.200.99.10`, `Kafka produce v9 orders -> TOPIC_AUTHORIZATION_FAILED`.
fn l7_request(l7: &L7Flow) -> String {
    if let Some(tls) = &l7.tls {
        return format!("TLS {}", tls.server_name.as_deref().unwrap_or("<no server name>"));
    }
    if let Some(kafka) = &l7.kafka {
        let topics = if kafka.topics.is_empty() { String::new() } else { format!(" {}", kafka.topics.join(",")) };
        let error = kafka.error.as_deref().map(|e| format!(" -> {e}")).unwrap_or_default();
        return format!("Kafka {} v{}{topics}{error}", kafka.api_key, kafka.api_version);
    }
    match (&l7.http, &l7.dns) {
        (Some(http), _) => format!("{} {} {} -> {}", http.protocol, http.method, http.url, http.status),
        (None, Some(dns)) => {
            let answers: Vec<String> = dns.answers.iter().map(ToString::to_string).collect();
            let answers = if answers.is_empty() { String::new() } else { format!(" {}", answers.join(",")) };
            format!("DNS {} -> {}{answers}", dns.query, dns.rcode)
        }
        (None, None) => "L7".into(),
    }
}

/// `CiliumNetworkPolicy shop/db spec.ingress[0]`, `default deny`.
fn short(decided: &DecidedBy) -> String {
    match (&decided.policy, &decided.rule) {
        (Some(policy), Some(rule)) => format!("{policy} {rule}"),
        _ => decided.description.split(" (").next().unwrap_or_default().to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use palisade_agent::observe::{CandidateVerdict, FlowPeer};

    use super::*;

    fn pod(namespace: &str, name: &str, ip: &str) -> FlowPeer {
        FlowPeer {
            ip: ip.parse().unwrap(),
            namespace: Some(namespace.into()),
            pod: Some(name.into()),
            ..FlowPeer::default()
        }
    }

    fn flow() -> ObservedFlow {
        ObservedFlow {
            time: "2025-11-21T13:38:33.295123Z".into(),
            node: "local".into(),
            verdict: FlowVerdict::Dropped,
            drop_reason: Some("policy-denied".into()),
            direction: "ingress".into(),
            source: pod("shop", "api-5d8f", "10.200.10.20"),
            destination: pod("shop", "postgres-0", "10.200.10.30"),
            service: None,
            port: 5432,
            protocol: "TCP".into(),
            decided_by: DecidedBy {
                policy: Some("CiliumNetworkPolicy shop/postgres".into()),
                rule: Some("spec.ingressDeny[0]".into()),
                description: "CiliumNetworkPolicy shop/postgres spec.ingressDeny[0]".into(),
            },
            candidate: None,
            rollout: None,
            enforced_revision: Some("main@4b15b4e".into()),
            candidate_revision: None,
            endpoint: 3,
            l7: None,
        }
    }

    #[test]
    fn flows_render_as_one_line() {
        assert_eq!(
            render(&flow(), &TimeZone::UTC),
            "Nov 21 13:38:33.295  shop/api-5d8f (10.200.10.20) -> shop/postgres-0 (10.200.10.30) 5432/TCP  \
             DROPPED (policy-denied)  by CiliumNetworkPolicy shop/postgres spec.ingressDeny[0] (main@4b15b4e)"
        );
        let mut diff = flow();
        diff.verdict = FlowVerdict::Forwarded;
        diff.drop_reason = None;
        diff.decided_by.rule = Some("spec.ingress[0]".into());
        diff.candidate_revision = Some("main@37afc32".into());
        diff.candidate = Some(CandidateVerdict {
            verdict: FlowVerdict::Dropped,
            drop_reason: Some("policy-denied".into()),
            differs: true,
            decided_by: DecidedBy { description: "default deny (no rule allows it)".into(), ..DecidedBy::default() },
        });
        assert!(
            render(&diff, &TimeZone::UTC).ends_with(
                "FORWARDED  by CiliumNetworkPolicy shop/postgres spec.ingress[0] (main@4b15b4e), candidate \
                 main@37afc32 would DROP (default deny)"
            ),
            "{}",
            render(&diff, &TimeZone::UTC)
        );
    }

    #[test]
    fn l7_flows_render_the_request_and_its_answer() {
        use palisade_agent::observe::{DnsFlow, HttpFlow, KafkaFlow};
        let mut denied = flow();
        denied.port = 8080;
        denied.enforced_revision = None;
        denied.decided_by = DecidedBy {
            description: "GET /admin matches no HTTP rule for this peer (HTTP 403)".into(),
            ..DecidedBy::default()
        };
        let http = HttpFlow { method: "GET".into(), url: "/admin".into(), protocol: "HTTP/1.1".into(), status: 403 };
        denied.l7 = Some(L7Flow { latency_ns: 1200, http: Some(http), dns: None, tls: None, kafka: None });
        assert!(
            render(&denied, &TimeZone::UTC).ends_with(
                "8080/TCP HTTP/1.1 GET /admin -> 403  DROPPED (policy-denied)  by GET /admin matches no HTTP rule for \
                 this peer"
            ),
            "{}",
            render(&denied, &TimeZone::UTC)
        );
        let mut query = flow();
        query.port = 53;
        query.protocol = "UDP".into();
        query.verdict = FlowVerdict::Forwarded;
        query.drop_reason = None;
        let answers = vec!["10.200.99.10".parse().unwrap()];
        let dns = DnsFlow { query: "api.example.com".into(), rcode: "NOERROR".into(), answers };
        query.l7 = Some(L7Flow { latency_ns: 900, http: None, dns: Some(dns), tls: None, kafka: None });
        let line = render(&query, &TimeZone::UTC);
        assert!(line.contains(" 53/UDP DNS api.example.com -> NOERROR 10.200.99.10  FORWARDED  by "), "{line}");
        let json = serde_json::to_value(&query).unwrap();
        assert_eq!(json["l7"]["dns"]["answers"][0], "10.200.99.10", "{json}");
        assert_eq!(json["l7"]["latency_ns"], 900, "{json}");

        let mut produce = query.clone();
        (produce.port, produce.protocol, produce.verdict) = (9092, "TCP".into(), FlowVerdict::Dropped);
        produce.drop_reason = Some("policy-denied".into());
        let kafka = KafkaFlow {
            api_key: "produce".into(),
            api_version: 8,
            correlation_id: 1,
            client_id: Some("app".into()),
            topics: vec!["payments".into()],
            error: Some("TOPIC_AUTHORIZATION_FAILED".into()),
        };
        produce.l7 = Some(L7Flow { latency_ns: 900, http: None, dns: None, tls: None, kafka: Some(kafka) });
        let line = render(&produce, &TimeZone::UTC);
        assert!(line.contains(" 9092/TCP Kafka produce v8 payments -> TOPIC_AUTHORIZATION_FAILED  DROPPED"), "{line}");
    }

    fn kubeconfig(user: &str) -> Kubeconfig {
        let text = format!(
            "apiVersion: v1\nkind: Config\ncurrent-context: shop\ncontexts:\n- name: shop\n  context: {{cluster: c, user: alice}}\nusers:\n- name: alice\n  user: {user}\n"
        );
        Kubeconfig::from_yaml(&text).unwrap()
    }

    #[test]
    fn the_agent_gets_the_current_users_bearer_token() {
        assert_eq!(kubeconfig("{token: abc}").current_context.as_deref(), Some("shop"));
        assert_eq!(kubeconfig_token(&kubeconfig("{token: abc}")).unwrap(), "abc");
        let file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(file.path(), "from-file\n").unwrap();
        let with_file = kubeconfig(&format!("{{tokenFile: {}}}", file.path().display()));
        assert_eq!(kubeconfig_token(&with_file).unwrap(), "from-file");
        let certificate = kubeconfig_token(&kubeconfig("{client-certificate-data: Zm9v, client-key-data: Zm9v}"));
        let message = certificate.unwrap_err().to_string();
        assert!(message.contains(r#"user "alice" authenticates with a client certificate"#), "{message}");
        assert!(message.contains("--token-file PATH"), "{message}");
        let exec = kubeconfig_token(&kubeconfig("{exec: {apiVersion: client.authentication.k8s.io/v1, command: aws}}"));
        assert!(exec.unwrap_err().to_string().contains("an exec plugin"));
    }

    #[test]
    fn since_takes_durations_and_times() {
        assert!(parse_since("5m").unwrap() < Timestamp::now());
        assert_eq!(parse_since("2025-11-21T13:38:33Z").unwrap().to_string(), "2025-11-21T13:38:33Z");
        assert!(parse_since("yesterday").is_err());
    }
}
