//! manifests/ as `kubectl apply -k manifests/` would install it: every file parses, every reference
//! points at something that exists, the security requirements hold, and the RBAC grants exactly
//! what controller/src/rbac.rs declares the code uses. RBAC and the admission policies are also
//! evaluated as the API server would, against the bypasses they close.

#[path = "manifests/admission.rs"]
mod admission;
#[path = "manifests/rbac.rs"]
mod rbac;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use palisade::rbac::{AGENT_RBAC, CONTROLLER_NAMESPACE_RBAC, CONTROLLER_RBAC, Rule};
use palisade_policy::yaml::{Limits, parse_documents};
use serde_json::{Value as Json, json};

use admission::{Admission, Policy, request};
use rbac::{Rbac, Request, Subject};

const NAMESPACE: &str = "palisade-system";

fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../manifests")
}

fn load(path: &Path) -> Vec<Json> {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let documents = parse_documents(&text, &Limits::default()).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    documents.iter().map(|d| d.to_json()).collect()
}

fn str_list(v: &Json) -> Vec<&str> {
    v.as_array().map(|a| a.iter().filter_map(Json::as_str).collect()).unwrap_or_default()
}

/// Every object in manifests/*.yaml except the kustomization, with the file it came from.
struct Manifests {
    objects: Vec<(String, Json)>,
}

impl Manifests {
    fn load() -> Self {
        let mut objects = Vec::new();
        let mut files: Vec<_> = std::fs::read_dir(dir()).unwrap().map(|e| e.unwrap().path()).collect();
        files.sort();
        for path in files.iter().filter(|p| p.extension().is_some_and(|e| e == "yaml")) {
            let file = path.file_name().unwrap().to_string_lossy().into_owned();
            if file == "kustomization.yaml" {
                continue;
            }
            for object in load(path) {
                for field in ["apiVersion", "kind"] {
                    assert!(object[field].is_string(), "{file}: an object without {field}");
                }
                assert!(object["metadata"]["name"].is_string(), "{file}: a {} without a name", object["kind"]);
                objects.push((file.clone(), object));
            }
        }
        Self { objects }
    }

    /// Every object of one of `kinds`, with its kind and name.
    fn of_kinds<'a>(&'a self, kinds: &'a [&'a str]) -> impl Iterator<Item = (&'a str, &'a str, &'a Json)> + 'a {
        kinds.iter().flat_map(move |kind| {
            self.of_kind(kind).map(move |o| (*kind, o["metadata"]["name"].as_str().unwrap_or_default(), o))
        })
    }

    fn of_kind<'a>(&'a self, kind: &str) -> impl Iterator<Item = &'a Json> + 'a {
        let kind = kind.to_string();
        self.objects.iter().map(|(_, o)| o).filter(move |o| o["kind"] == kind.as_str())
    }

    fn find(&self, kind: &str, name: &str) -> Option<&Json> {
        self.of_kind(kind).find(|o| o["metadata"]["name"] == name)
    }

    fn get(&self, kind: &str, name: &str) -> &Json {
        self.find(kind, name).unwrap_or_else(|| panic!("manifests/ has no {kind} {name}"))
    }
}

