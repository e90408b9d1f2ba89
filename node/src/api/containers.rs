//! `service create IMAGE`: the checks of a container service's request,
//! and the manager's resolution of its image reference to the digest the
//! service pins (as Docker's manager does), before anything is proposed.

use std::time::Duration;

use swarmlet_proto::api::CreateServiceRequest;
use swarmlet_proto::Image;

use super::server::ApiState;
use super::ApiError;
use crate::image::{ImageError, ImageRef};

/// The least memory a container may be limited to (Docker's minimum is
/// 6 MiB: below that the runtime itself does not fit).
pub const MIN_CONTAINER_MEMORY: u64 = 6 << 20;

/// The fewest CPUs `--limit-cpu` may name: 0.01 (a 1 ms quota per 100 ms
/// period, the kernel's minimum), in NanoCPUs.
pub const MIN_NANO_CPUS: u64 = 10_000_000;

/// The most CPUs `--limit-cpu` may name.
pub const MAX_CPUS: u64 = 1024;

/// How long the manager waits for the registry when it resolves an image.
const RESOLVE_TIMEOUT: Duration = Duration::from_secs(60);

/// The flags of a container service: no wasm-only setting, limits in range,
/// `--env` entries of the form KEY=VALUE.
pub fn check_container_request(req: &CreateServiceRequest) -> Result<(), ApiError> {
    let wasm_only = [
        (!req.allow_outbound.is_empty(), "--allow-outbound"),
        (req.instance_reuse.is_some(), "--instance-reuse"),
        (req.instance_concurrency.is_some(), "--instance-concurrency"),
        (
            req.max_concurrent_requests.is_some(),
            "--max-concurrent-requests",
        ),
    ];
    if let Some((_, flag)) = wasm_only.iter().find(|(set, _)| *set) {
        return Err(ApiError::bad_request(format!(
            "{flag} applies to wasm services only, and this service runs a container image; leave {flag} out"
        )));
    }
    if !req.wasm_digest.is_empty() {
        return Err(ApiError::bad_request(
            "the request names both a wasm component and an image; a service runs one of them",
        ));
    }
    if let Some(m) = req.limit_memory {
        if m < MIN_CONTAINER_MEMORY {
            return Err(ApiError::bad_request(format!(
                "--limit-memory {m} bytes is too small for a container; give at least 6MiB (e.g. 64m)"
            )));
        }
    }
    match req.limit_nano_cpus {
        Some(0) => {
            return Err(ApiError::bad_request(
                "--limit-cpu 0 would give the container no CPU time; give more than 0 (e.g. 0.5), or leave it out for no limit",
            ))
        }
        Some(n) if n > MAX_CPUS * 1_000_000_000 => {
            return Err(ApiError::bad_request(format!(
                "--limit-cpu {} is more than {MAX_CPUS} CPUs; give a number of CPUs such as 0.5 or 2",
                n as f64 / 1e9
            )))
        }
        Some(n) if n < MIN_NANO_CPUS => {
            return Err(ApiError::bad_request(format!(
                "--limit-cpu {} is less than 0.01 CPUs, the smallest CPU quota the kernel gives; give 0.01 or more",
                n as f64 / 1e9
            )))
        }
        _ => {}
    }
    for e in &req.env {
        check_env(e).map_err(ApiError::bad_request)?;
    }
    Ok(())
}

/// One `--env` entry: `KEY=VALUE` with a non-empty key without NUL.
pub fn check_env(e: &str) -> Result<(), String> {
    match e.split_once('=') {
        Some((k, v)) if !k.is_empty() && !k.contains('\0') && !v.contains('\0') => Ok(()),
        Some(_) => Err(format!(
            "--env {e:?}: the variable name is empty or holds a NUL byte; write KEY=VALUE"
        )),
        None => Err(format!(
            "--env {e:?} has no value; write KEY=VALUE (the CLI fills in KEY from its own environment when it is set there)"
        )),
    }
}

/// The service's image: the reference as the user gave it, pinned to the
/// digest the registry answers for it now (with `no_resolve`, only a
/// digest written in the reference itself). A reference the registry does
/// not know, or a registry that does not answer, is an error naming it;
/// nothing is created then.
pub async fn resolve_image(
    st: &ApiState,
    reference: &str,
    no_resolve: bool,
) -> Result<Image, ApiError> {
    let r = ImageRef::parse(reference).map_err(image_error)?;
    let digest = if no_resolve {
        r.digest().map(str::to_string)
    } else {
        let resolved = tokio::time::timeout(RESOLVE_TIMEOUT, st.images.resolve(&r))
            .await
            .map_err(|_| {
                ApiError::new(
                    504,
                    format!(
                        "registry {} did not answer within {}s while resolving {reference}; check that it is reachable from this manager, or create the service with --no-resolve-image",
                        r.registry(),
                        RESOLVE_TIMEOUT.as_secs()
                    ),
                )
            })?
            .map_err(image_error)?;
        if let Some(given) = r.digest() {
            // A reference by digest must resolve to itself.
            if given != resolved {
                return Err(ApiError::new(
                    502,
                    format!("registry {} answered {resolved} for {reference}, which names {given}; the registry holds other content under that digest", r.registry()),
                ));
            }
        }
        Some(resolved)
    };
    tracing::info!(%reference, ?digest, "image resolved for a new service");
    Ok(Image::Oci {
        reference: reference.to_string(),
        digest,
    })
}

