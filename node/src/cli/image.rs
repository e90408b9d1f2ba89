//! `swarmlet image …`: the image store of the node the CLI talks to
//! (node-local, as `docker image`).

use std::io::{IsTerminal, Write};
use std::path::PathBuf;

use anyhow::{bail, Context as _};
use bytes::Bytes;
use clap::Subcommand;
use http_body_util::BodyExt as _;
use hyper::body::Frame;
use swarmlet_proto::api::{
    ImageSummary, PullEvent, PullImageRequest, RemoveImageRequest, RemoveImageResponse,
};

use super::format::{self, print_table, ListArgs};
use crate::api::client::Client;

#[derive(Subcommand)]
pub enum ImageCommand {
    /// List the images on this node
    #[command(alias = "list")]
    Ls(ListArgs),
    /// Remove one or more images from this node (refused while a task here uses it)
    #[command(alias = "remove")]
    Rm {
        /// NAME[:TAG], NAME@sha256:DIGEST or an image ID (prefix)
        #[arg(required = true)]
        images: Vec<String>,
    },
    /// Load images from a tar archive (`docker save`, or an OCI layout
    /// as `skopeo copy … oci-archive:FILE` writes)
    #[command(alias = "load")]
    Import {
        /// The archive
        file: PathBuf,
    },
    /// Pull an image from a registry into this node's store
    Pull {
        /// [REGISTRY[:PORT]/]NAME[:TAG][@sha256:DIGEST]
        reference: String,
    },
}

pub async fn run(c: Client, cmd: ImageCommand) -> anyhow::Result<()> {
    match cmd {
        ImageCommand::Ls(a) => ls(&c, a).await,
        ImageCommand::Rm { images } => {
            let mut failed = false;
            for reference in images {
                let r: Result<RemoveImageResponse, _> = c
                    .post(
                        "/v1/images/remove",
                        &RemoveImageRequest {
                            reference: reference.clone(),
                        },
                    )
                    .await;
                match r {
                    Ok(r) => {
                        r.untagged.iter().for_each(|n| println!("Untagged: {n}"));
                        if let Some(id) = r.deleted {
                            println!("Deleted: {id}");
                        }
                    }
                    Err(e) => {
                        eprintln!("Error: {e}");
                        failed = true;
                    }
                }
            }
            if failed {
                bail!("some images could not be removed");
            }
            Ok(())
        }
        ImageCommand::Import { file } => import(&c, &file).await,
        ImageCommand::Pull { reference } => pull(&c, &reference).await,
    }
}

/// `12.3MB`, as Docker prints sizes (powers of 1000).
pub fn human_size(n: u64) -> String {
    let units = ["B", "kB", "MB", "GB", "TB"];
    let mut v = n as f64;
    let mut i = 0;
    while v >= 1000.0 && i + 1 < units.len() {
        v /= 1000.0;
        i += 1;
    }
    if i == 0 {
        format!("{n}B")
    } else {
        format!("{v:.3}")
            .trim_end_matches('0')
            .trim_end_matches('.')
            .to_string()
            + units[i]
    }
}

/// One row per name (`<none>` for an image without one):
/// REPOSITORY TAG DIGEST IMAGE ID SIZE.
fn rows(images: &[ImageSummary]) -> Vec<Vec<String>> {
    let mut rows = Vec::new();
    for i in images {
        let id: String =
            i.id.strip_prefix("sha256:")
                .unwrap_or(&i.id)
                .chars()
                .take(12)
                .collect();
        let names: Vec<(String, String)> = if i.names.is_empty() {
            // Pulled by digest only (a service's pinned image): Docker
            // shows the repository with a `<none>` tag.
            let mut by_digest: Vec<(String, String)> = i
                .repo_digests
                .iter()
                .filter_map(|d| d.split_once('@'))
                .map(|(repo, _)| (repo.to_string(), "<none>".to_string()))
                .collect();
            by_digest.dedup();
            if by_digest.is_empty() {
                by_digest.push(("<none>".into(), "<none>".into()));
            }
            by_digest
        } else {
            i.names
                .iter()
                .map(|n| {
                    // The tag is after the last ':' that follows the last '/'
                    // (a registry's port is not a tag).
                    let slash = n.rfind('/').map(|p| p + 1).unwrap_or(0);
                    match n[slash..].rfind(':') {
                        Some(c) => (n[..slash + c].to_string(), n[slash + c + 1..].to_string()),
                        None => (n.clone(), "<none>".into()),
                    }
                })
                .collect()
        };
        for (repo, tag) in names {
            let digest = i
                .repo_digests
                .iter()
                .find_map(|d| d.strip_prefix(&format!("{repo}@")).map(str::to_string))
                .or_else(|| i.manifest_digest.clone())
                .unwrap_or_else(|| "<none>".into());
            rows.push(vec![repo, tag, digest, id.clone(), human_size(i.size)]);
        }
    }
    rows
}

async fn ls(c: &Client, a: ListArgs) -> anyhow::Result<()> {
    let images: Vec<ImageSummary> = c.get("/v1/images").await?;
    if a.json() {
        return format::print_json(&images);
    }
    if a.quiet {
        images.iter().for_each(|i| println!("{}", i.id));
        return Ok(());
    }
    print_table(
        &["REPOSITORY", "TAG", "DIGEST", "IMAGE ID", "SIZE"],
        rows(&images),
    );
    Ok(())
}