#[test]
fn kustomization_lists_every_file_and_only_existing_ones() {
    let kustomization = &load(&dir().join("kustomization.yaml"))[0];
    assert_eq!(kustomization["kind"], "Kustomization");
    // Everything goes into palisade-system unless it names its namespace: `namespace:` would
    // move the agent's Role in default too, so it is a NamespaceTransformer with unsetOnly.
    assert!(kustomization["namespace"].is_null(), "`namespace:` overrides every object's namespace");
    let transformers = str_list(&kustomization["transformers"]);
    assert_eq!(transformers.len(), 1, "{kustomization}");
    let transformer = &parse_documents(transformers[0], &Limits::default()).unwrap()[0].to_json();
    assert_eq!(transformer["apiVersion"], "builtin");
    assert_eq!(transformer["kind"], "NamespaceTransformer");
    assert_eq!(transformer["metadata"]["namespace"], NAMESPACE);
    assert_eq!(transformer["unsetOnly"], true);
    assert_eq!(transformer["setRoleBindingSubjects"], "none");
    let listed = str_list(&kustomization["resources"]);
    for resource in &listed {
        let path = dir().join(resource);
        if path.is_dir() {
            let inner = &load(&path.join("kustomization.yaml"))[0];
            let files = str_list(&inner["resources"]);
            for file in &files {
                assert!(path.join(file).is_file(), "{resource}/kustomization.yaml lists {file}, which does not exist");
            }
            let mut present: Vec<String> = std::fs::read_dir(&path)
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .filter(|f| f.ends_with(".yaml") && f != "kustomization.yaml")
                .collect();
            present.sort();
            let mut files: Vec<String> = files.iter().map(|f| f.to_string()).collect();
            files.sort();
            assert_eq!(files, present, "{resource}/kustomization.yaml lists exactly the files there");
        } else {
            assert!(path.is_file(), "kustomization.yaml lists {resource}, which does not exist");
        }
    }
    for entry in std::fs::read_dir(dir()).unwrap() {
        let file = entry.unwrap().file_name().to_string_lossy().into_owned();
        if file.ends_with(".yaml") && file != "kustomization.yaml" {
            assert!(listed.contains(&file.as_str()), "manifests/{file} is not in kustomization.yaml");
        }
    }
    // The CRDs it pulls in are the generated ones.
    let crds: Vec<Json> = ["policyrollouts", "policyrevisions", "policyauditreports", "policydecisions"]
        .iter()
        .flat_map(|f| load(&dir().join(format!("../crds/{f}.yaml"))))
        .collect();
    assert!(crds.iter().all(|c| c["kind"] == "CustomResourceDefinition" && c["spec"]["group"] == "palisade.dev"));
}

#[test]
fn namespaces_match() {
    let m = Manifests::load();
    assert_eq!(m.of_kind("Namespace").count(), 1);
    m.get("Namespace", NAMESPACE);
    let cluster_scoped = [
        "Namespace",
        "ClusterRole",
        "ClusterRoleBinding",
        "CustomResourceDefinition",
        "ValidatingAdmissionPolicy",
        "ValidatingAdmissionPolicyBinding",
    ];
    for (file, o) in &m.objects {
        let kind = o["kind"].as_str().unwrap();
        let namespace = &o["metadata"]["namespace"];
        if cluster_scoped.contains(&kind) {
            assert!(
                namespace.is_null(),
                "{file}: {kind} {} is cluster-scoped but names a namespace",
                o["metadata"]["name"]
            );
        } else {
            assert_eq!(namespace, NAMESPACE, "{file}: {kind} {}", o["metadata"]["name"]);
        }
    }
}

#[test]
fn workloads_use_existing_service_accounts_and_volumes() {
    let m = Manifests::load();
    for (kind, name, workload) in m.of_kinds(&["Deployment", "DaemonSet"]) {
        let selector = &workload["spec"]["selector"]["matchLabels"];
        let labels = &workload["spec"]["template"]["metadata"]["labels"];
        for (k, v) in selector.as_object().expect("matchLabels") {
            assert_eq!(&labels[k], v, "{kind} {name}: the selector matches its pods");
        }
        let pod = &workload["spec"]["template"]["spec"];
        let account = pod["serviceAccountName"].as_str().unwrap_or_else(|| panic!("{kind} {name}: serviceAccountName"));
        m.get("ServiceAccount", account);
        let volumes: Vec<&str> =
            pod["volumes"].as_array().into_iter().flatten().filter_map(|v| v["name"].as_str()).collect();
        let init = pod["initContainers"].as_array().into_iter().flatten();
        for container in init.chain(pod["containers"].as_array().unwrap()) {
            for mount in container["volumeMounts"].as_array().into_iter().flatten() {
                let volume = mount["name"].as_str().unwrap();
                assert!(volumes.contains(&volume), "{kind} {name}: mount of undeclared volume {volume}");
            }
            let resources = &container["resources"];
            assert!(resources["requests"]["cpu"].is_string() && resources["requests"]["memory"].is_string());
            assert!(resources["limits"]["memory"].is_string(), "{kind} {name}: a memory limit");
        }
    }
}

