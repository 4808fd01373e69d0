//! The change feed that keeps a fleet's kernels in step: every entry put or removal is published
//! on `<prefix>:changes`, and each sensor forwards the messages of *other* instances to its
//! daemon, which applies them to its own kernel maps.

use std::time::Duration;

use futures_util::StreamExt;
use redis::Client;
use redis::aio::PubSub;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc::Sender;

use crate::types::{ChangeEvent, EntryChange};

/// What goes on the wire: the change plus the publishing instance, so a subscriber can skip its
/// own changes (it applied them already) even when two instances share a sensor id.
#[derive(Serialize, Deserialize)]
pub(super) struct Wire {
    pub(super) instance: String,
    #[serde(flatten)]
    pub(super) change: EntryChange,
}

/// Forwards messages from an already subscribed `pubsub` until the receiver is dropped. Pub/Sub
/// connections are not covered by the ConnectionManager, so after a disconnect this resubscribes
/// with backoff and sends [`ChangeEvent::Resubscribed`]: messages published in the gap are lost,
/// and the receiver must re-read the lists.
pub(super) async fn forward(
    client: Client,
    pubsub: PubSub,
    channel: String,
    instance: String,
    tx: Sender<ChangeEvent>,
) {
    let mut stream = Some(pubsub.into_on_message());
    let mut backoff = Duration::from_millis(50);
    loop {
        if let Some(messages) = stream.as_mut() {
            tokio::select! {
                msg = messages.next() => match msg {
                    Some(msg) => {
                        match serde_json::from_slice::<Wire>(msg.get_payload_bytes()) {
                            Ok(w) if w.instance == instance => {}
                            Ok(w) => {
                                if tx.send(ChangeEvent::Change(w.change)).await.is_err() {
                                    return;
                                }
                            }
                            // Another program (or a newer netguard) on the channel: skip, but say so.
                            Err(e) => log::warn!("ignoring malformed message on {channel}: {e}"),
                        }
                        continue;
                    }
                    None => {
                        log::warn!("lost the subscription to {channel}; resubscribing");
                        stream = None;
                    }
                },
                () = tx.closed() => return,
            }
        }
        tokio::select! {
            () = tokio::time::sleep(backoff) => {}
            () = tx.closed() => return,
        }
        backoff = (backoff * 2).min(Duration::from_secs(5));
        let Ok(mut pubsub) = client.get_async_pubsub().await else {
            continue;
        };
        if pubsub.subscribe(&channel).await.is_ok() {
            stream = Some(pubsub.into_on_message());
            backoff = Duration::from_millis(50);
            if tx.send(ChangeEvent::Resubscribed).await.is_err() {
                return;
            }
        }
    }
}
