//! Status and kind enums shared by the server, the conductor, the manager and the CLI.
//!
//! Every enum here is stored in the database and sent over the wire as a lowercase
//! string (`as_str`, `Display`, serde). Parsing is strict: an unknown string is a
//! [`ParseEnumError`] naming the enum and the bad value, never a silent default, so a
//! corrupt row or a newer peer is noticed instead of being misread.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// A string did not name any variant of a status or kind enum.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{value:?} is not a valid {type_name}")]
pub struct ParseEnumError {
    /// The Rust name of the enum that was being parsed, e.g. `ClusterStatus`.
    pub type_name: &'static str,
    /// The string that did not match any variant.
    pub value: String,
}

/// Declares a string-backed enum with `as_str`, `ALL`, `Display` and a strict `FromStr`.
///
/// The serde representation is derived separately with `rename_all = "lowercase"`; the
/// round-trip tests below check that both spellings agree.
macro_rules! string_enum {
    (
        $(#[$meta:meta])*
        pub enum $name:ident {
            $( $(#[$vmeta:meta])* $variant:ident => $text:literal, )+
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
        #[serde(rename_all = "lowercase")]
        pub enum $name {
            $( $(#[$vmeta])* $variant, )+
        }

        impl $name {
            /// Every variant, in declaration order.
            pub const ALL: &'static [$name] = &[ $( $name::$variant, )+ ];

            /// The string stored in the database and sent over the wire.
            pub const fn as_str(self) -> &'static str {
                match self {
                    $( $name::$variant => $text, )+
                }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl FromStr for $name {
            type Err = ParseEnumError;

            fn from_str(s: &str) -> Result<Self, Self::Err> {
                match s {
                    $( $text => Ok($name::$variant), )+
                    _ => Err(ParseEnumError {
                        type_name: stringify!($name),
                        value: s.to_owned(),
                    }),
                }
            }
        }
    };
}

string_enum! {
    /// Connection and lifecycle state of a registered Kubernetes cluster.
    pub enum ClusterStatus {
        /// Registered, but no manager has connected yet.
        Pending => "pending",
        /// A manager holds a live connection to the server.
        Connected => "connected",
        /// The manager was connected before and its connection is gone.
        Disconnected => "disconnected",
        /// The manager is connected but reports a problem (e.g. the Kubernetes API is down).
        Degraded => "degraded",
        /// A provider-managed cluster is being created.
        Provisioning => "provisioning",
        /// A provider-managed cluster is being deleted.
        Deleting => "deleting",
        /// A provider operation on the cluster failed.
        Error => "error",
    }
}

string_enum! {
    /// Observed status of a workspace, as driven by the conductor and reported by the manager.
    ///
    /// Which status may follow which is decided by the database layer
    /// (`lapdev_db::workspace_transition_allowed`), not here.
    pub enum WorkspaceStatus {
        /// Created in the database, not yet considered by the scheduler.
        Pending => "pending",
        /// The scheduler is choosing a cluster.
        Scheduling => "scheduling",
        /// Placed on a cluster; the manager is creating its objects.
        Creating => "creating",
        /// The workspace pod is running.
        Running => "running",
        /// The manager is stopping the pod (the volume is kept).
        Stopping => "stopping",
        /// No pod is running; the volume still exists.
        Stopped => "stopped",
        /// The manager is removing everything the workspace owns.
        Deleting => "deleting",
        /// Everything is gone; the row only remains for history.
        Deleted => "deleted",
        /// The last operation failed; `status_message` says why.
        Failed => "failed",
    }
}

string_enum! {
    /// The state a user asked a workspace to be in; the conductor drives the observed
    /// [`WorkspaceStatus`] towards it.
    pub enum DesiredState {
        /// The workspace should be running.
        Running => "running",
        /// The workspace should be stopped, keeping its volume.
        Stopped => "stopped",
        /// The workspace should be deleted with everything it owns.
        Deleted => "deleted",
    }
}

string_enum! {
    /// How locked down a cluster's workspace pods are, chosen per cluster by an
    /// admin. The workspace namespace's Pod Security label (`pod-security.kubernetes.io/enforce`)
    /// follows it, so the install manifest carries it.
    #[derive(Default)]
    pub enum SecurityProfile {
        /// Pod Security `baseline`: root allowed, the runtime's default capabilities,
        /// privilege escalation allowed (so `sudo` and `apt` work in common dev images).
        #[default]
        Baseline => "baseline",
        /// Pod Security `restricted`: non-root, all capabilities dropped, no privilege
        /// escalation, `RuntimeDefault` seccomp.
        Restricted => "restricted",
    }
}

string_enum! {
    /// What a cluster's free room counts, chosen per cluster by an admin.
    #[derive(Default)]
    pub enum CapacityMode {
        /// Allocatable minus Lapdev's own requests (the manifest needs nothing
        /// beyond reading nodes).
        #[default]
        Nodes => "nodes",
        /// Allocatable minus every pod's requests: the manifest adds a cluster-wide
        /// `pods` list/watch.
        Pods => "pods",
    }
}

string_enum! {
    /// Kind of a registered cloud provider that can list, create and delete clusters.
    ///
    /// Stored and serialised in lowercase (`"gcp"`), like every other enum here.
    pub enum K8sProviderKind {
        /// Google Cloud (GKE).
        #[allow(clippy::upper_case_acronyms)]
        GCP => "gcp",
    }
}

string_enum! {
    /// Cloud a cluster runs on, as detected by the manager from node provider ids and
    /// well-known labels.
    pub enum CloudProvider {
        /// Google Cloud (`gce://` provider ids).
        Gcp => "gcp",
        /// Amazon Web Services (`aws://` provider ids).
        Aws => "aws",
        /// Microsoft Azure (`azure://` provider ids).
        Azure => "azure",
        /// Anything the manager could not recognise (bare metal, kind, other clouds).
        Unknown => "unknown",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip<T>(all: &[T])
    where
        T: Copy + fmt::Debug + PartialEq + FromStr<Err = ParseEnumError> + fmt::Display,
        T: Serialize + for<'de> Deserialize<'de>,
    {
        for &v in all {
            let text = v.to_string();
            assert_eq!(text.parse::<T>().unwrap(), v);
            let json = serde_json::to_string(&v).unwrap();
            assert_eq!(json, format!("\"{text}\""), "serde and as_str disagree");
            assert_eq!(serde_json::from_str::<T>(&json).unwrap(), v);
        }
    }

    #[test]
    fn every_variant_round_trips() {
        round_trip(ClusterStatus::ALL);
        round_trip(WorkspaceStatus::ALL);
        round_trip(DesiredState::ALL);
        round_trip(K8sProviderKind::ALL);
        round_trip(CloudProvider::ALL);
        round_trip(SecurityProfile::ALL);
        round_trip(CapacityMode::ALL);
    }

    #[test]
    fn strings_are_distinct() {
        let mut seen = std::collections::HashSet::new();
        for s in WorkspaceStatus::ALL {
            assert!(seen.insert(s.as_str()));
        }
        assert_eq!(WorkspaceStatus::ALL.len(), 9);
        assert_eq!(ClusterStatus::ALL.len(), 7);
    }

    #[test]
    fn unknown_value_is_an_error_naming_it() {
        let err = "Running".parse::<WorkspaceStatus>().unwrap_err();
        assert_eq!(
            err,
            ParseEnumError {
                type_name: "WorkspaceStatus",
                value: "Running".into()
            }
        );
        assert!(err.to_string().contains("\"Running\""));
        assert!("".parse::<ClusterStatus>().is_err());
        assert!("GCP".parse::<K8sProviderKind>().is_err());
        assert!(serde_json::from_str::<CloudProvider>("\"openstack\"").is_err());
    }
}
