//! Why a workspace is in its status: a machine-readable reason beside the human
//! message.
//!
//! The nine [`WorkspaceStatus`](crate::status::WorkspaceStatus) values stay fixed
//! (managers and servers are upgraded at different times, and an unknown status is
//! an error by design); what a cluster did to a workspace is told by a reason
//! instead. Reasons are CamelCase like Kubernetes' own (`Evicted`, `OOMKilled`).
//!
//! Unlike statuses, a reason this build does not know is kept as
//! [`WorkspaceReason::Other`] rather than refused: a newer manager may report a
//! reason an older server has never heard of, and the workspace's status must
//! still be recorded.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

macro_rules! reasons {
    ( $( $(#[$meta:meta])* $variant:ident => $text:literal, )+ ) => {
        /// Why a workspace is in its status. See the module docs.
        #[derive(Debug, Clone, PartialEq, Eq, Hash)]
        pub enum WorkspaceReason {
            $( $(#[$meta])* $variant, )+
            /// A reason this build does not know, kept as sent.
            Other(String),
        }

        impl WorkspaceReason {
            /// Every known reason, in declaration order.
            pub const KNOWN: &'static [WorkspaceReason] = &[ $( WorkspaceReason::$variant, )+ ];

            /// The string stored in the database and sent over the wire.
            pub fn as_str(&self) -> &str {
                match self {
                    $( WorkspaceReason::$variant => $text, )+
                    WorkspaceReason::Other(s) => s,
                }
            }

            /// Parses a reason; unknown text becomes [`WorkspaceReason::Other`].
            pub fn parse(s: &str) -> WorkspaceReason {
                match s {
                    $( $text => WorkspaceReason::$variant, )+
                    other => WorkspaceReason::Other(other.to_owned()),
                }
            }
        }
    };
}

reasons! {
    /// The scheduler found no node for the pod (`PodScheduled=False`, `Unschedulable`).
    Unschedulable => "Unschedulable",
    /// The home volume is not bound yet, and not because of `WaitForFirstConsumer`.
    WaitingForVolume => "WaitingForVolume",
    /// The volume could not be attached or mounted (`FailedAttachVolume`, `FailedMount`).
    VolumeAttachFailing => "VolumeAttachFailing",
    /// The kubelet cannot pull the image (`ErrImagePull` and `ImagePullBackOff`, one reason).
    ImagePullFailing => "ImagePullFailing",
    /// The image reference is malformed (`InvalidImageName`): retrying cannot help.
    InvalidImage => "InvalidImage",
    /// The container keeps exiting and the kubelet backs off restarting it.
    CrashLooping => "CrashLooping",
    /// The container was killed for exceeding its memory limit.
    OOMKilled => "OOMKilled",
    /// The kubelet evicted the pod (node pressure, preemption, API eviction).
    Evicted => "Evicted",
    /// The pod ended (`Succeeded` or `Failed`) for another reason.
    PodEnded => "PodEnded",
    /// The pod's node is not Ready; its pod cannot be stopped until it returns or
    /// is declared lost.
    NodeLost => "NodeLost",
    /// No progress (scheduled, image pulled, container started) was made for the
    /// configured time.
    StartDeadlineExceeded => "StartDeadlineExceeded",
    /// The cluster refused to create the objects (quota, admission, throttling); the
    /// conductor retries with backoff.
    CreateRefused => "CreateRefused",
    /// The cluster autoscaler is adding a node for the pod.
    WaitingForScaleUp => "WaitingForScaleUp",
    /// The cluster autoscaler declined to add a node for the pod
    /// (`NotTriggerScaleUp`: no node group fits it, or the groups are at their
    /// maximum); the message carries its reasons. Terminal for the conductor
    /// (recreating the pod cannot change the autoscaler's mind); the pod stays,
    /// so a later scale-up still starts it, and the workspace becomes `running`
    /// when its manager reports the pod running.
    ScaleUpDeclined => "ScaleUpDeclined",
    /// The workspace was forgotten while its cluster was unreachable; its objects
    /// are removed when the cluster's manager reconnects.
    ClusterGone => "ClusterGone",
    /// Stopped by the server: nobody used it for its idle timeout.
    IdleStopped => "IdleStopped",
    /// Stopped by the server: it ran for the organisation's maximum lifetime.
    LifetimeExpired => "LifetimeExpired",
    /// Still running, but its lifetime ends soon (the notice before a
    /// `LifetimeExpired` stop).
    LifetimeEnding => "LifetimeEnding",
}

impl WorkspaceReason {
    /// True when the reason says the workspace's pod has ended for good, so a
    /// workspace that should run needs a new pod (self-repair).
    pub fn pod_ended(&self) -> bool {
        matches!(
            self,
            WorkspaceReason::Evicted | WorkspaceReason::PodEnded | WorkspaceReason::OOMKilled
        )
    }

    /// True when retrying the same spec cannot succeed: the user has to change
    /// something (or start again explicitly).
    pub fn is_terminal(&self) -> bool {
        matches!(
            self,
            WorkspaceReason::InvalidImage
                | WorkspaceReason::StartDeadlineExceeded
                | WorkspaceReason::ScaleUpDeclined
        )
    }
}

impl fmt::Display for WorkspaceReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for WorkspaceReason {
    type Err = std::convert::Infallible;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(WorkspaceReason::parse(s))
    }
}

impl Serialize for WorkspaceReason {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for WorkspaceReason {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Ok(WorkspaceReason::parse(&s))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_reasons_round_trip() {
        for r in WorkspaceReason::KNOWN {
            let json = serde_json::to_string(r).unwrap();
            assert_eq!(json, format!("\"{}\"", r.as_str()));
            assert_eq!(&serde_json::from_str::<WorkspaceReason>(&json).unwrap(), r);
            assert!(!matches!(
                WorkspaceReason::parse(r.as_str()),
                WorkspaceReason::Other(_)
            ));
        }
    }

    #[test]
    fn an_unknown_reason_is_kept_not_refused() {
        let r: WorkspaceReason = serde_json::from_str("\"SomethingNew\"").unwrap();
        assert_eq!(r, WorkspaceReason::Other("SomethingNew".into()));
        assert_eq!(serde_json::to_string(&r).unwrap(), "\"SomethingNew\"");
        assert!(!r.pod_ended());
    }

    #[test]
    fn classification() {
        assert!(WorkspaceReason::Evicted.pod_ended());
        assert!(!WorkspaceReason::ImagePullFailing.pod_ended());
        assert!(WorkspaceReason::InvalidImage.is_terminal());
        assert!(WorkspaceReason::ScaleUpDeclined.is_terminal());
        assert!(!WorkspaceReason::CrashLooping.is_terminal());
    }
}
