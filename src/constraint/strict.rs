//! OpenAI's `"strict": true`: the output holds only the properties a schema lists.
//!
//! JSON Schema lets an object without `additionalProperties` hold any other key as well, and
//! llguidance and llama.cpp follow it (a model asked for `{title, pages}` may add `author`).
//! OpenAI's strict mode accepts only schemas whose objects are all closed; specrun closes the
//! ones a strict schema leaves open instead of refusing them. Schemas under `allOf` are left
//! open (closing each part of a conjunction would refuse the keys the other parts add), their
//! own subschemas are still closed.

use serde_json::Value;

/// `schema` with `"additionalProperties": false` on every object schema that says nothing
/// about additional properties.
pub fn closed(mut schema: Value) -> Value {
    close(&mut schema, true);
    schema
}

/// Keywords whose value is a map of names to schemas.
const SCHEMA_MAPS: [&str; 5] = ["properties", "patternProperties", "$defs", "definitions", "dependentSchemas"];
/// Keywords whose value is one schema.
const SCHEMAS: [&str; 9] = ["additionalProperties", "items", "additionalItems", "contains", "not", "if", "then", "else", "propertyNames"];
/// Keywords whose value is a list of schemas.
const SCHEMA_LISTS: [&str; 3] = ["anyOf", "oneOf", "prefixItems"];

fn close(schema: &mut Value, this_one: bool) {
    let Some(o) = schema.as_object_mut() else { return };
    let is_object = o.contains_key("properties")
        || match o.get("type") {
            Some(Value::String(t)) => t == "object",
            Some(Value::Array(ts)) => ts.iter().any(|t| t == "object"),
            _ => false,
        };
    if this_one && is_object && !o.contains_key("additionalProperties") && !o.contains_key("unevaluatedProperties") {
        o.insert("additionalProperties".into(), Value::Bool(false));
    }
    for key in SCHEMA_MAPS {
        if let Some(Value::Object(m)) = o.get_mut(key) {
            m.values_mut().for_each(|s| close(s, true));
        }
    }
    for key in SCHEMAS {
        match o.get_mut(key) {
            Some(Value::Array(list)) if key == "items" => list.iter_mut().for_each(|s| close(s, true)),
            Some(s) => close(s, true),
            None => {}
        }
    }
    for key in SCHEMA_LISTS {
        if let Some(Value::Array(list)) = o.get_mut(key) {
            list.iter_mut().for_each(|s| close(s, true));
        }
    }
    if let Some(Value::Array(list)) = o.get_mut("allOf") {
        list.iter_mut().for_each(|s| close(s, false));
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
}
