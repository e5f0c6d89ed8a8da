//! Why a change to the apps (a deploy, a rollback, a removal) was refused.
//!
//! The admin API answers with a status code chosen by variant (see
//! `refusal` in `admin/api.rs`), and the CLI's exit codes rest on those
//! codes, so the kind of a refusal is part of the API: it is a type here,
//! never read back from an error's text. Each variant names its cause and
//! what the caller may do about it, in the manner of rustls' `Error`.
//!
//! Messages are those an operator reads: the whole chain of an error
//! (`{:#}` of an `anyhow::Error` made from it) is the text the API returns.

use crate::runtime::load::LoadError;

/// The operation a [`DeployError`] refused, for the advice its message
/// gives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Change {
    /// A deploy (`PUT /v1/apps/{name}`).
    Deploy,
    /// A rollback (`POST /v1/apps/{name}/rollback`).
    Rollback,
    /// A removal (`DELETE /v1/apps/{name}`).
    Remove,
}

impl Change {
    /// What to do instead when the app belongs to the configuration file.
    fn config_advice(self) -> &'static str {
        match self {
            Change::Deploy => "change it there and `sockgate reload` (or pick another name)",
            Change::Rollback | Change::Remove => "remove it there and `sockgate reload`",
        }
    }

    /// What the missing state directory was needed for.
    fn state_purpose(self) -> &'static str {
        match self {
            Change::Deploy => " to deploy into",
            Change::Rollback | Change::Remove => "",
        }
    }
}

/// Why [`Gateway::deploy`](super::Gateway::deploy),
/// [`Gateway::rollback`](super::Gateway::rollback) or
/// [`Gateway::remove`](super::Gateway::remove) changed nothing. Whatever the
/// variant, the version serving before keeps serving and nothing was
/// persisted.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DeployError {
    /// No app of this name runs, nor failed to start. The caller may list
    /// the apps (`GET /v1/apps`) and check the name.
    #[error("no app `{name}`")]
    NoSuchApp {
        /// The name asked for.
        name: String,
    },

    /// No deployed app of this name is persisted (a rollback of an app
    /// that was never deployed, or that belongs to the configuration
    /// file). Only deployed apps have versions to go back to.
    #[error("no deployed app `{name}`")]
    NotDeployed {
        /// The name asked for.
        name: String,
    },

    /// The app is defined in the configuration file, which owns it: the
    /// admin API may neither replace nor remove it. The operator edits the
    /// file (and reloads it), or deploys under another name.
    #[error("app `{name}` is defined in the configuration file; {}", .change.config_advice())]
    OwnedByConfig {
        /// The app.
        name: String,
        /// What was refused.
        change: Change,
    },

    /// The component is larger than
    /// [`MAX_COMPONENT_BYTES`](super::MAX_COMPONENT_BYTES). The caller may
    /// shrink it (strip debug sections, optimise for size).
    #[error(
        "the component is {} MiB, over the {} MiB limit",
        .size >> 20,
        .limit >> 20
    )]
    TooLarge {
        /// Its size in bytes.
        size: usize,
        /// The limit in bytes.
        limit: usize,
    },

    /// The app's settings, or its claims on names, were refused: a bad
    /// name or value, a setting over the operator's ceilings, a domain
    /// another app serves, TLS settings on a gateway without `[tls]`. The
    /// message names the setting and the bound; the caller fixes the
    /// settings and deploys again.
    #[error(transparent)]
    InvalidSettings(anyhow::Error),

    /// The component cannot be loaded: not WebAssembly, a core module, a
    /// world the gateway does not serve, imports it does not provide, or
    /// it failed to compile. The caller fixes the component.
    #[error("app `{app}`")]
    InvalidComponent {
        /// The app.
        app: String,
        /// Why the component was refused.
        #[source]
        source: LoadError,
    },

    /// The app's TCP address cannot be listened on (in use, not a local
    /// address, a privileged port). The caller picks another `listen`
    /// address, or frees this one.
    #[error(transparent)]
    Bind(anyhow::Error),

    /// The TLS side refused the app's names or protocols when it was
    /// added (after the checks above passed). The message says which.
    #[error(transparent)]
    Tls(anyhow::Error),

    /// The gateway runs without a state directory (it has no admin API),
    /// so there is nothing to deploy into or roll back from.
    #[error("this gateway has no state directory{}", .change.state_purpose())]
    NoStateDirectory {
        /// What was refused.
        change: Change,
    },

    /// A rollback of an app that has no version before the current one.
    /// The caller deploys the version wanted instead.
    #[error("app `{name}` has no version before version {current}")]
    NoPreviousVersion {
        /// The app.
        name: String,
        /// The version serving.
        current: u64,
    },

    /// The state directory could not be read or written: a record or
    /// blob unreadable, damaged or replaced, a disk full or read-only. The
    /// message names the file; the operator repairs the directory (a
    /// damaged version is deployed anew).
    #[error(transparent)]
    State(anyhow::Error),

    /// Cluster mode: etcd did not answer, another change of the app won
    /// the race, or too few nodes hold the new component. Nothing changed
    /// on any node.
    #[error(transparent)]
    Cluster(#[from] crate::cluster::ClusterError),

    /// A bug in sockgate (a panic while loading or starting the app). The
    /// gateway and the other apps go on; the caller reports it.
    #[error(transparent)]
    Internal(anyhow::Error),
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What the admin API returns for `err`.
    fn api_text(err: DeployError) -> String {
        format!("{:#}", anyhow::Error::new(err))
    }

    #[test]
    fn messages_are_those_operators_and_scripts_knew() {
        let name = || "echo".to_owned();
        let table = [
            (DeployError::NoSuchApp { name: name() }, "no app `echo`"),
            (
                DeployError::NotDeployed { name: name() },
                "no deployed app `echo`",
            ),
            (
                DeployError::OwnedByConfig {
                    name: name(),
                    change: Change::Deploy,
                },
                "app `echo` is defined in the configuration file; change it there and \
                 `sockgate reload` (or pick another name)",
            ),
            (
                DeployError::OwnedByConfig {
                    name: name(),
                    change: Change::Remove,
                },
                "app `echo` is defined in the configuration file; remove it there and `sockgate \
                 reload`",
            ),
            (
                DeployError::TooLarge {
                    size: 65 << 20,
                    limit: 64 << 20,
                },
                "the component is 65 MiB, over the 64 MiB limit",
            ),
            (
                DeployError::NoStateDirectory {
                    change: Change::Deploy,
                },
                "this gateway has no state directory to deploy into",
            ),
            (
                DeployError::NoStateDirectory {
                    change: Change::Rollback,
                },
                "this gateway has no state directory",
            ),
            (
                DeployError::NoPreviousVersion {
                    name: name(),
                    current: 1,
                },
                "app `echo` has no version before version 1",
            ),
            // A wrapped error keeps its whole chain, contexts first.
            (
                DeployError::InvalidSettings(
                    anyhow::anyhow!("`instances` is 0").context("app `echo`"),
                ),
                "app `echo`: `instances` is 0",
            ),
            (
                DeployError::InvalidComponent {
                    app: name(),
                    source: LoadError::NotWasm {
                        path: "x.wasm".into(),
                    },
                },
                "app `echo`: x.wasm is not a WebAssembly file (it does not start with the \
                 `\\0asm` magic): point the app at the `.wasm` component your guest build \
                 produced",
            ),
        ];
        for (err, expected) in table {
            assert_eq!(api_text(err), expected);
        }
    }
}
