//! A small JSON Schema checker for `deploy/check.schema.json`: the keywords
//! that schema uses (`type`, `required`, `properties`,
//! `additionalProperties: false`, `items`, `enum`, `const`, `minLength`,
//! local `$ref`) and the annotations it may carry. Any other keyword is an
//! error, so the schema cannot grow a rule these tests silently ignore.
//! Shared by the unit tests of `src/check.rs` (through `#[path]`) and the
//! integration tests.

#![allow(dead_code)]

use serde_json::Value;

/// The schema shipped in `deploy/`.
pub const CHECK_SCHEMA: &str = include_str!("../../deploy/check.schema.json");

/// Every way `doc` breaks `deploy/check.schema.json`; empty when it validates.
pub fn check_schema_errors(doc: &Value) -> Vec<String> {
    let schema: Value = serde_json::from_str(CHECK_SCHEMA).expect("deploy/check.schema.json is JSON");
    let mut errors = Vec::new();
    validate(&schema, &schema, doc, "$", &mut errors);
    errors
}

/// Panics with every error when `doc` does not validate.
pub fn assert_valid_check_document(doc: &Value) {
    let errors = check_schema_errors(doc);
    assert!(errors.is_empty(), "not valid against deploy/check.schema.json: {errors:#?}\n{doc:#}");
}

fn validate(root: &Value, schema: &Value, value: &Value, at: &str, errors: &mut Vec<String>) {
    let Some(schema) = schema.as_object() else {
        errors.push(format!("{at}: schema is not an object"));
        return;
    };
    for (keyword, rule) in schema {
        match keyword.as_str() {
            "$schema" | "$id" | "title" | "description" | "$defs" => {}
            "$ref" => {
                let target = rule
                    .as_str()
                    .and_then(|r| r.strip_prefix("#/"))
                    .and_then(|path| path.split('/').try_fold(root, |v, part| v.get(part)));
                match target {
                    Some(target) => validate(root, target, value, at, errors),
                    None => errors.push(format!("{at}: unresolvable $ref {rule}")),
                }
            }
            "type" => {
                let ok = match rule.as_str() {
                    Some("object") => value.is_object(),
                    Some("array") => value.is_array(),
                    Some("string") => value.is_string(),
                    Some("boolean") => value.is_boolean(),
                    Some("integer") => value.is_i64() || value.is_u64(),
                    Some("number") => value.is_number(),
                    Some("null") => value.is_null(),
                    _ => {
                        errors.push(format!("{at}: unsupported type {rule}"));
                        true
                    }
                };
                if !ok {
                    errors.push(format!("{at}: expected {rule}, got {value}"));
                }
            }
            "required" => {
                for name in rule.as_array().into_iter().flatten().filter_map(Value::as_str) {
                    if value.is_object() && value.get(name).is_none() {
                        errors.push(format!("{at}: missing required {name:?}"));
                    }
                }
            }
            "properties" => {
                if let (Some(props), Some(obj)) = (rule.as_object(), value.as_object()) {
                    for (name, sub) in props {
                        if let Some(v) = obj.get(name) {
                            validate(root, sub, v, &format!("{at}.{name}"), errors);
                        }
                    }
                }
            }
            "additionalProperties" => {
                if rule != &Value::Bool(false) {
                    errors.push(format!("{at}: only additionalProperties: false is supported"));
                }
                let known = schema.get("properties").and_then(Value::as_object);
                if let Some(obj) = value.as_object() {
                    for name in obj.keys() {
                        if !known.is_some_and(|k| k.contains_key(name)) {
                            errors.push(format!("{at}: unexpected property {name:?}"));
                        }
                    }
                }
            }
            "items" => {
                if let Some(items) = value.as_array() {
                    for (i, item) in items.iter().enumerate() {
                        validate(root, rule, item, &format!("{at}[{i}]"), errors);
                    }
                }
            }
            "enum" => {
                if !rule.as_array().is_some_and(|choices| choices.contains(value)) {
                    errors.push(format!("{at}: {value} is not one of {rule}"));
                }
            }
            "const" => {
                if rule != value {
                    errors.push(format!("{at}: {value} is not {rule}"));
                }
            }
            "minLength" => {
                let min = rule.as_u64().unwrap_or(0) as usize;
                if value.as_str().is_some_and(|s| s.chars().count() < min) {
                    errors.push(format!("{at}: shorter than {min}"));
                }
            }
            other => errors.push(format!("{at}: schema keyword {other:?} is not supported by this checker")),
        }
    }
}
