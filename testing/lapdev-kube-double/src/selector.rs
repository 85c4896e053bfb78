//! Label and field selectors, parsed and matched as the API server does.
//!
//! Label selectors support equality (`=`, `==`, `!=`) and set-based (`in`,
//! `notin`, `key`, `!key`) requirements joined by commas; `!=` and `notin` also
//! match objects that lack the label, as documented in "Labels and Selectors".
//! Field selectors support `=`, `==` and `!=` on `metadata.name`,
//! `metadata.namespace` and the few extra fields each resource allows; any other
//! field is a 400 `BadRequest`, like the real server.

use crate::error::ApiError;
use crate::object::Attrs;
use crate::resource::ResourceDef;

#[derive(Debug, Clone, PartialEq, Eq)]
enum LabelOp {
    Equals(String),
    NotEquals(String),
    In(Vec<String>),
    NotIn(Vec<String>),
    Exists,
    DoesNotExist,
}

/// A parsed label selector; the empty selector matches everything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LabelSelector {
    requirements: Vec<(String, LabelOp)>,
}

fn split_top_level(s: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut depth = 0i32;
    let mut start = 0;
    for (i, c) in s.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                out.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(&s[start..]);
    out
}

/// Whether `key` is a valid label key: an optional DNS subdomain prefix and a name.
pub fn valid_label_key(key: &str) -> bool {
    let (prefix, name) = match key.rsplit_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, key),
    };
    if let Some(p) = prefix
        && (p.is_empty() || !crate::validate::is_dns1123_subdomain(p))
    {
        return false;
    }
    !name.is_empty() && valid_label_value(name)
}

/// Whether `value` is a valid label value (may be empty).
pub fn valid_label_value(value: &str) -> bool {
    if value.is_empty() {
        return true;
    }
    let bytes = value.as_bytes();
    value.len() <= 63
        && bytes[0].is_ascii_alphanumeric()
        && bytes[bytes.len() - 1].is_ascii_alphanumeric()
        && bytes
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

fn parse_err(req: &str, why: &str) -> ApiError {
    ApiError::bad_request(format!("unable to parse requirement: {why}: {req:?}"))
}

fn parse_requirement(req: &str) -> Result<(String, LabelOp), ApiError> {
    let key_ok = |k: &str| {
        if valid_label_key(k) {
            Ok(k.to_owned())
        } else {
            Err(parse_err(req, "invalid label key"))
        }
    };
    let value_ok = |v: &str| {
        let v = v.trim();
        if valid_label_value(v) {
            Ok(v.to_owned())
        } else {
            Err(parse_err(req, "invalid label value"))
        }
    };
    if let Some(rest) = req.strip_prefix('!') {
        return Ok((key_ok(rest.trim())?, LabelOp::DoesNotExist));
    }
    if let Some(open) = req.find('(') {
        let close = req
            .rfind(')')
            .filter(|c| *c > open && req[c + 1..].trim().is_empty());
        let Some(close) = close else {
            return Err(parse_err(req, "found '(', expected ')'"));
        };
        let head: Vec<&str> = req[..open].split_whitespace().collect();
        let [key, op] = head.as_slice() else {
            return Err(parse_err(req, "expected a key and an operator"));
        };
        let values = req[open + 1..close]
            .split(',')
            .map(value_ok)
            .collect::<Result<Vec<_>, _>>()?;
        return match *op {
            "in" => Ok((key_ok(key)?, LabelOp::In(values))),
            "notin" => Ok((key_ok(key)?, LabelOp::NotIn(values))),
            _ => Err(parse_err(req, "unknown set operator")),
        };
    }
    if let Some((k, v)) = req.split_once("!=") {
        return Ok((key_ok(k.trim())?, LabelOp::NotEquals(value_ok(v)?)));
    }
    if let Some((k, v)) = req.split_once("==") {
        return Ok((key_ok(k.trim())?, LabelOp::Equals(value_ok(v)?)));
    }
    if let Some((k, v)) = req.split_once('=') {
        return Ok((key_ok(k.trim())?, LabelOp::Equals(value_ok(v)?)));
    }
    if req.contains(['<', '>']) {
        return Err(parse_err(
            req,
            "the operators < and > are not supported in this double",
        ));
    }
    Ok((key_ok(req)?, LabelOp::Exists))
}

impl LabelSelector {
    /// Parses a `labelSelector` query value.
    pub fn parse(s: &str) -> Result<Self, ApiError> {
        let s = s.trim();
        if s.is_empty() {
            return Ok(Self::default());
        }
        let requirements = split_top_level(s)
            .into_iter()
            .map(|r| parse_requirement(r.trim()))
            .collect::<Result<_, _>>()?;
        Ok(Self { requirements })
    }

    /// Whether the selector has no requirements.
    pub fn is_empty(&self) -> bool {
        self.requirements.is_empty()
    }

    /// Whether a stored object's labels satisfy the selector.
    pub fn matches(&self, attrs: &Attrs) -> bool {
        let get = |k: &str| attrs.labels.get(k).map(String::as_str);
        self.requirements.iter().all(|(key, op)| match op {
            LabelOp::Equals(v) => get(key) == Some(v.as_str()),
            LabelOp::NotEquals(v) => get(key) != Some(v.as_str()),
            LabelOp::In(vs) => get(key).is_some_and(|l| vs.iter().any(|v| v == l)),
            LabelOp::NotIn(vs) => get(key).is_none_or(|l| !vs.iter().any(|v| v == l)),
            LabelOp::Exists => get(key).is_some(),
            LabelOp::DoesNotExist => get(key).is_none(),
        })
    }
}

/// Which attribute a field requirement reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Field {
    Name,
    Namespace,
    /// Index into the resource's `extra_fields`.
    Extra(usize),
}

