//! Fault injection, simulated RBAC denials and request counting, shared between
//! the HTTP server and the test handle.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::sync::Mutex;

use crate::error::ApiError;

/// A Kubernetes API verb, as RBAC and audit logs name them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Verb {
    /// Read one object.
    Get,
    /// Read a collection.
    List,
    /// Stream changes.
    Watch,
    /// POST a new object.
    Create,
    /// PUT a whole object.
    Update,
    /// PATCH an object (including server-side apply).
    Patch,
    /// DELETE one object.
    Delete,
    /// DELETE a collection.
    DeleteCollection,
}

impl Verb {
    /// The verb's name as RBAC spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Get => "get",
            Self::List => "list",
            Self::Watch => "watch",
            Self::Create => "create",
            Self::Update => "update",
            Self::Patch => "patch",
            Self::Delete => "delete",
            Self::DeleteCollection => "deletecollection",
        }
    }
}

impl fmt::Display for Verb {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How the API answers every request until changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FailureMode {
    /// Answer normally.
    #[default]
    None,
    /// Answer every request with this HTTP code and its `Status` (e.g. 500, 503).
    Fail(u16),
    /// Never answer: requests wait until the mode changes, then are served.
    Hang,
}

/// One injected failure, consumed by the first request it matches.
#[derive(Debug, Clone)]
struct Injected {
    code: u16,
    verb: Option<Verb>,
    resource: Option<String>,
}

#[derive(Debug, Default)]
struct State {
    fail_next: Vec<Injected>,
    latency: std::time::Duration,
    denied: HashSet<(Verb, String)>,
    counts: HashMap<(Verb, String), u64>,
    non_resource: u64,
}

/// The shared switches and counters.
#[derive(Debug)]
pub struct Control {
    state: Mutex<State>,
    mode: tokio::sync::watch::Sender<FailureMode>,
    drop_watches: tokio::sync::watch::Sender<u64>,
}

impl Default for Control {
    fn default() -> Self {
        Self {
            state: Mutex::default(),
            mode: tokio::sync::watch::channel(FailureMode::None).0,
            drop_watches: tokio::sync::watch::channel(0).0,
        }
    }
}

impl Control {
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Counts one resource request.
    pub fn count(&self, verb: Verb, resource: &str) {
        *self
            .state()
            .counts
            .entry((verb, resource.to_owned()))
            .or_default() += 1;
    }

    /// Counts one request outside the resource paths (discovery, `/version`).
    pub fn count_non_resource(&self) {
        self.state().non_resource += 1;
    }

    /// Resource requests seen for `verb`, over every resource.
    pub fn request_count(&self, verb: Verb) -> u64 {
        self.state()
            .counts
            .iter()
            .filter(|((v, _), _)| *v == verb)
            .map(|(_, n)| n)
            .sum()
    }

    /// Resource requests seen for `verb` on `resource` (plural, e.g. `pods`).
    pub fn request_count_for(&self, verb: Verb, resource: &str) -> u64 {
        self.state()
            .counts
            .get(&(verb, resource.to_owned()))
            .copied()
            .unwrap_or(0)
    }

    /// Requests outside the resource paths.
    pub fn non_resource_count(&self) -> u64 {
        self.state().non_resource
    }

    /// Resets every counter.
    pub fn reset_counts(&self) {
        let mut s = self.state();
        s.counts.clear();
        s.non_resource = 0;
    }

    /// The next `n` requests fail with `code`.
    pub fn fail_next(&self, n: usize, code: u16) {
        self.fail_next_matching(n, code, None, None);
    }

    /// The next `n` requests with this verb and/or on this resource fail with `code`.
    pub fn fail_next_matching(
        &self,
        n: usize,
        code: u16,
        verb: Option<Verb>,
        resource: Option<&str>,
    ) {
        let injected = Injected {
            code,
            verb,
            resource: resource.map(str::to_owned),
        };
        self.state()
            .fail_next
            .extend(std::iter::repeat_n(injected, n));
    }

    /// Delays every answer by `latency` (zero to stop).
    pub fn set_latency(&self, latency: std::time::Duration) {
        self.state().latency = latency;
    }

    /// Sets how every request is answered.
    pub fn set_failure_mode(&self, mode: FailureMode) {
        self.mode.send_replace(mode);
    }

    /// Denies `verb` on `resource` (plural) with 403 `Forbidden`.
    pub fn deny(&self, verb: Verb, resource: &str) {
        self.state().denied.insert((verb, resource.to_owned()));
    }

    /// Lifts a denial.
    pub fn allow(&self, verb: Verb, resource: &str) {
        self.state().denied.remove(&(verb, resource.to_owned()));
    }

    /// Whether `verb` on `resource` is denied.
    pub fn is_denied(&self, verb: Verb, resource: &str) -> bool {
        self.state().denied.contains(&(verb, resource.to_owned()))
    }

    /// Ends every open watch stream.
    pub fn drop_watches(&self) {
        self.drop_watches.send_modify(|g| *g += 1);
    }

    /// A receiver that changes whenever watches are to be dropped.
    pub fn watch_drops(&self) -> tokio::sync::watch::Receiver<u64> {
        self.drop_watches.subscribe()
    }

    /// Applies the injected failures to one request (`verb` and `resource` are
    /// `None` outside resource paths): waits out the latency and while hanging,
    /// then fails when told to.
    pub async fn gate(&self, verb: Option<Verb>, resource: Option<&str>) -> Result<(), ApiError> {
        let latency = self.state().latency;
        if !latency.is_zero() {
            tokio::time::sleep(latency).await;
        }
        let mut mode = self.mode.subscribe();
        loop {
            let current = *mode.borrow_and_update();
            match current {
                FailureMode::Hang => {
                    if mode.changed().await.is_err() {
                        return Err(ApiError::from_code(503));
                    }
                }
                FailureMode::Fail(code) => return Err(ApiError::from_code(code)),
                FailureMode::None => break,
            }
        }
        let mut s = self.state();
        let hit = s.fail_next.iter().position(|f| {
            f.verb.is_none_or(|v| Some(v) == verb)
                && f.resource.as_deref().is_none_or(|r| Some(r) == resource)
        });
        match hit {
            Some(i) => Err(ApiError::from_code(s.fail_next.remove(i).code)),
            None => Ok(()),
        }
    }
}
