//! One classification: every public error type of the library can be named from outside
//! it and answers `kind()`. (The exit code of each kind is checked against
//! docs/commands.md in `src/cli/exit.rs`; the Python class of each, and the situations
//! where the two front ends once disagreed, in `python/tests/test_error_kinds.py`.)

use sregistry::ErrorKind;

/// Danger: an embedder that cannot match on a cause it is handed
/// (`CacheError::Store(StoreError)` could not be named outside the crate), or an error
/// type without a kind that the front ends would have to classify by hand.
#[test]
fn every_public_error_type_is_nameable_and_has_a_kind() {
    fn has_kind<E: std::error::Error + Send + Sync + 'static>(_: fn(&E) -> ErrorKind) {}
    has_kind(sregistry::cache::CacheError::kind);
    has_kind(sregistry::cache::IndexError::kind);
    has_kind(sregistry::cache::lock::LockError::kind);
    has_kind(sregistry::cache::StoreError::kind);
    has_kind(sregistry::cache::ReplayError::kind);
    has_kind(sregistry::cache::IngestError::kind);
    has_kind(sregistry::cache::SettingsError::kind);
    has_kind(sregistry::remote::RemoteError::kind);
    has_kind(sregistry::convert::ConvertError::kind);
    has_kind(sregistry::format::sif::SifError::kind);
    has_kind(sregistry::format::digest::DigestError::kind);
    has_kind(sregistry::format::reference::ReferenceError::kind);
    has_kind(sregistry::format::units::UnitError::kind);
    has_kind(sregistry::settings::SettingError::kind);
    has_kind(sregistry::settings::ConfigError::kind);
    has_kind(sregistry::maintain::migrate::MigrateError::kind);
    has_kind(sregistry::maintain::migrate::OldDbError::kind);
    has_kind(sregistry::maintain::shared::SharedError::kind);
    has_kind(sregistry::maintain::group::GroupError::kind);
}

/// A wrapping variant answers its inner error's kind.
#[test]
fn a_wrapping_error_has_its_causes_kind() {
    let inner = sregistry::Reference::parse("Not A Name!").unwrap_err();
    assert_eq!(inner.kind(), ErrorKind::InvalidName);
    let wrapped = sregistry::remote::RemoteError::Reference(inner);
    assert_eq!(wrapped.kind(), ErrorKind::InvalidName);
    let pinned = sregistry::cache::CacheError::Pinned { name: "x".into() };
    assert_eq!(
        sregistry::remote::RemoteError::Cache(pinned).kind(),
        ErrorKind::Pinned
    );
}

/// Danger: a cause flattened into a string, which an embedding program cannot inspect:
/// a network failure carries the HTTP client's error as its source, and its message is
/// the one it always was.
#[test]
fn a_network_failure_carries_its_cause_as_a_source() {
    use std::error::Error as _;
    let dir = tempfile::tempdir().unwrap();
    let cache = sregistry::Cache::open(&dir.path().join("cache"), Default::default()).unwrap();
    // Nothing listens on the discard port of loopback: the connection is refused.
    let remote = sregistry::remote::RemoteRef::parse("http://127.0.0.1:9/x.sif").unwrap();
    let e = sregistry::remote::pull(&cache, &remote, None, &Default::default()).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::RemoteFailed, "{e}");
    let message = e.to_string();
    assert!(
        message.starts_with("cannot reach `http://127.0.0.1:9/x.sif`: "),
        "{message}"
    );
    let source = e.source().expect("the HTTP client's error as the source");
    assert!(
        message.contains(&source.to_string()),
        "{message} / {source}"
    );
}
