//! `swarmlet image ls / rm / pull / import`: this node's image store, as
//! `docker image` manages one engine's images. Node-local: they need no
//! swarm, and each node answers for itself.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::BodyExt as _;
use hyper::body::{Frame, Incoming};
use swarmlet_proto::api::{
    ImageSummary, PullEvent, PullImageRequest, RemoveImageRequest, RemoveImageResponse,
};
use swarmlet_proto::{DesiredState, Image};

use super::containers::image_error;
use super::server::{body_json, json, ApiState, Response};
use super::ApiError;
use crate::body::Body;
use crate::image::{ImageInfo, ImageRef, LayerState, Platform, Progress};

pub fn summary(i: &ImageInfo) -> ImageSummary {
    ImageSummary {
        id: i.id.clone(),
        names: i.names.clone(),
        repo_digests: i.repo_digests.clone(),
        manifest_digest: i.manifest_digest.clone(),
        platform: i.platform.clone(),
        size: i.size,
        created: i.created.clone(),
    }
}

/// `GET /v1/images`.
pub async fn list(st: &ApiState) -> Result<Response, ApiError> {
    let store = st.images.store().clone();
    let images = tokio::task::spawn_blocking(move || store.list())
        .await
        .map_err(|e| ApiError::new(500, e.to_string()))?
        .map_err(image_error)?;
    let out: Vec<ImageSummary> = images.iter().map(summary).collect();
    Ok(json(200, &out))
}

/// The images tasks of this node run, and the service of each: digest or
/// `registry/repo:tag` (for a service created with `--no-resolve-image`)
/// → service name: what this node's container runtime holds (every node),
/// and on a manager also what the store assigns here (tasks not started yet).
fn in_use_here(st: &ApiState) -> HashMap<String, String> {
    let mut used = st
        .containers
        .tasks()
        .map(|t| t.images_in_use())
        .unwrap_or_default();
    let Some(cluster) = st.cluster.get() else {
        return used;
    };
    let state = cluster.store.read();
    let me = &st.identity.node_id;
    for t in state.tasks.values() {
        let live = t.desired_state == DesiredState::Running || !t.state.is_terminal();
        if !live || t.node_id.as_ref() != Some(me) {
            continue;
        }
        let Some(s) = state.services.get(&t.service_id) else {
            continue;
        };
        if let Image::Oci { reference, digest } = &s.spec.image {
            if let Some(d) = digest {
                used.insert(d.clone(), s.spec.name.clone());
            }
            if let Some(n) = ImageRef::parse(reference)
                .ok()
                .and_then(|r| r.tagged_name())
            {
                used.insert(n, s.spec.name.clone());
            }
        }
    }
    used
}

/// `POST /v1/images/remove`: refused while a task on this node uses the
/// image (naming its service).
pub async fn remove(st: &ApiState, body: Incoming) -> Result<Response, ApiError> {
    let req: RemoveImageRequest = body_json(body).await?;
    let used = in_use_here(st);
    let store = st.images.store().clone();
    let reference = req.reference.clone();
    let removed = tokio::task::spawn_blocking(move || {
        let image = store.get(&reference)?;
        let user = image
            .digests()
            .chain(image.names.iter().map(String::as_str))
            .find_map(|d| used.get(d).map(|s| (d.to_string(), s.clone())));
        if let Some((what, service)) = user {
            return Ok(Err(ApiError::conflict(format!(
                "image {reference} ({what}) is used by service {service} on this node; remove that service (\"swarmlet service rm {service}\") before removing the image"
            ))));
        }
        let digests: HashSet<String> = used.keys().cloned().collect();
        store.remove(&reference, &digests).map(Ok)
    })
    .await
    .map_err(|e| ApiError::new(500, e.to_string()))?
    .map_err(image_error)??;
    tracing::info!(reference = %req.reference, deleted = ?removed.deleted, "image removed");
    Ok(json(
        200,
        &RemoveImageResponse {
            untagged: removed.untagged,
            deleted: removed.deleted,
            layers_deleted: removed.layers_deleted,
        },
    ))
}

