//! Kubernetes RBAC as the API server's authorizer decides it, over roles and bindings read from
//! manifest objects: a request is allowed when a rule of a role bound to the subject (cluster-wide
//! by a ClusterRoleBinding, in one namespace by a RoleBinding) matches its verb, API group and
//! resource. ClusterRoles with an `aggregationRule` get the rules of the ClusterRoles their
//! selectors match, as the API server's aggregation controller does.

use serde_json::{Value as Json, json};

/// Who makes a request: what bindings name, with the groups the API server adds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Subject {
    User(String),
    ServiceAccount { namespace: String, name: String },
}

impl Subject {
    pub fn user(name: &str) -> Subject {
        Subject::User(name.into())
    }

    pub fn service_account(namespace: &str, name: &str) -> Subject {
        Subject::ServiceAccount { namespace: namespace.into(), name: name.into() }
    }

    fn groups(&self) -> Vec<String> {
        let mut groups = vec!["system:authenticated".to_string()];
        if let Subject::ServiceAccount { namespace, .. } = self {
            groups.extend(["system:serviceaccounts".to_string(), format!("system:serviceaccounts:{namespace}")]);
        }
        groups
    }

    /// Whether a binding's subject entry names this subject.
    fn named_by(&self, entry: &Json) -> bool {
        let name = entry["name"].as_str().unwrap_or_default();
        match (entry["kind"].as_str().unwrap_or_default(), self) {
            ("User", Subject::User(user)) => user == name,
            ("ServiceAccount", Subject::ServiceAccount { namespace, name: account }) => {
                account == name && entry["namespace"] == namespace.as_str()
            }
            ("Group", _) => self.groups().iter().any(|g| g == name),
            _ => false,
        }
    }

    /// As a binding's subject entry.
    fn entry(&self) -> Json {
        match self {
            Subject::User(name) => json!({"kind": "User", "apiGroup": "rbac.authorization.k8s.io", "name": name}),
            Subject::ServiceAccount { namespace, name } => {
                json!({"kind": "ServiceAccount", "namespace": namespace, "name": name})
            }
        }
    }
}

/// What a request asks: `resource` is `name` or `name/subresource`; `namespace` None for a
/// cluster-wide request.
pub struct Request<'a> {
    pub verb: &'a str,
    pub group: &'a str,
    pub resource: &'a str,
    pub namespace: Option<&'a str>,
    /// The object's name, for a request about one object (get, patch…).
    pub name: Option<&'a str>,
}

#[derive(Default)]
pub struct Rbac {
    roles: Vec<Json>,
    bindings: Vec<Json>,
}

