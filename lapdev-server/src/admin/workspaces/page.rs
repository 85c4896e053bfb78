//! `list_workspaces_page`: the workspace list a page at a time, for the
//! dashboard (an organisation may hold thousands).
//!
//! Pages are keyset pages in name order: a page starts after (or ends before)
//! a name, so a workspace created or deleted elsewhere never shifts another
//! page's rows the way an offset would. The clusters' names are read once per
//! page, not once per row.

use std::collections::HashMap;

use lapdev_db::PageCursor;
use lapdev_hrpc::{Context, HrpcError};
use lapdev_kube::db_error;
use serde::{Deserialize, Serialize};

use super::{WorkspaceService, WorkspaceView, only_owner, view_named, who};

/// The most workspaces one page holds (and the default).
pub const PAGE_SIZE: u64 = 50;

/// Which page `list_workspaces_page` returns.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkspacePageRequest {
    /// The names after this one (the first page when neither is set).
    #[serde(default)]
    pub after: Option<String>,
    /// The names before this one (when `after` is not set).
    #[serde(default)]
    pub before: Option<String>,
    /// At most this many (default and cap [`PAGE_SIZE`]).
    #[serde(default)]
    pub limit: Option<u64>,
}

/// One page of workspaces, in name order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkspacePage {
    pub workspaces: Vec<WorkspaceView>,
    /// Ask with `after` set to this for the next page (none: this is the last).
    pub next: Option<String>,
    /// Ask with `before` set to this for the previous page (none: this is the
    /// first).
    pub previous: Option<String>,
}

impl WorkspaceService {
    pub(super) async fn page(
        &self,
        ctx: &Context,
        request: WorkspacePageRequest,
    ) -> Result<WorkspacePage, HrpcError> {
        let who = who(ctx)?;
        let owner = only_owner(ctx)?;
        let limit = request.limit.unwrap_or(PAGE_SIZE).clamp(1, PAGE_SIZE);
        let cursor = match (&request.after, &request.before) {
            (Some(a), _) => PageCursor::After(a),
            (None, Some(b)) => PageCursor::Before(b),
            (None, None) => PageCursor::First,
        };
        // One more than a page says whether there is another in that direction.
        let mut rows = self
            .db
            .list_workspaces_page(who.organization_id, owner, cursor, limit + 1)
            .await
            .map_err(db_error)?;
        let more = rows.len() as u64 > limit;
        if more {
            match cursor {
                PageCursor::Before(_) => drop(rows.remove(0)),
                _ => rows.truncate(limit as usize),
            }
        }
        let (has_next, has_previous) = match cursor {
            PageCursor::First => (more, false),
            PageCursor::After(_) => (more, true),
            PageCursor::Before(_) => (true, more),
        };
        let next = has_next
            .then(|| rows.last().map(|w| w.name.clone()))
            .flatten();
        let previous = has_previous
            .then(|| rows.first().map(|w| w.name.clone()))
            .flatten();
        let clusters: HashMap<_, _> = self
            .db
            .list_clusters_including_deleted(who.organization_id)
            .await
            .map_err(db_error)?
            .into_iter()
            .map(|c| (c.id, c.name))
            .collect();
        let (mut timers, policy) = self.timers_and_policy(who.organization_id).await?;
        let workspaces = rows
            .into_iter()
            .map(|ws| {
                let cluster = ws.cluster_id.and_then(|id| clusters.get(&id).cloned());
                let timer = timers.remove(&ws.id);
                view_named(ws, timer, &policy, cluster)
            })
            .collect();
        Ok(WorkspacePage {
            workspaces,
            next,
            previous,
        })
    }
}
