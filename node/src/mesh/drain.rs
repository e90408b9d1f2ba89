//! Drain before stop: each local replica counts the requests inside it (from
//! before its concurrency slot is taken until its response body is written
//! or dropped), so stopping it can wait for them.

use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use hyper::body::{Frame, SizeHint};
use tokio::sync::Notify;

use crate::body::{Body, BoxError};

/// Requests inside one replica.
#[derive(Default)]
pub struct InFlight {
    count: AtomicUsize,
    idle: Notify,
}

impl InFlight {
    /// Counts a request in until the returned guard is dropped.
    pub fn enter(self: &Arc<Self>) -> Inside {
        self.count.fetch_add(1, Ordering::SeqCst);
        Inside(self.clone())
    }

    pub fn count(&self) -> usize {
        self.count.load(Ordering::SeqCst)
    }

    /// Resolves once no request is inside.
    pub async fn idle(&self) {
        loop {
            let notified = self.idle.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.count() == 0 {
                return;
            }
            notified.await;
        }
    }
}

/// One request inside a replica.
pub struct Inside(Arc<InFlight>);

impl Drop for Inside {
    fn drop(&mut self) {
        if self.0.count.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}

/// A response body that keeps its request counted until it is done.
pub struct Tracked {
    inner: Body,
    _inside: Inside,
}

impl Tracked {
    pub fn wrap(resp: hyper::Response<Body>, inside: Inside) -> hyper::Response<Body> {
        use http_body_util::BodyExt;
        resp.map(|inner| {
            Tracked {
                inner,
                _inside: inside,
            }
            .boxed_unsync()
        })
    }
}

impl hyper::body::Body for Tracked {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        Pin::new(&mut self.get_mut().inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn idle_waits_for_every_request_inside() {
        let f = Arc::new(InFlight::default());
        f.idle().await; // nothing inside: at once
        let a = f.enter();
        let b = f.enter();
        let waiter = tokio::spawn({
            let f = f.clone();
            async move { f.idle().await }
        });
        drop(a);
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished(), "one request is still inside");
        drop(b);
        waiter.await.expect("idle resolves once the last one left");
        assert_eq!(f.count(), 0);
    }
}