/// An image error as an API answer: the message as is (it says what to
/// do), the status by whose fault it is.
pub fn image_error(e: ImageError) -> ApiError {
    let status = match &e {
        ImageError::BadReference { .. }
        | ImageError::BadArchive { .. }
        | ImageError::NoMatchingPlatform { .. }
        | ImageError::Unsupported { .. }
        | ImageError::BadLayer { .. } => 400,
        ImageError::AccessDenied { .. } => 403,
        ImageError::UnknownRepository { .. }
        | ImageError::UnknownTag { .. }
        | ImageError::NotFound { .. } => 404,
        ImageError::InUse { .. } => 409,
        ImageError::Unreachable { .. }
        | ImageError::NoAnswer { .. }
        | ImageError::Registry { .. }
        | ImageError::DigestMismatch { .. } => 502,
        ImageError::Disk { source, .. }
            if matches!(
                source.raw_os_error(),
                Some(libc::ENOSPC) | Some(libc::EDQUOT)
            ) =>
        {
            507
        }
        ImageError::Disk { .. } => 500,
    };
    ApiError::new(status, e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn oci(reference: &str) -> CreateServiceRequest {
        CreateServiceRequest {
            name: "web".into(),
            replicas: 1,
            image: Some(reference.into()),
            ..Default::default()
        }
    }

    #[test]
    fn wasm_only_flags_are_refused_on_an_image() {
        let mut r = oci("nginx:1.27");
        r.instance_reuse = Some(5);
        let e = check_container_request(&r).unwrap_err();
        assert_eq!(e.status, 400);
        assert!(e.message.contains("--instance-reuse"), "{}", e.message);
        let mut r = oci("nginx:1.27");
        r.allow_outbound = vec!["https://example.com".into()];
        assert!(check_container_request(&r)
            .unwrap_err()
            .message
            .contains("--allow-outbound"));
        let mut r = oci("nginx:1.27");
        r.instance_concurrency = Some(4);
        assert!(check_container_request(&r)
            .unwrap_err()
            .message
            .contains("--instance-concurrency"));
        let mut r = oci("nginx:1.27");
        r.max_concurrent_requests = Some(3);
        assert!(check_container_request(&r)
            .unwrap_err()
            .message
            .contains("--max-concurrent-requests"));
    }

    #[test]
    fn limits_are_checked() {
        let mut r = oci("nginx:1.27");
        r.limit_memory = Some(1 << 20);
        assert!(check_container_request(&r)
            .unwrap_err()
            .message
            .contains("at least 6MiB"));
        r.limit_memory = Some(6 << 20);
        assert!(check_container_request(&r).is_ok());
        r.limit_nano_cpus = Some(0);
        assert!(check_container_request(&r)
            .unwrap_err()
            .message
            .contains("no CPU time"));
        r.limit_nano_cpus = Some(1025 * 1_000_000_000);
        assert!(check_container_request(&r)
            .unwrap_err()
            .message
            .contains("1024 CPUs"));
        r.limit_nano_cpus = Some(1_000_000);
        assert!(check_container_request(&r)
            .unwrap_err()
            .message
            .contains("0.01"));
        r.limit_nano_cpus = Some(500_000_000);
        assert!(check_container_request(&r).is_ok());
    }

    #[test]
    fn env_entries_are_key_value() {
        assert!(check_env("A=1").is_ok());
        assert!(check_env("A=").is_ok());
        assert!(check_env("A=b=c").is_ok());
        assert!(check_env("A").unwrap_err().contains("KEY=VALUE"));
        assert!(check_env("=1").unwrap_err().contains("empty"));
        let mut r = oci("nginx");
        r.env = vec!["GOOD=1".into(), "bad".into()];
        assert!(check_container_request(&r).is_err());
    }

    #[test]
    fn image_errors_get_the_status_of_their_cause() {
        let e = image_error(ImageError::Unreachable {
            registry: "127.0.0.1:1".into(),
            detail: "connection refused".into(),
            hint: String::new(),
        });
        assert_eq!(e.status, 502);
        assert!(e.message.contains("127.0.0.1:1"), "{}", e.message);
        let e = image_error(ImageError::UnknownTag {
            reference: "x".into(),
            known: String::new(),
        });
        assert_eq!(e.status, 404);
        let e = image_error(ImageRef::parse("has space:v1").unwrap_err());
        assert_eq!(e.status, 400);
    }
}
