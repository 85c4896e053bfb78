//! `list_workspaces_page`: the workspace list a page at a time, for the
//! dashboard (an organisation may hold thousands), optionally only one
//! cluster's (the cluster page's list).
//!
//! Pages are keyset pages in name order ([`crate::admin::paging`]). The
//! clusters' names are read once per page, not once per row.

use std::collections::HashMap;

use lapdev_hrpc::{Context, HrpcError};
use lapdev_kube::db_error;
use serde::{Deserialize, Serialize};

use super::{WorkspaceService, WorkspaceView, only_owner, view_named, who};
pub use crate::admin::paging::PAGE_SIZE;
use crate::admin::paging::{PageRequest, cut};

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
    /// Only the workspaces placed on this cluster (by name; an unknown name
    /// is `not_found`).
    #[serde(default)]
    pub cluster: Option<String>,
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
        let at = PageRequest {
            after: request.after,
            before: request.before,
            limit: request.limit,
        };
        let (cursor, limit) = (at.cursor(), at.limit());
        let cluster = match &request.cluster {
            Some(name) => Some(
                self.db
                    .get_cluster_by_name(who.organization_id, name)
                    .await
                    .map_err(db_error)?
                    .id,
            ),
            None => None,
        };
        // One more than a page says whether there is another in that direction.
        let rows = self
            .db
            .list_workspaces_page(who.organization_id, owner, cluster, cursor, limit + 1)
            .await
            .map_err(db_error)?;
        let (rows, next, previous) = cut(rows, cursor, limit, |w| &w.name);
        let clusters: HashMap<_, _> = self
            .db
            .list_clusters_including_deleted(who.organization_id)
            .await
            .map_err(db_error)?
            .into_iter()
            .map(|c| (c.id, c.name))
            .collect();
        let ids: Vec<_> = rows.iter().map(|w| w.id).collect();
        let mut timers = self
            .db
            .workspace_timers_of(who.organization_id, &ids)
            .await
            .map_err(db_error)?;
        let policy = self
            .db
            .workspace_policy(who.organization_id)
            .await
            .map_err(db_error)?;
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
