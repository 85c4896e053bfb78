//! Events as the kubelet, the scheduler and the controllers record them:
//! core/v1 `Event` objects in the involved object's namespace, with
//! `involvedObject`, `source`, `count`, `firstTimestamp` and `lastTimestamp`.
//!
//! A repeat of the same event (same object, source, type, reason and message)
//! bumps `count` and `lastTimestamp` of the stored one instead of creating a new
//! object, as client-go's event correlator does; a new message is a new event.

use std::sync::atomic::{AtomicU64, Ordering};

use serde_json::{Value, json};

use crate::error::ApiError;
use crate::handle::DoubleHandle;
use crate::resource;
use crate::selector::{FieldSelector, LabelSelector};
use crate::store::WriteCtx;

/// Who reports an event (`source.component`, and the node as `source.host`).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Source<'a> {
    /// `kubelet`, `default-scheduler`, `attachdetach-controller`, ...
    pub component: &'a str,
    /// The node of a kubelet.
    pub host: Option<&'a str>,
}

impl Source<'_> {
    pub(crate) const SCHEDULER: Source<'static> = Source {
        component: "default-scheduler",
        host: None,
    };
}

/// `Normal` or `Warning`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Normal,
    Warning,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Self::Normal => "Normal",
            Self::Warning => "Warning",
        }
    }
}

/// Event names are `<object>.<hex timestamp>` as client-go makes them; the
/// counter keeps two events of the same nanosecond apart.
fn event_name(object: &str) -> String {
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let nanos = chrono::Utc::now()
        .timestamp_nanos_opt()
        .map_or(0, i64::unsigned_abs);
    let n = nanos.wrapping_add(SEQ.fetch_add(1, Ordering::Relaxed));
    format!("{object}.{n:x}")
}

fn str_at<'a>(v: &'a Value, pointer: &str) -> &'a str {
    v.pointer(pointer).and_then(Value::as_str).unwrap_or("")
}

impl DoubleHandle {
    /// Records an event about `object` (a stored object as JSON), or counts a
    /// repeat of the same one. `field_path` names a container, e.g.
    /// `spec.containers{main}`.
    pub(crate) fn record_event(
        &self,
        object: &Value,
        source: Source<'_>,
        kind: Kind,
        reason: &str,
        message: &str,
        field_path: Option<&str>,
    ) -> Result<(), ApiError> {
        let events = resource::core_resource("events");
        let ns = match str_at(object, "/metadata/namespace") {
            "" => "default",
            ns => ns,
        };
        let name = str_at(object, "/metadata/name");
        let uid = str_at(object, "/metadata/uid");
        let fields = FieldSelector::parse(&format!("involvedObject.uid={uid}"), events)?;
        let same = self
            .store
            .list(
                events,
                Some(ns),
                &LabelSelector::default(),
                &fields,
                None,
                None,
            )
            .items
            .into_iter()
            .map(|e| e.value())
            .find(|e| {
                str_at(e, "/reason") == reason
                    && str_at(e, "/message") == message
                    && str_at(e, "/type") == kind.as_str()
                    && str_at(e, "/source/component") == source.component
                    && str_at(e, "/involvedObject/fieldPath") == field_path.unwrap_or("")
            });
        let now = crate::store::now();
        if let Some(existing) = same {
            let event_name = str_at(&existing, "/metadata/name").to_owned();
            self.store
                .mutate(events, ns, &event_name, source.component, "", |e| {
                    let count = e.get("count").and_then(Value::as_i64).unwrap_or(1);
                    e["count"] = json!(count + 1);
                    e["lastTimestamp"] = json!(now);
                })?;
            return Ok(());
        }
        let mut involved = json!({
            "kind": object.get("kind").cloned().unwrap_or(Value::Null),
            "namespace": ns,
            "name": name,
            "uid": uid,
            "apiVersion": object.get("apiVersion").cloned().unwrap_or(Value::Null),
            "resourceVersion": str_at(object, "/metadata/resourceVersion"),
        });
        if let Some(path) = field_path {
            involved["fieldPath"] = json!(path);
        }
        let mut src = json!({"component": source.component});
        if let Some(host) = source.host {
            src["host"] = json!(host);
        }
        let event = json!({
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"name": event_name(name), "namespace": ns},
            "involvedObject": involved,
            "reason": reason,
            "message": message,
            "source": src,
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
            "type": kind.as_str(),
            "eventTime": null,
            "reportingComponent": source.component,
            "reportingInstance": source.host.unwrap_or(""),
        });
        self.store
            .create(events, ns, event, &WriteCtx::by(source.component))?;
        Ok(())
    }
}
