//! Who may open a shell, exec or port-forward session into a workspace.
//!
//! The workspace's owner always may. Another user may only when they are an
//! admin or owner of the organisation AND the organisation's setting "admins may
//! open shells into others' workspaces" is on (default off); such a session is
//! always audited. A member never learns that another user's workspace exists
//! (`not_found`); an admin without the setting is told why (`permission_denied`).
//!
//! The streaming endpoints call [`session_access_allowed`] with the caller's
//! role (looked up for this request), whether they own the workspace and the
//! organisation's setting ([`lapdev_db::OrgSettings`]).

use lapdev_common::role::Role;
use lapdev_hrpc::HrpcError;

/// The answer of [`session_access_allowed`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// The caller owns the workspace.
    AllowOwner,
    /// An admin or owner opens a session into someone else's workspace, as the
    /// organisation allows: audit it (`workspace.session.admin`) before opening.
    AllowAdminAudited,
    /// Refused without saying the workspace exists (members).
    DenyNotFound,
    /// Refused: admins may not, the organisation's setting is off.
    DenyPermission,
}

impl Decision {
    /// Whether the session may open.
    pub fn allowed(self) -> bool {
        matches!(self, Decision::AllowOwner | Decision::AllowAdminAudited)
    }

    /// The refusal as an HRPC error (`None` when allowed).
    pub fn refusal(self, workspace: &str) -> Option<HrpcError> {
        match self {
            Decision::AllowOwner | Decision::AllowAdminAudited => None,
            Decision::DenyNotFound => Some(HrpcError::not_found(format!(
                "workspace {workspace:?} not found"
            ))),
            Decision::DenyPermission => Some(
                HrpcError::permission_denied(
                    "admins may open sessions into other users' workspaces only when the \
                     organisation allows it (lapdev org set --admins-may-open-shells true, \
                     owners only)",
                )
                .with_details(serde_json::json!({"setting": "admins_may_open_shells"})),
            ),
        }
    }
}

/// See the module docs.
pub fn session_access_allowed(
    role: Role,
    is_owner: bool,
    admins_may_open_shells: bool,
) -> Decision {
    if is_owner {
        return Decision::AllowOwner;
    }
    match role {
        Role::Member => Decision::DenyNotFound,
        Role::Admin | Role::Owner if admins_may_open_shells => Decision::AllowAdminAudited,
        Role::Admin | Role::Owner => Decision::DenyPermission,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owners_of_the_workspace_always_may() {
        for role in Role::ALL {
            for setting in [false, true] {
                assert_eq!(
                    session_access_allowed(role, true, setting),
                    Decision::AllowOwner
                );
            }
        }
    }

    #[test]
    fn others_only_as_admins_with_the_setting_on() {
        let table = [
            (Role::Member, false, Decision::DenyNotFound),
            (Role::Member, true, Decision::DenyNotFound),
            (Role::Admin, false, Decision::DenyPermission),
            (Role::Admin, true, Decision::AllowAdminAudited),
            (Role::Owner, false, Decision::DenyPermission),
            (Role::Owner, true, Decision::AllowAdminAudited),
        ];
        for (role, setting, want) in table {
            let got = session_access_allowed(role, false, setting);
            assert_eq!(got, want, "{role} with setting {setting}");
            assert_eq!(got.allowed(), got.refusal("w").is_none());
        }
        assert_eq!(
            Decision::DenyNotFound.refusal("w").unwrap().code,
            lapdev_hrpc::Code::NotFound
        );
        assert_eq!(
            Decision::DenyPermission.refusal("w").unwrap().code,
            lapdev_hrpc::Code::PermissionDenied
        );
    }
}