impl Rbac {
    /// The Roles, ClusterRoles and their bindings among `objects`; everything else is ignored.
    pub fn from_objects<'a>(objects: impl IntoIterator<Item = &'a Json>) -> Rbac {
        let mut rbac = Rbac::default();
        for object in objects {
            match object["kind"].as_str() {
                Some("Role" | "ClusterRole") => rbac.roles.push(object.clone()),
                Some("RoleBinding" | "ClusterRoleBinding") => rbac.bindings.push(object.clone()),
                _ => {}
            }
        }
        rbac
    }

    /// The built-in user-facing ClusterRoles as far as aggregation goes: `view` gathers roles
    /// labelled aggregate-to-view, `edit` those labelled aggregate-to-edit (`view` among them),
    /// `admin` those labelled aggregate-to-admin (`edit` among them). Their own rules cover the
    /// built-in API groups only, so none are given here.
    pub fn with_builtin_aggregated_roles(mut self) -> Rbac {
        for (name, aggregates, label) in
            [("view", "view", Some("edit")), ("edit", "edit", Some("admin")), ("admin", "admin", None)]
        {
            let labels =
                label.map_or(json!({}), |l| json!({format!("rbac.authorization.k8s.io/aggregate-to-{l}"): "true"}));
            let selector =
                json!({"matchLabels": {format!("rbac.authorization.k8s.io/aggregate-to-{aggregates}"): "true"}});
            self.roles.push(json!({
                "kind": "ClusterRole",
                "metadata": {"name": name, "labels": labels},
                "aggregationRule": {"clusterRoleSelectors": [selector]},
                "rules": [],
            }));
        }
        self
    }

    /// `kubectl create rolebinding` (a namespace) or `clusterrolebinding` (None) of ClusterRole
    /// `role` to `subject`.
    pub fn bind(&mut self, namespace: Option<&str>, role: &str, subject: &Subject) {
        let kind = if namespace.is_some() { "RoleBinding" } else { "ClusterRoleBinding" };
        self.bindings.push(json!({
            "kind": kind,
            "metadata": {"name": format!("{role}-test"), "namespace": namespace},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role},
            "subjects": [subject.entry()],
        }));
    }

    /// Every subject some binding names by user or service account.
    pub fn subjects(&self) -> Vec<Subject> {
        let mut subjects = Vec::new();
        for entry in self.bindings.iter().flat_map(|b| b["subjects"].as_array().into_iter().flatten()) {
            let name = entry["name"].as_str().unwrap_or_default();
            let subject = match entry["kind"].as_str() {
                Some("User") => Subject::user(name),
                Some("ServiceAccount") => {
                    Subject::service_account(entry["namespace"].as_str().unwrap_or_default(), name)
                }
                _ => continue,
            };
            if !subjects.contains(&subject) {
                subjects.push(subject);
            }
        }
        subjects
    }

    pub fn can(&self, subject: &Subject, request: &Request) -> bool {
        self.bindings.iter().any(|binding| {
            let scope = binding["metadata"]["namespace"].as_str();
            let in_scope = binding["kind"] == "ClusterRoleBinding" || (scope.is_some() && scope == request.namespace);
            in_scope
                && binding["subjects"].as_array().into_iter().flatten().any(|s| subject.named_by(s))
                && self.role_rules(&binding["roleRef"], scope).iter().any(|rule| matches(rule, request))
        })
    }

    /// The rules of the role a binding refers to, aggregated ones included.
    fn role_rules(&self, role_ref: &Json, binding_namespace: Option<&str>) -> Vec<Json> {
        let kind = role_ref["kind"].as_str().unwrap_or_default();
        let name = role_ref["name"].as_str().unwrap_or_default();
        let role = self.roles.iter().find(|r| {
            r["kind"] == kind
                && r["metadata"]["name"] == name
                && (kind == "ClusterRole" || r["metadata"]["namespace"].as_str() == binding_namespace)
        });
        role.map_or_else(Vec::new, |role| self.rules_of(role, &mut Vec::new()))
    }

    fn rules_of(&self, role: &Json, visited: &mut Vec<String>) -> Vec<Json> {
        let name = role["metadata"]["name"].as_str().unwrap_or_default().to_string();
        if visited.contains(&name) {
            return Vec::new();
        }
        visited.push(name);
        let mut rules: Vec<Json> = role["rules"].as_array().cloned().unwrap_or_default();
        for selector in role["aggregationRule"]["clusterRoleSelectors"].as_array().into_iter().flatten() {
            let wanted = selector["matchLabels"].as_object().cloned().unwrap_or_default();
            for other in self.roles.iter().filter(|r| r["kind"] == "ClusterRole") {
                if wanted.iter().all(|(k, v)| &other["metadata"]["labels"][k] == v) {
                    rules.extend(self.rules_of(other, visited));
                }
            }
        }
        rules
    }
}

fn matches(rule: &Json, request: &Request) -> bool {
    let listed = |field: &str, value: &str| {
        rule[field].as_array().into_iter().flatten().filter_map(Json::as_str).any(|v| v == "*" || v == value)
    };
    let any_with_subresource =
        request.resource.split_once('/').is_some_and(|(_, sub)| listed("resources", &format!("*/{sub}")));
    let resource = listed("resources", request.resource) || any_with_subresource;
    // A rule naming objects (resourceNames) grants requests about those objects only.
    let named = rule["resourceNames"]
        .as_array()
        .is_none_or(|names| names.is_empty() || request.name.is_some_and(|name| names.iter().any(|n| n == name)));
    listed("verbs", request.verb) && listed("apiGroups", request.group) && resource && named
}
