//! The ValidatingAdmissionPolicies of manifests/admission.yaml, evaluated with a CEL interpreter
//! over the variables the API server binds: `object`, `oldObject` (null on CREATE) and
//! `request` (the AdmissionRequest; `userInfo.extra` absent when the user has none).

use cel::{Context, Program, Value};
use serde_json::Value as Json;

/// How a request fares: admitted, or refused with the message of the first failing validation.
#[derive(Debug, PartialEq, Eq)]
pub enum Admission {
    Admitted,
    Refused(String),
}

/// One policy's validations, as written in the manifest.
pub struct Policy {
    validations: Vec<(String, String)>,
}

impl Policy {
    /// The ValidatingAdmissionPolicy `name` among `objects`, checked to be bound with Deny and to
    /// fail closed.
    pub fn from_objects<'a>(objects: impl IntoIterator<Item = &'a Json> + Clone, name: &str) -> Policy {
        let find = |kind: &str| {
            objects
                .clone()
                .into_iter()
                .find(|o| o["kind"] == kind && (o["metadata"]["name"] == name || o["spec"]["policyName"] == name))
                .unwrap_or_else(|| panic!("manifests/ has no {kind} for {name}"))
        };
        let policy = find("ValidatingAdmissionPolicy");
        assert_eq!(policy["apiVersion"], "admissionregistration.k8s.io/v1", "{name}");
        assert_eq!(policy["spec"]["failurePolicy"], "Fail", "{name}: a rule that cannot be evaluated must refuse");
        let binding = find("ValidatingAdmissionPolicyBinding");
        assert_eq!(binding["spec"]["validationActions"], serde_json::json!(["Deny"]), "{name}: the binding denies");
        let validations = policy["spec"]["validations"]
            .as_array()
            .unwrap_or_else(|| panic!("{name}: no validations"))
            .iter()
            .map(|v| {
                let message = v["message"].as_str().unwrap_or_default();
                assert!(message.starts_with(&format!("{name}:")), "{name}: a message names the rule: {message}");
                (v["expression"].as_str().expect("an expression").to_string(), message.to_string())
            })
            .collect();
        Policy { validations }
    }

    /// Whether the API server would admit `object` (and `old_object`, on UPDATE) from `request`.
    /// Panics when an expression does not evaluate to a bool: with failurePolicy Fail that would
    /// refuse every request, rightly or not.
    pub fn admit(&self, object: &Json, old_object: &Json, request: &Json) -> Admission {
        let mut context = Context::default();
        for (name, value) in [("object", object), ("oldObject", old_object), ("request", request)] {
            context.add_variable_from_value(name, cel::to_value(value).expect("JSON converts to CEL"));
        }
        for (expression, message) in &self.validations {
            let program = Program::compile(expression).unwrap_or_else(|e| panic!("{expression}: {e}"));
            match program.execute(&context) {
                Ok(Value::Bool(true)) => {}
                Ok(Value::Bool(false)) => return Admission::Refused(message.clone()),
                other => panic!("{expression} evaluated to {other:?}, not a bool"),
            }
        }
        Admission::Admitted
    }
}

/// An AdmissionRequest as the API server binds it to `request`.
pub fn request(operation: &str, username: &str, extra: Option<Json>) -> Json {
    let mut user = serde_json::json!({"username": username, "groups": ["system:authenticated"]});
    if let Some(extra) = extra {
        user["extra"] = extra;
    }
    serde_json::json!({"operation": operation, "userInfo": user})
}
