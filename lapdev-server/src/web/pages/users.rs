//! `GET /users` (admins and owners): the organisation's users with their
//! roles, what each role may do, and, for owners, adding a user, changing a
//! role, disabling and deleting (the `PeopleRpc` methods `lapdev user …`
//! calls; the server refuses an admin's attempt whatever the page shows).

use axum::extract::State;
use axum::response::Response;
use lapdev_common::role::Role;
use maud::{Markup, html};

use crate::AppState;
use crate::auth::api::{PeopleRpc as _, UserView};
use crate::web::assets::ADMIN_SCRIPT;
use crate::web::format::time;
use crate::web::layout::{self, Nav};
use crate::web::pages::workspaces::field;
use crate::web::session::Viewer;

const ROLES: [(Role, &str); 3] = [
    (
        Role::Member,
        "creates and uses their own workspaces; sees clusters' names, regions and free capacity",
    ),
    (
        Role::Admin,
        "clusters, providers, cluster tokens, every workspace, the users list and the audit log",
    ),
    (Role::Owner, "everything, including users and their roles"),
];

/// The page.
pub async fn page(State(state): State<AppState>, viewer: Viewer) -> Response {
    if !viewer.is_admin() {
        return layout::forbidden(&viewer, "The users page");
    }
    let owner = viewer.0.role.allows(Role::Owner);
    let list = state.people.list_users(viewer.context()).await;
    let body = html! {
        h1 { "Users" }
        @if owner {
            section aria-labelledby="add-user-heading" {
                h2 #add-user-heading { "Add a user" }
                form #create-user.card novalidate {
                    (field("user-name", "name", "Name", html! {
                        input #user-name name="name" type="text" required autocomplete="off"
                            aria-describedby="user-name-error";
                    }))
                    (field("user-email", "email", "Email (optional)", html! {
                        input #user-email name="email" type="email" autocomplete="off"
                            aria-describedby="user-email-error";
                    }))
                    (field("user-role", "role", "Role", role_select("user-role", "role", Role::Member)))
                    (field("user-password", "password", "Password (optional: OpenID sign-in only)", html! {
                        input #user-password name="password" type="password" autocomplete="new-password"
                            aria-describedby="user-password-error";
                    }))
                    p.form-error #create-user-error role="alert" {}
                    button type="submit" { "Add user" }
                }
            }
        }
        section aria-labelledby="users-heading" {
            h2 #users-heading { "Members of the organisation" }
            @match &list {
                Ok(list) => div.table-wrap tabindex="0" role="region" aria-label="Members" {
                    table #users {
                        thead { tr {
                            th scope="col" { "Name" } th scope="col" { "Email" }
                            th scope="col" { "Role" } th scope="col" { "State" }
                            th scope="col" { "Added" }
                            @if owner { th scope="col" { "Actions" } }
                        } }
                        tbody { @for u in list { (row(u, owner, u.id == viewer.0.user_id)) } }
                    }
                },
                Err(e) => p.form-error role="alert" { "The users could not be listed: " (e.message) },
            }
        }
        section aria-labelledby="roles-heading" {
            h2 #roles-heading { "Roles" }
            dl.facts {
                @for (role, what) in ROLES { dt { (role.as_str()) } dd { (what) } }
            }
        }
    };
    layout::page_with(
        "Users",
        "users",
        Some(&viewer),
        Nav::Users,
        body,
        Some(&ADMIN_SCRIPT),
    )
}

fn role_select(id: &str, name: &str, current: Role) -> Markup {
    html! {
        select id=(id) name=(name) {
            @for (role, _) in ROLES {
                option value=(role.as_str()) selected[role == current] { (role.as_str()) }
            }
        }
    }
}

fn row(u: &UserView, owner: bool, me: bool) -> Markup {
    let n = &u.name;
    html! {
        tr data-name=(n) {
            th scope="row" { (n) @if me { " (you)" } }
            td { (u.email.as_deref().unwrap_or("—")) }
            td.role {
                @if owner && !me {
                    select data-action="set-role" data-name=(n) aria-label={ "Role of " (n) } {
                        @for (role, _) in ROLES {
                            option value=(role.as_str()) selected[role == u.role] { (role.as_str()) }
                        }
                    }
                } @else { (u.role.as_str()) }
            }
            td.state { @if u.disabled { span.badge data-status="disabled" { "disabled" } } @else { "active" } }
            td { (time(Some(u.created_at))) }
            @if owner {
                td.actions {
                    @if !me {
                        @if u.disabled {
                            button type="button" data-action="enable-user" data-name=(n) { "Enable" span.sr-only { " " (n) } }
                        } @else {
                            button type="button" data-action="disable-user" data-name=(n) { "Disable" span.sr-only { " " (n) } }
                        }
                        button.danger type="button" data-action="delete-user" data-name=(n) { "Delete" span.sr-only { " " (n) } }
                    }
                }
            }
        }
    }
}