/// `POST /v1/images/import`: the body is a `docker save` or OCI archive,
/// streamed to a file in the store's work area (at most the daemon's
/// `--max-upload-size`), then imported with every digest checked.
pub async fn import(st: &ApiState, mut body: Incoming) -> Result<Response, ApiError> {
    let limit = st.blobs.max_upload();
    let too_large = || {
        ApiError::new(
            413,
            format!(
                "the archive is larger than this node's upload limit of {} MiB; restart the daemon with a larger --max-upload-size (e.g. 1g), or pull the image from a registry",
                limit >> 20
            ),
        )
    };
    if hyper::body::Body::size_hint(&body)
        .exact()
        .is_some_and(|n| n > limit)
    {
        return Err(too_large());
    }
    let store = st.images.store().clone();
    let tmp = store.temp_dir().map_err(image_error)?;
    let path = tmp.path().join("archive.tar");
    let mut file = tokio::fs::File::create(&path)
        .await
        .map_err(|e| image_error(crate::image::ImageError::disk("create", &path, e)))?;
    let mut written = 0u64;
    let mut pace = super::upload::Pace::start();
    loop {
        let frame = match tokio::time::timeout(super::upload::UPLOAD_IDLE, body.frame()).await {
            Err(_) => return Err(super::upload::Pace::idle()),
            Ok(None) => break,
            Ok(Some(Err(e))) => {
                return Err(ApiError::bad_request(format!("reading the upload: {e}")))
            }
            Ok(Some(Ok(f))) => f,
        };
        if let Ok(data) = frame.into_data() {
            pace.add(data.len())?;
            written += data.len() as u64;
            if written > limit {
                return Err(too_large());
            }
            use tokio::io::AsyncWriteExt as _;
            file.write_all(&data)
                .await
                .map_err(|e| image_error(crate::image::ImageError::disk("write", &path, e)))?;
        }
    }
    drop(file);
    let images = tokio::task::spawn_blocking(move || {
        let r = crate::image::import(
            &store,
            &path,
            &Platform::host(),
            &crate::image::progress::ignore,
        );
        drop(tmp); // the archive goes; the layers are in the store
        r
    })
    .await
    .map_err(|e| ApiError::new(500, e.to_string()))?
    .map_err(|e| match e {
        // The temp path means nothing to the user: it was their upload.
        crate::image::ImageError::BadArchive { detail, .. } => ApiError::bad_request(format!(
            "the uploaded file is not an image archive ({detail}); give a tarball made by `docker save` or `skopeo copy ... docker-archive:FILE` / `oci-archive:FILE`"
        )),
        e => image_error(e),
    })?;
    for i in &images {
        tracing::info!(id = %i.id, names = ?i.names, "image imported");
    }
    let out: Vec<ImageSummary> = images.iter().map(summary).collect();
    Ok(json(200, &out))
}

/// `POST /v1/images/pull`: answers at once with a stream of
/// newline-delimited `PullEvent`s (per-layer progress, then the image or
/// the error). The pull goes on if the client goes away.
pub async fn pull(st: Arc<ApiState>, body: Incoming) -> Result<hyper::Response<Body>, ApiError> {
    let req: PullImageRequest = body_json(body).await?;
    let r = ImageRef::parse(&req.reference).map_err(image_error)?;
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<PullEvent>();
    // `Puller::pull`'s future is not `Send` for every lifetime the
    // compiler asks `tokio::spawn` to prove (a higher-ranked lifetime
    // issue with the borrowed progress callback), so the pull is driven on
    // a blocking thread of its own; pulls are rare and long.
    let handle = tokio::runtime::Handle::current();
    tokio::task::spawn_blocking(move || {
        let progress_tx = tx.clone();
        let progress = move |p: Progress| {
            let (state, done, total) = match p.state {
                LayerState::AlreadyExists => ("exists", 0, None),
                LayerState::Downloading { done, total } => ("downloading", done, total),
                LayerState::Complete => ("complete", 0, None),
            };
            let _ = progress_tx.send(PullEvent::Layer {
                layer: p.layer,
                index: p.index,
                count: p.count,
                state: state.to_string(),
                done,
                total,
            });
        };
        let event = match handle.block_on(st.images.pull(&r, &progress)) {
            Ok(info) => {
                tracing::info!(reference = %r, id = %info.id, "image pulled");
                PullEvent::Done {
                    image: summary(&info),
                }
            }
            Err(e) => PullEvent::Error {
                message: e.to_string(),
            },
        };
        let _ = tx.send(event);
    });
    let stream = futures::stream::unfold(rx, |mut rx| async move {
        let ev = rx.recv().await?;
        let mut line = serde_json::to_vec(&ev).unwrap_or_default();
        line.push(b'\n');
        Some((
            Ok::<_, crate::body::BoxError>(Frame::data(Bytes::from(line))),
            rx,
        ))
    });
    let mut resp = hyper::Response::new(http_body_util::StreamBody::new(stream).boxed_unsync());
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/x-ndjson"),
    );
    Ok(resp)
}