#[test]
fn controller_deployment_is_locked_down() {
    let m = Manifests::load();
    let deployment = m.get("Deployment", "palisade-controller");
    assert_eq!(deployment["spec"]["replicas"], 2);
    let pod = &deployment["spec"]["template"]["spec"];
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    let containers = pod["containers"].as_array().unwrap();
    assert_eq!(containers.len(), 1);
    let c = &containers[0];
    assert_eq!(str_list(&c["args"]), ["controller", "run"]);
    let sc = &c["securityContext"];
    assert_eq!(sc["readOnlyRootFilesystem"], true);
    assert_eq!(sc["allowPrivilegeEscalation"], false);
    assert_eq!(str_list(&sc["capabilities"]["drop"]), ["ALL"]);
    assert!(sc["capabilities"]["add"].is_null() && sc["privileged"] != true);
    assert!(c["resources"]["limits"]["cpu"].is_string());

    // Probes on ports the container declares.
    let ports: BTreeMap<&str, i64> = c["ports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p["name"].as_str().unwrap(), p["containerPort"].as_i64().unwrap()))
        .collect();
    for (probe, path) in [("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")] {
        let get = &c[probe]["httpGet"];
        assert_eq!(get["path"], path, "{probe}");
        let port = &get["port"];
        let declared = match port {
            Json::String(name) => ports.contains_key(name.as_str()),
            port => ports.values().any(|p| Some(*p) == port.as_i64()),
        };
        assert!(declared, "{probe} points at port {port}, which the container does not declare");
    }

    // The Git cache is a writable emptyDir, since the root filesystem is read-only.
    let volumes = pod["volumes"].as_array().unwrap();
    let cache = volumes.iter().find(|v| v["name"] == "git-cache").expect("a git-cache volume");
    assert!(cache["emptyDir"].is_object());
    assert!(c["volumeMounts"].as_array().unwrap().iter().any(|v| v["name"] == "git-cache"));

    // The webhook Service reaches these pods on a declared port.
    let service = m.get("Service", "palisade-webhook");
    let labels = &deployment["spec"]["template"]["metadata"]["labels"];
    for (k, v) in service["spec"]["selector"].as_object().unwrap() {
        assert_eq!(&labels[k], v, "the webhook Service selects the controller pods");
    }
    for port in service["spec"]["ports"].as_array().unwrap() {
        let target = port["targetPort"].as_str().expect("a named targetPort");
        assert!(ports.contains_key(target), "the webhook Service targets undeclared port {target}");
    }
}

/// `make image` builds `palisade:<version of this crate>` (scripts/image.sh) and `kind load` or
/// `ctr import` puts it on the nodes without a registry: every container runs exactly that image,
/// and never pulls it when the node has it. The kustomization leaves the name alone (users change
/// it with `kustomize edit set image`).
#[test]
fn every_container_runs_the_image_make_image_builds() {
    let m = Manifests::load();
    let expected = format!("palisade:{}", env!("CARGO_PKG_VERSION"));
    let mut containers = 0;
    for (kind, name, workload) in m.of_kinds(&["Deployment", "DaemonSet", "StatefulSet", "Job", "CronJob"]) {
        let pod = &workload["spec"]["template"]["spec"];
        for list in ["initContainers", "containers"] {
            for c in pod[list].as_array().into_iter().flatten() {
                let what = format!("{kind} {name}: {list} {}", c["name"]);
                assert_eq!(c["image"], expected.as_str(), "{what}");
                assert_eq!(c["imagePullPolicy"], "IfNotPresent", "{what}");
                containers += 1;
            }
        }
    }
    assert!(containers >= 2, "the controller and the agent");
    let kustomization = &load(&dir().join("kustomization.yaml"))[0];
    assert!(kustomization["images"].is_null(), "kustomization.yaml renames the image: {}", kustomization["images"]);
    // scripts/image.sh names the archive and its ref from the same crate version.
    let script = std::fs::read_to_string(dir().join("../scripts/image.sh")).unwrap();
    assert!(
        script.contains(r#"select(.name == "palisade") | .version"#) && script.contains(r#"ref="palisade:$version""#)
    );
}

#[test]
fn agent_daemonset_owns_the_node() {
    let m = Manifests::load();
    let pod = &m.get("DaemonSet", "palisade-agent")["spec"]["template"]["spec"];
    assert_eq!(pod["hostNetwork"], true);
    assert!(
        pod["tolerations"].as_array().unwrap().iter().any(|t| t["operator"] == "Exists" && t["key"].is_null()),
        "tolerates every taint, so that every node enforces"
    );
    let c = &pod["containers"][0];
    assert_eq!(c["securityContext"]["privileged"], true);
    let bpffs =
        pod["volumes"].as_array().unwrap().iter().find(|v| v["hostPath"]["path"] == "/sys/fs/bpf").expect("bpffs");
    let mount = c["volumeMounts"].as_array().unwrap().iter().find(|v| v["name"] == bpffs["name"]).expect("bpffs mount");
    assert_eq!(mount["mountPath"], "/sys/fs/bpf");
    // The binary's default --metrics-addr port serves the probes.
    let metrics = c["ports"].as_array().unwrap().iter().find(|p| p["containerPort"] == 9964).expect("port 9964");
    for (probe, path) in [("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")] {
        assert_eq!(c[probe]["httpGet"]["path"], path, "{probe}");
        assert_eq!(c[probe]["httpGet"]["port"], metrics["name"], "{probe}");
    }
    // The preflight runs first, as the agent does: same image, privileges and bpffs.
    let init = &pod["initContainers"][0];
    assert_eq!(init["command"], json!(["palisade-agent", "--preflight"]));
    assert_eq!(init["image"], c["image"]);
    assert_eq!(init["securityContext"], c["securityContext"]);
    let init_mount =
        init["volumeMounts"].as_array().unwrap().iter().find(|v| v["name"] == bpffs["name"]).expect("bpffs mount");
    assert_eq!(init_mount["mountPath"], "/sys/fs/bpf");
}

#[test]
fn bindings_reference_existing_roles_and_accounts() {
    let m = Manifests::load();
    for (kind, name, binding) in m.of_kinds(&["RoleBinding", "ClusterRoleBinding"]) {
        let role = &binding["roleRef"];
        let role_kind = role["kind"].as_str().unwrap();
        assert!(kind == "RoleBinding" || role_kind == "ClusterRole", "{kind} {name} binds a {role_kind}");
        let target = m.get(role_kind, role["name"].as_str().unwrap());
        if role_kind == "Role" {
            assert_eq!(target["metadata"]["namespace"], binding["metadata"]["namespace"], "{kind} {name}");
        }
        for subject in binding["subjects"].as_array().unwrap() {
            if subject["kind"] == "Group" {
                // `palisade version`: the one binding for people, to read one Deployment.
                assert_eq!((name, subject["name"].as_str()), ("palisade-version-reader", Some("system:authenticated")));
                continue;
            }
            assert_eq!(subject["kind"], "ServiceAccount", "{kind} {name}: only service accounts are bound here");
            let account = m.get("ServiceAccount", subject["name"].as_str().unwrap());
            assert_eq!(subject["namespace"], account["metadata"]["namespace"], "{kind} {name}");
        }
    }
}

type Grant = (String, String, String);

fn expand(rules: &[Rule]) -> BTreeSet<Grant> {
    let mut grants = BTreeSet::new();
    for (group, resource, verbs) in rules {
        for verb in *verbs {
            assert!(
                grants.insert((group.to_string(), resource.to_string(), verb.to_string())),
                "{resource} {verb} twice"
            );
        }
    }
    grants
}

fn grants_of(role: &Json) -> BTreeSet<Grant> {
    let mut grants = BTreeSet::new();
    for rule in role["rules"].as_array().unwrap() {
        assert!(rule["resourceNames"].is_null() && rule["nonResourceURLs"].is_null(), "{rule}");
        for group in str_list(&rule["apiGroups"]) {
            for resource in str_list(&rule["resources"]) {
                for verb in str_list(&rule["verbs"]) {
                    assert!(![group, resource, verb].contains(&"*"), "no wildcards: {rule}");
                    grants.insert((group.to_string(), resource.to_string(), verb.to_string()));
                }
            }
        }
    }
    grants
}

/// Everything bound to a service account, cluster-wide and in each namespace.
fn granted_to(m: &Manifests, account: &str) -> BTreeMap<Option<String>, BTreeSet<Grant>> {
    let mut by_scope: BTreeMap<Option<String>, BTreeSet<Grant>> = BTreeMap::new();
    for (_, _, binding) in m.of_kinds(&["RoleBinding", "ClusterRoleBinding"]) {
        if !binding["subjects"].as_array().unwrap().iter().any(|s| s["name"] == account) {
            continue;
        }
        let role = m.get(binding["roleRef"]["kind"].as_str().unwrap(), binding["roleRef"]["name"].as_str().unwrap());
        let scope = binding["metadata"]["namespace"].as_str().map(String::from);
        by_scope.entry(scope).or_default().extend(grants_of(role));
    }
    by_scope
}

/// Equal, or a failure naming what is granted beyond the code and what the code lacks.
fn assert_grants(
    granted: &BTreeMap<Option<String>, BTreeSet<Grant>>,
    expected: &BTreeMap<Option<String>, BTreeSet<Grant>>,
) {
    let empty = BTreeSet::new();
    for scope in granted.keys().chain(expected.keys()) {
        let (g, e) = (granted.get(scope).unwrap_or(&empty), expected.get(scope).unwrap_or(&empty));
        let scope = scope.as_deref().unwrap_or("cluster-wide");
        let extra: Vec<_> = g.difference(e).collect();
        let missing: Vec<_> = e.difference(g).collect();
        assert!(extra.is_empty(), "{scope}: manifests/ grants more than controller/src/rbac.rs declares: {extra:?}");
        assert!(missing.is_empty(), "{scope}: manifests/ lacks what controller/src/rbac.rs declares: {missing:?}");
    }
}

#[test]
fn controller_rbac_is_exactly_what_the_code_declares() {
    let m = Manifests::load();
    let granted = granted_to(&m, "palisade-controller");
    let expected = BTreeMap::from([
        (None, expand(CONTROLLER_RBAC)),
        (Some(NAMESPACE.to_string()), expand(CONTROLLER_NAMESPACE_RBAC)),
    ]);
    assert_grants(&granted, &expected);
}

#[test]
fn agent_rbac_is_exactly_what_the_code_declares() {
    let m = Manifests::load();
    let expected = BTreeMap::from([(None, expand(AGENT_RBAC))]);
    assert_grants(&granted_to(&m, "palisade-agent"), &expected);
}

#[test]
fn people_get_viewer_and_approver_roles() {
    let m = Manifests::load();
    let approver = grants_of(m.get("ClusterRole", "palisade-approver"));
    let rules: &[Rule] = &[
        ("palisade.dev", "policyrollouts", &["get", "list", "watch"]),
        ("palisade.dev", "policydecisions", &["create"]),
    ];
    assert_eq!(approver, expand(rules), "promote, abort and reaudit create decisions and read the candidate");
    let viewer = grants_of(m.get("ClusterRole", "palisade-viewer"));
    assert!(!viewer.is_empty());
    assert!(viewer.iter().all(|(_, _, verb)| ["get", "list", "watch"].contains(&verb.as_str())), "{viewer:?}");
}

#[test]
fn every_authenticated_user_reads_the_controller_deployment_and_nothing_beside_it() {
    let m = Manifests::load();
    let (rbac, subjects) = everyone(&m);
    let get = |name| Request { verb: "get", group: "apps", resource: "deployments", namespace: Some(NAMESPACE), name };
    for subject in &subjects {
        assert!(rbac.can(subject, &get(Some("palisade-controller"))), "{subject:?}: palisade version");
    }
    let victor = Subject::user("victor");
    assert!(!rbac.can(&victor, &get(Some("other"))), "another Deployment");
    assert!(!rbac.can(&victor, &get(None)), "listing Deployments");
    assert!(!rbac.can(&victor, &Request { verb: "patch", ..get(Some("palisade-controller")) }));
    assert!(!rbac.can(&victor, &Request { namespace: Some(ROLLOUT_NS), ..get(Some("palisade-controller")) }));
}

#[test]
fn viewers_read_decisions() {
    let m = Manifests::load();
    let viewer = grants_of(m.get("ClusterRole", "palisade-viewer"));
    for verb in ["get", "list", "watch"] {
        assert!(viewer.contains(&("palisade.dev".into(), "policydecisions".into(), verb.into())), "{viewer:?}");
    }
}

const ROLLOUT_NS: &str = "shop";

fn rbac(m: &Manifests) -> Rbac {
    Rbac::from_objects(m.objects.iter().map(|(_, o)| o)).with_builtin_aggregated_roles()
}

fn in_shop<'a>(verb: &'a str, resource: &'a str) -> Request<'a> {
    Request { verb, group: "palisade.dev", resource, namespace: Some(ROLLOUT_NS), name: None }
}

/// The manifests' own subjects, and people bound in the rollout's namespace as the README says:
/// an approver, a viewer, and users of the built-in edit and admin roles.
fn everyone(m: &Manifests) -> (Rbac, Vec<Subject>) {
    let mut rbac = rbac(m);
    let mut subjects = rbac.subjects();
    for (user, role) in
        [("alice", "palisade-approver"), ("victor", "palisade-viewer"), ("eddie", "edit"), ("ada", "admin")]
    {
        let subject = Subject::user(user);
        rbac.bind(Some(ROLLOUT_NS), role, &subject);
        subjects.push(subject);
    }
    (rbac, subjects)
}

#[test]
fn an_approver_creates_decisions_and_cannot_write_the_outcome() {
    let m = Manifests::load();
    let mut rbac = rbac(&m);
    let alice = Subject::user("alice");
    rbac.bind(Some(ROLLOUT_NS), "palisade-approver", &alice);
    assert!(rbac.can(&alice, &in_shop("create", "policydecisions")));
    assert!(rbac.can(&alice, &in_shop("get", "policyrollouts")), "the CLI reads the candidate");
    for verb in ["patch", "update"] {
        assert!(!rbac.can(&alice, &in_shop(verb, "policyrollouts/status")), "{verb} status");
        assert!(!rbac.can(&alice, &in_shop(verb, "policyrollouts")), "{verb} the spec (promotion, gates)");
    }
    let elsewhere = Request { namespace: Some("payments"), ..in_shop("create", "policydecisions") };
    assert!(!rbac.can(&alice, &elsewhere), "a RoleBinding grants in its namespace only");
}

#[test]
fn the_built_in_edit_and_admin_roles_do_not_grant_status_or_decisions() {
    let m = Manifests::load();
    let mut rbac = rbac(&m);
    for (user, role) in [("eddie", "edit"), ("ada", "admin")] {
        let subject = Subject::user(user);
        rbac.bind(Some(ROLLOUT_NS), role, &subject);
        // palisade-viewer is aggregated into view, and so into edit and admin.
        assert!(rbac.can(&subject, &in_shop("list", "policyrollouts")), "{role} reads rollouts");
        assert!(rbac.can(&subject, &in_shop("get", "policydecisions")), "{role} reads decisions");
        assert!(!rbac.can(&subject, &in_shop("patch", "policyrollouts/status")), "{role} patches status");
        assert!(!rbac.can(&subject, &in_shop("create", "policydecisions")), "{role} approves");
    }
}

#[test]
fn only_the_controller_writes_rollout_status() {
    let m = Manifests::load();
    let (rbac, subjects) = everyone(&m);
    let controller = Subject::service_account(NAMESPACE, "palisade-controller");
    assert!(subjects.contains(&controller) && subjects.len() > 5, "{subjects:?}");
    for subject in &subjects {
        for namespace in [Some(ROLLOUT_NS), Some(NAMESPACE), None] {
            let patch = Request { namespace, ..in_shop("patch", "policyrollouts/status") };
            assert_eq!(rbac.can(subject, &patch), *subject == controller, "{subject:?} patch status in {namespace:?}");
            let update = Request { namespace, ..in_shop("update", "policyrollouts/status") };
            assert!(!rbac.can(subject, &update), "{subject:?} update status in {namespace:?}");
        }
    }
}

#[test]
fn nobody_changes_a_policy_revision() {
    let m = Manifests::load();
    let (rbac, subjects) = everyone(&m);
    let controller = Subject::service_account(NAMESPACE, "palisade-controller");
    assert!(rbac.can(&controller, &in_shop("create", "policyrevisions")), "the controller writes them");
    for subject in &subjects {
        for verb in ["update", "patch"] {
            for namespace in [Some(ROLLOUT_NS), None] {
                let request = Request { namespace, ..in_shop(verb, "policyrevisions") };
                assert!(!rbac.can(subject, &request), "{subject:?} may {verb} policyrevisions in {namespace:?}");
            }
        }
    }
}

fn admission_policy(name: &str) -> Policy {
    let m = Manifests::load();
    Policy::from_objects(m.objects.iter().map(|(_, o)| o), name)
}

fn decision(user: &str) -> Json {
    json!({"apiVersion": "palisade.dev/v1alpha1", "kind": "PolicyDecision",
        "metadata": {"name": "web-promote", "namespace": ROLLOUT_NS},
        "spec": {"rollout": "web", "revision": "web-0123456789ab", "action": "Promote", "user": user}})
}

#[test]
fn a_decision_must_name_the_user_who_creates_it() {
    let policy = admission_policy("palisade-decision-user");
    let create = request("CREATE", "alice", None);
    assert_eq!(policy.admit(&decision("alice"), &Json::Null, &create), Admission::Admitted);
    let Admission::Refused(message) = policy.admit(&decision("bob"), &Json::Null, &create) else {
        panic!("alice created a decision in bob's name");
    };
    assert!(message.contains("spec.user"), "{message}");
}

#[test]
fn a_decision_never_changes() {
    let policy = admission_policy("palisade-decision-user");
    let update = request("UPDATE", "alice", None);
    let mut relabelled = decision("alice");
    relabelled["metadata"]["labels"] = json!({"team": "web"});
    assert_eq!(policy.admit(&relabelled, &decision("alice"), &update), Admission::Admitted, "metadata may change");
    let mut other_revision = decision("alice");
    other_revision["spec"]["revision"] = "web-ba9876543210".into();
    assert!(
        matches!(policy.admit(&other_revision, &decision("alice"), &update), Admission::Refused(m) if m.contains("immutable"))
    );
    // Nor can the author be swapped after the fact, by anyone.
    let by_bob = request("UPDATE", "bob", None);
    assert!(matches!(policy.admit(&decision("bob"), &decision("alice"), &by_bob), Admission::Refused(_)));
}

fn report(node: &str) -> Json {
    json!({"apiVersion": "palisade.dev/v1alpha1", "kind": "PolicyAuditReport",
        "metadata": {"name": format!("web-{node}"), "namespace": ROLLOUT_NS},
        "spec": {"rollout": "web", "node": node}})
}

/// The agent's node-bound token, as the API server authenticates it.
fn agent_on(node: &str) -> Option<Json> {
    Some(json!({
        "authentication.kubernetes.io/node-name": [node],
        "authentication.kubernetes.io/pod-name": [format!("palisade-agent-{node}")],
    }))
}

#[test]
fn a_report_comes_from_the_agent_of_its_node() {
    let policy = admission_policy("palisade-report-node");
    let agent = "system:serviceaccount:palisade-system:palisade-agent";
    for operation in ["CREATE", "UPDATE"] {
        let from_a = request(operation, agent, agent_on("node-a"));
        let old = if operation == "UPDATE" { report("node-a") } else { Json::Null };
        assert_eq!(policy.admit(&report("node-a"), &old, &from_a), Admission::Admitted, "{operation}");
        assert!(
            matches!(policy.admit(&report("node-b"), &old, &from_a), Admission::Refused(m) if m.contains("spec.node")),
            "{operation}: node-a's agent wrote node-b's report"
        );
        // A person (no node-bound token), with or without other extra: refused, not an error.
        let person = request(operation, "mallory", None);
        assert!(matches!(policy.admit(&report("node-a"), &old, &person), Admission::Refused(_)), "{operation}");
        let with_scopes = request(operation, "mallory", Some(json!({"scopes": ["openid"]})));
        assert!(matches!(policy.admit(&report("node-a"), &old, &with_scopes), Admission::Refused(_)), "{operation}");
        let empty = request(operation, agent, Some(json!({"authentication.kubernetes.io/node-name": []})));
        assert!(matches!(policy.admit(&report("node-a"), &old, &empty), Admission::Refused(_)), "{operation}");
    }
}
