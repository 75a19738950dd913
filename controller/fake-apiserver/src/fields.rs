//! Field ownership, as server-side apply tracks it in `managedFields`, at a coarser grain: a
//! field is a top-level entry of `spec` or `status`, a label, an annotation, the finalizers, the
//! owner references, or any other top-level entry of the object.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{Map, Value};

/// A field as the path of keys to it (label keys hold dots, so not a dotted string).
pub(crate) type Field = Vec<String>;

/// Managers of each field of one object.
pub(crate) type Owners = BTreeMap<Field, BTreeSet<String>>;

/// The fields of `object` and their values.
pub(crate) fn fields(object: &Value) -> BTreeMap<Field, Value> {
    let mut fields = BTreeMap::new();
    let path = |keys: &[&str]| keys.iter().map(|k| k.to_string()).collect::<Field>();
    for (top, value) in object.as_object().into_iter().flatten() {
        match (top.as_str(), value) {
            ("apiVersion" | "kind", _) => {}
            ("metadata", meta) => {
                for map in ["labels", "annotations"] {
                    for (key, v) in meta[map].as_object().into_iter().flatten() {
                        fields.insert(path(&["metadata", map, key]), v.clone());
                    }
                }
                for list in ["finalizers", "ownerReferences"] {
                    if let Some(v) = meta.get(list) {
                        fields.insert(path(&["metadata", list]), v.clone());
                    }
                }
            }
            ("spec" | "status", Value::Object(entries)) => {
                for (key, v) in entries {
                    fields.insert(path(&[top, key]), v.clone());
                }
            }
            (_, v) => {
                fields.insert(path(&[top]), v.clone());
            }
        }
    }
    fields
}

/// Whether a field belongs to the status subresource (`true`) or to the main resource.
pub(crate) fn in_status(field: &Field) -> bool {
    field[0] == "status"
}

/// Sets the field at `path`, creating the objects on the way.
pub(crate) fn set(object: &mut Value, path: &Field, value: Value) {
    let mut at = object;
    for key in &path[..path.len() - 1] {
        if !at[key.as_str()].is_object() {
            at[key.as_str()] = Value::Object(Map::new());
        }
        at = &mut at[key.as_str()];
    }
    at[path[path.len() - 1].as_str()] = value;
}

/// Removes the field at `path`, and `spec`/`status`/`labels`/`annotations` left empty by it.
pub(crate) fn remove(object: &mut Value, path: &Field) {
    let Some((last, parents)) = path.split_last() else { return };
    let mut at = &mut *object;
    for key in parents {
        match at.get_mut(key.as_str()) {
            Some(next) => at = next,
            None => return,
        }
    }
    if let Some(map) = at.as_object_mut() {
        map.remove(last);
    }
    if let Some((_, parents)) = parents.split_last()
        && let Some(parent) = parents.iter().try_fold(&mut *object, |v, k| v.get_mut(k.as_str()))
        && let Some(map) = parent.as_object_mut()
    {
        let key = &path[parents.len()];
        if map.get(key).and_then(Value::as_object).is_some_and(Map::is_empty) {
            map.remove(key);
        }
    }
}

/// An update (create, replace, merge or JSON patch) by `manager`: it owns, alone, every field
/// whose value it changed; a field it removed has no owner left.
pub(crate) fn update(owners: &mut Owners, before: &Value, after: &Value, manager: &str) {
    let (before, after) = (fields(before), fields(after));
    for field in before.keys().chain(after.keys()) {
        match after.get(field) {
            None => {
                owners.remove(field);
            }
            Some(value) if before.get(field) != Some(value) => {
                owners.insert(field.clone(), BTreeSet::from([manager.to_string()]));
            }
            Some(_) => {}
        }
    }
}

/// The outcome of an apply: the object, or the fields other managers own with other values.
pub(crate) enum Applied {
    Object(Value),
    Conflicts(Vec<(String, Field)>),
}

/// Server-side apply of `body` by `manager` on `object` within one subresource (`status`: the
/// status subresource, otherwise the main resource). Fields another manager owns with another
/// value conflict unless `force`, which takes them over; fields `manager` alone owned and no
/// longer applies are removed; equal values are shared.
pub(crate) fn apply(
    owners: &mut Owners,
    object: &Value,
    body: &Value,
    manager: &str,
    force: bool,
    status: bool,
) -> Applied {
    let current = fields(object);
    let applied: BTreeMap<Field, Value> = fields(body).into_iter().filter(|(f, _)| in_status(f) == status).collect();
    let others = |field: &Field| -> Vec<String> {
        owners.get(field).into_iter().flatten().filter(|m| *m != manager).cloned().collect()
    };
    let conflicting: BTreeSet<Field> = applied
        .iter()
        .filter(|(f, v)| !others(f).is_empty() && current.get(*f) != Some(*v))
        .map(|(f, _)| f.clone())
        .collect();
    if !force && !conflicting.is_empty() {
        let conflicts = conflicting.iter().flat_map(|f| others(f).into_iter().map(|m| (m, f.clone()))).collect();
        return Applied::Conflicts(conflicts);
    }
    let mut object = object.clone();
    let dropped: Vec<Field> = owners
        .iter()
        .filter(|(f, managers)| in_status(f) == status && managers.contains(manager) && !applied.contains_key(*f))
        .map(|(f, _)| f.clone())
        .collect();
    for field in dropped {
        let managers = owners.get_mut(&field).expect("an owned field");
        managers.remove(manager);
        if managers.is_empty() {
            owners.remove(&field);
            remove(&mut object, &field);
        }
    }
    for (field, value) in applied {
        let managers = owners.entry(field.clone()).or_default();
        if conflicting.contains(&field) {
            managers.clear();
        }
        managers.insert(manager.to_string());
        set(&mut object, &field, value);
    }
    Applied::Object(object)
}