/// A parsed field selector; the empty selector matches everything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FieldSelector {
    requirements: Vec<(Field, bool, String)>,
}

impl FieldSelector {
    /// Parses a `fieldSelector` query value for `res`.
    pub fn parse(s: &str, res: &ResourceDef) -> Result<Self, ApiError> {
        let s = s.trim();
        if s.is_empty() {
            return Ok(Self::default());
        }
        let mut requirements = Vec::new();
        for req in s.split(',') {
            let (field, equal, value) = if let Some((f, v)) = req.split_once("!=") {
                (f, false, v)
            } else if let Some((f, v)) = req.split_once("==") {
                (f, true, v)
            } else if let Some((f, v)) = req.split_once('=') {
                (f, true, v)
            } else {
                return Err(ApiError::bad_request(format!(
                    "invalid selector: '{s}'; can't understand '{req}'"
                )));
            };
            let field = match field.trim() {
                "metadata.name" => Field::Name,
                "metadata.namespace" => Field::Namespace,
                other => match res.extra_fields.iter().position(|f| *f == other) {
                    Some(i) => Field::Extra(i),
                    None => {
                        return Err(ApiError::bad_request(format!(
                            "field label not supported: {other}"
                        )));
                    }
                },
            };
            requirements.push((field, equal, value.trim().to_owned()));
        }
        Ok(Self { requirements })
    }

    /// A selector for exactly one name (used for watches on a single object).
    pub fn name(name: &str) -> Self {
        Self {
            requirements: vec![(Field::Name, true, name.to_owned())],
        }
    }

    /// Whether the selector has no requirements.
    pub fn is_empty(&self) -> bool {
        self.requirements.is_empty()
    }

    /// Whether a stored object satisfies the selector.
    pub fn matches(&self, attrs: &Attrs) -> bool {
        self.requirements.iter().all(|(field, equal, value)| {
            let actual = match field {
                Field::Name => attrs.name.as_str(),
                Field::Namespace => attrs.namespace.as_str(),
                Field::Extra(i) => attrs.fields.get(*i).map_or("", String::as_str),
            };
            (actual == value) == *equal
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(labels: serde_json::Value) -> Attrs {
        let pods = crate::resource::core_resource("pods");
        Attrs::of(
            pods,
            &json!({"metadata": {"name": "p", "namespace": "ns", "labels": labels}, "status": {"phase": "Running"}}),
        )
    }

    #[test]
    fn equality_and_set_based_requirements() {
        let p = pod(json!({"app": "web", "tier": "front"}));
        let m = |s: &str| LabelSelector::parse(s).unwrap().matches(&p);
        assert!(m("app=web"));
        assert!(m("app==web,tier"));
        assert!(!m("app!=web"));
        assert!(m("env!=prod"), "!= matches a missing label");
        assert!(m("app in (web, api)"));
        assert!(!m("app notin (web)"));
        assert!(m("env notin (prod)"), "notin matches a missing label");
        assert!(m("!env"));
        assert!(!m("!app"));
        assert!(m(""));
    }

    #[test]
    fn bad_selectors_are_bad_requests() {
        for s in ["app in (web", "a b c", "-bad=1", "app=web!"] {
            let err = LabelSelector::parse(s).unwrap_err();
            assert_eq!(err.code, 400, "{s}");
        }
    }

    #[test]
    fn field_selectors() {
        let pods = crate::resource::core_resource("pods");
        let p = pod(json!({}));
        let m = |s: &str| FieldSelector::parse(s, pods).unwrap().matches(&p);
        assert!(m("metadata.name=p"));
        assert!(m("metadata.namespace!=other,status.phase=Running"));
        assert!(!m("metadata.name==q"));
        assert_eq!(
            FieldSelector::parse("spec.foo=1", pods).unwrap_err().code,
            400
        );
    }
}
