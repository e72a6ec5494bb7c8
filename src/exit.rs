//! How a command of the `outbox-relay` binary ends: the one mapping from its
//! result to the process exit code (0 done; 1 an error at run time, problems
//! found by `check`, an unhealthy relay; 2 an invalid configuration or usage;
//! 3 the replication slot is lost)
//! and the one wording of a configuration that did not load.

use crate::config::ConfigError;

/// Why a command failed; decides its exit code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// An error at run time, problems found by `check`, an unhealthy relay: exit 1.
    Failed,
    /// An invalid configuration or usage, which will not fix itself: exit 2.
    Invalid,
    /// The replication slot is lost (`run`): exit 3, which the systemd unit
    /// does not restart; `outbox-relay recover` is the way on.
    SlotLost,
}

impl Failure {
    /// The failure of a library error: by its kind.
    pub fn of(e: &crate::Error) -> Failure {
        match e.kind() {
            crate::ErrorKind::Config => Failure::Invalid,
            crate::ErrorKind::SlotLost => Failure::SlotLost,
            _ => Failure::Failed,
        }
    }
}

/// The exit code of a command's result, for every command: 0 on success, 1
/// for [`Failure::Failed`], 2 for [`Failure::Invalid`]. (Usage errors never
/// get here: clap reports them and exits 2 itself.)
pub fn code(result: &Result<(), Failure>) -> u8 {
    match result {
        Ok(()) => 0,
        Err(Failure::Failed) => 1,
        Err(Failure::Invalid) => 2,
        Err(Failure::SlotLost) => 3,
    }
}

/// The words for a configuration that did not load, the same for every
/// command: `invalid configuration` and then one line per problem. Each
/// command puts its own prefix before it (`outbox-relay: ` on stderr,
/// `PROBLEM ` in `check`'s report on stdout).
pub fn invalid_config(e: &ConfigError) -> String {
    format!("invalid configuration\n{e}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn success_is_0_failure_1_invalid_2() {
        assert_eq!(code(&Ok(())), 0);
        assert_eq!(code(&Err(Failure::Failed)), 1);
        assert_eq!(code(&Err(Failure::Invalid)), 2);
        assert_eq!(code(&Err(Failure::SlotLost)), 3);
    }

    #[test]
    fn an_invalid_configuration_is_named_then_its_problems_follow() {
        let e = ConfigError::Io {
            path: "/nowhere/relay.toml".into(),
            source: std::io::Error::from(std::io::ErrorKind::NotFound),
        };
        let text = invalid_config(&e);
        assert!(text.starts_with("invalid configuration\n/nowhere/relay.toml: cannot read the config file"), "{text}");
    }
}
