//! Schema rewrites before compiling: OpenAI's `"strict": true` closes open objects, and a
//! `format` llguidance does not know is read as the annotation JSON Schema makes it.
//!
//! JSON Schema lets an object without `additionalProperties` hold any other key as well, and
//! llguidance and llama.cpp follow it (a model asked for `{title, pages}` may add `author`).
//! OpenAI's strict mode accepts only schemas whose objects are all closed; specrun closes the
//! ones a strict schema leaves open instead of refusing them. Schemas under `allOf` are left
//! open (closing each part of a conjunction would refuse the keys the other parts add), their
//! own subschemas are still closed.
//!
//! `format` asserts only where a validator knows the format (JSON Schema 2019-09 on; Python's
//! `jsonschema` ignores the ones it does not know), while llguidance refuses a schema with a
//! format outside its list — Pydantic writes `password`, `binary` or `file-path` for common
//! field types. Such formats are dropped, so the value is any string and still validates.

use serde_json::{Map, Value};

/// `schema` with `"additionalProperties": false` on every object schema that says nothing
/// about additional properties.
pub fn closed(mut schema: Value) -> Value {
    walk(&mut schema, false, &mut |o, in_all_of| {
        let is_object = o.contains_key("properties")
            || match o.get("type") {
                Some(Value::String(t)) => t == "object",
                Some(Value::Array(ts)) => ts.iter().any(|t| t == "object"),
                _ => false,
            };
        if !in_all_of && is_object && !o.contains_key("additionalProperties") && !o.contains_key("unevaluatedProperties") {
            o.insert("additionalProperties".into(), Value::Bool(false));
        }
    });
    schema
}

/// `schema` without the `format`s `known` does not know (their values are any string).
pub fn unknown_formats_dropped(mut schema: Value, known: &dyn Fn(&str) -> bool) -> Value {
    walk(&mut schema, false, &mut |o, _| {
        if o.get("format").and_then(Value::as_str).is_some_and(|f| !known(f)) {
            o.remove("format");
        }
    });
    schema
}

/// Keywords whose value is a map of names to schemas.
const SCHEMA_MAPS: [&str; 5] = ["properties", "patternProperties", "$defs", "definitions", "dependentSchemas"];
/// Keywords whose value is one schema.
const SCHEMAS: [&str; 9] = ["additionalProperties", "items", "additionalItems", "contains", "not", "if", "then", "else", "propertyNames"];
/// Keywords whose value is a list of schemas.
const SCHEMA_LISTS: [&str; 3] = ["anyOf", "oneOf", "prefixItems"];

/// Visit every schema object in `schema` (keywords' values, never data such as `const` or
/// `enum`), telling `visit` whether it is a direct part of an `allOf`.
fn walk(schema: &mut Value, in_all_of: bool, visit: &mut dyn FnMut(&mut Map<String, Value>, bool)) {
    let Some(o) = schema.as_object_mut() else { return };
    visit(o, in_all_of);
    for key in SCHEMA_MAPS {
        if let Some(Value::Object(m)) = o.get_mut(key) {
            m.values_mut().for_each(|s| walk(s, false, visit));
        }
    }
    for key in SCHEMAS {
        match o.get_mut(key) {
            Some(Value::Array(list)) if key == "items" => list.iter_mut().for_each(|s| walk(s, false, visit)),
            Some(s) => walk(s, false, visit),
            None => {}
        }
    }
    for key in SCHEMA_LISTS {
        if let Some(Value::Array(list)) = o.get_mut(key) {
            list.iter_mut().for_each(|s| walk(s, false, visit));
        }
    }
    if let Some(Value::Array(list)) = o.get_mut("allOf") {
        list.iter_mut().for_each(|s| walk(s, true, visit));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn every_open_object_schema_is_closed_and_nothing_else_changes() {
        let schema = json!({
            "type": "object",
            "properties": {
                "title": {"type": "string"},
                // a property named like a keyword is a name, not a keyword
                "properties": {"type": "object", "properties": {"x": {"type": "integer"}}},
                "tags": {"type": "array", "items": {"type": "object", "properties": {"k": {"const": {"type": "object"}}}}},
                "open": {"type": "object", "additionalProperties": {"type": "integer"}},
                "either": {"anyOf": [{"type": "object"}, {"type": "null"}]},
                "ref": {"$ref": "#/$defs/addr"},
            },
            "allOf": [{"properties": {"a": {"type": "object"}}}],
            "$defs": {"addr": {"type": ["object", "null"], "properties": {"city": {"type": "string"}}}},
        });
        let c = closed(schema);
        let closed_at = |ptr: &str| c.pointer(ptr).unwrap().get("additionalProperties").cloned();
        for ptr in
            ["", "/properties/properties", "/properties/tags/items", "/properties/either/anyOf/0", "/$defs/addr", "/allOf/0/properties/a"]
        {
            assert_eq!(closed_at(ptr), Some(json!(false)), "{ptr}");
        }
        assert_eq!(closed_at("/properties/open"), Some(json!({"type": "integer"})), "a stated rule is kept");
        assert_eq!(closed_at("/allOf/0"), None, "a conjunction's parts stay open");
        assert_eq!(closed_at("/properties/title"), None, "strings are not objects");
        assert_eq!(c.pointer("/properties/tags/items/properties/k/const"), Some(&json!({"type": "object"})), "data is data");
        assert!(c.pointer("/properties/additionalProperties").is_none(), "the properties map gains no property");
    }

    #[test]
    fn only_unknown_formats_are_dropped() {
        let schema = json!({
            "type": "object",
            "properties": {
                "when": {"type": "string", "format": "date-time"},
                "secret": {"type": "string", "format": "password"},
                "files": {"type": "array", "items": {"type": "string", "format": "file-path"}},
                "format": {"const": {"format": "password"}},
            },
        });
        let d = unknown_formats_dropped(schema, &|f| f == "date-time");
        assert_eq!(d.pointer("/properties/when/format"), Some(&json!("date-time")));
        assert_eq!(d.pointer("/properties/secret"), Some(&json!({"type": "string"})));
        assert_eq!(d.pointer("/properties/files/items"), Some(&json!({"type": "string"})));
        assert_eq!(d.pointer("/properties/format/const"), Some(&json!({"format": "password"})), "data is data");
    }
}