/// Streams the archive to the daemon (never whole in memory).
async fn import(c: &Client, path: &std::path::Path) -> anyhow::Result<()> {
    use tokio::io::AsyncReadExt as _;
    let file = tokio::fs::File::open(path)
        .await
        .with_context(|| format!("cannot read {}", path.display()))?;
    if !file.metadata().await.map(|m| m.is_file()).unwrap_or(false) {
        bail!(
            "{} is not a file; give a tar archive of an image",
            path.display()
        );
    }
    let stream = futures::stream::unfold(file, |mut f| async move {
        let mut buf = vec![0u8; 256 * 1024];
        match f.read(&mut buf).await {
            Ok(0) => None,
            Ok(n) => {
                buf.truncate(n);
                Some((Ok(Frame::data(Bytes::from(buf))), f))
            }
            Err(e) => Some((Err(Box::new(e) as crate::transport::client::BoxError), f)),
        }
    });
    let body = http_body_util::StreamBody::new(stream).boxed();
    let images: Vec<ImageSummary> = c
        .post_stream("/v1/images/import", body)
        .await
        .with_context(|| format!("importing {}", path.display()))?;
    for i in &images {
        if i.names.is_empty() {
            println!("Loaded image ID: {}", i.id);
        }
        for n in &i.names {
            println!("Loaded image: {n}");
        }
    }
    Ok(())
}

/// Docker's pull output: one line per layer as it changes state.
async fn pull(c: &Client, reference: &str) -> anyhow::Result<()> {
    let body = serde_json::to_vec(&PullImageRequest {
        reference: reference.to_string(),
    })?;
    let body = http_body_util::Full::new(Bytes::from(body))
        .map_err(|never| match never {})
        .boxed();
    let mut stream = c
        .stream(
            http::Method::POST,
            "/v1/images/pull",
            body,
            "application/json",
        )
        .await?;
    let tty = std::io::stdout().is_terminal();
    let mut pending = Vec::new();
    let mut last_state: std::collections::HashMap<String, String> = Default::default();
    let mut out = std::io::stdout();
    println!("Pulling {reference}");
    while let Some(frame) = stream.frame().await {
        let frame = frame.context("the pull's progress stream broke off")?;
        let Ok(data) = frame.into_data() else {
            continue;
        };
        pending.extend_from_slice(&data);
        while let Some(nl) = pending.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = pending.drain(..=nl).collect();
            let event: PullEvent = serde_json::from_slice(&line)
                .context("an unexpected line in the pull's progress")?;
            match event {
                PullEvent::Layer {
                    layer,
                    state,
                    done,
                    total,
                    ..
                } => {
                    let short: String = layer
                        .strip_prefix("sha256:")
                        .unwrap_or(&layer)
                        .chars()
                        .take(12)
                        .collect();
                    let shown = match state.as_str() {
                        "exists" => "Already exists".to_string(),
                        "complete" => "Pull complete".to_string(),
                        _ if tty => match total {
                            Some(t) => {
                                format!("Downloading {}/{}", human_size(done), human_size(t))
                            }
                            None => format!("Downloading {}", human_size(done)),
                        },
                        _ => "Downloading".to_string(),
                    };
                    // Without a terminal, a layer's "Downloading" is shown once.
                    if last_state.get(&short) == Some(&shown) {
                        continue;
                    }
                    last_state.insert(short.clone(), shown.clone());
                    let _ = writeln!(out, "{short}: {shown}");
                }
                PullEvent::Done { image } => {
                    if let Some(d) = image.repo_digests.first().and_then(|d| d.rsplit_once('@')) {
                        println!("Digest: {}", d.1);
                    }
                    println!("Status: image is up to date on this node: {reference}");
                    return Ok(());
                }
                PullEvent::Error { message } => bail!("{message}"),
            }
        }
    }
    bail!("the daemon ended the pull of {reference} without saying how it went; see its log")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_as_docker_prints_them() {
        assert_eq!(human_size(512), "512B");
        assert_eq!(human_size(1_500), "1.5kB");
        assert_eq!(human_size(187_654_321), "187.654MB");
        assert_eq!(human_size(2_000_000_000), "2GB");
    }

    #[test]
    fn one_row_per_name_with_the_registry_port_kept() {
        let i = ImageSummary {
            id: format!("sha256:{}", "ab".repeat(32)),
            names: vec![
                "127.0.0.1:5000/web:v1".into(),
                "docker.io/imported/web:v1".into(),
            ],
            repo_digests: vec![format!("127.0.0.1:5000/web@sha256:{}", "cd".repeat(32))],
            manifest_digest: Some(format!("sha256:{}", "ef".repeat(32))),
            platform: "linux/amd64".into(),
            size: 1500,
            created: None,
        };
        let r = rows(&[i]);
        assert_eq!(r[0][0], "127.0.0.1:5000/web");
        assert_eq!(r[0][1], "v1");
        assert_eq!(r[0][2], format!("sha256:{}", "cd".repeat(32)));
        assert_eq!(r[0][3], "abababababab");
        assert_eq!(r[0][4], "1.5kB");
        assert_eq!(r[1][0], "docker.io/imported/web");
        assert_eq!(r[1][2], format!("sha256:{}", "ef".repeat(32)));
    }

    #[test]
    fn an_image_pulled_by_digest_shows_its_repository() {
        let i = ImageSummary {
            id: format!("sha256:{}", "ab".repeat(32)),
            names: vec![],
            repo_digests: vec![format!("127.0.0.1:5000/web@sha256:{}", "cd".repeat(32))],
            manifest_digest: None,
            platform: "linux/amd64".into(),
            size: 1500,
            created: None,
        };
        let r = rows(&[i]);
        assert_eq!(r.len(), 1);
        assert_eq!(
            (r[0][0].as_str(), r[0][1].as_str()),
            ("127.0.0.1:5000/web", "<none>")
        );
        assert_eq!(r[0][2], format!("sha256:{}", "cd".repeat(32)));
    }
}
