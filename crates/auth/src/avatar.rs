//! The avatar worker: consumes `auth.avatar.uploaded`, makes 64 and 256
//! px PNG thumbnails, and points the user at them. An image that cannot
//! be decoded is marked failed and its message goes to the dead-letter
//! queue with the reason; the user keeps the previous avatar.

use std::io::Cursor;
use std::sync::Arc;

use image::imageops::FilterType;
use image::{ImageFormat, ImageReader, Limits};
use prost::Message as _;
use tenx_common::cache::Cache;
use tenx_common::db::{Db, Prepared};
use tenx_common::queue::{Handler, HandlerError, Message, inbox};
use tenx_proto::auth::v1::AvatarUploaded;
use uuid::Uuid;

use crate::store::UserRecord;

/// Consumer group (queue) name of the worker.
pub const GROUP: &str = "auth.avatars";
pub const SIZES: [u32; 2] = [64, 256];

pub struct AvatarWorker {
    pub db: Arc<Db>,
    pub users: Cache<UserRecord>,
}

impl std::fmt::Debug for AvatarWorker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AvatarWorker").finish_non_exhaustive()
    }
}

fn retry(error: impl std::fmt::Display) -> HandlerError {
    HandlerError::Retry(error.to_string())
}

impl Handler for AvatarWorker {
    async fn handle(&self, message: &Message) -> Result<(), HandlerError> {
        let event = AvatarUploaded::decode(message.envelope.payload.as_slice())
            .map_err(|e| HandlerError::Reject(format!("bad payload: {e}")))?;
        let avatar =
            Uuid::parse_str(&event.avatar_id).map_err(|_| HandlerError::Reject("bad avatar id".into()))?;
        let user = Uuid::parse_str(&event.user_id).map_err(|_| HandlerError::Reject("bad user id".into()))?;

        let row = self
            .db
            .write()
            .await
            .map_err(retry)?
            .query_opt_cached("SELECT original, status FROM avatars WHERE id = $1", &[&avatar])
            .await
            .map_err(retry)?;
        let Some(row) = row else { return Ok(()) }; // deleted with its user
        if row.get::<_, String>(1) == "ready" {
            return Ok(());
        }
        let original: Vec<u8> = row.get(0);
        let made = tokio::task::spawn_blocking(move || thumbnails(&original)).await.map_err(retry)?;
        let thumbs = match made {
            Ok(thumbs) => thumbs,
            Err(reason) => {
                self.db
                    .write()
                    .await
                    .map_err(retry)?
                    .execute_cached(
                        "UPDATE avatars SET status = 'failed', error = $2 WHERE id = $1",
                        &[&avatar, &reason],
                    )
                    .await
                    .map_err(retry)?;
                return Err(HandlerError::Reject(format!("avatar {avatar}: {reason}")));
            }
        };

        let mut conn = self.db.write().await.map_err(retry)?;
        let tx = conn.transaction().await.map_err(retry)?;
        if !inbox::claim(&tx, GROUP, message.id()).await.map_err(retry)? {
            return Ok(());
        }
        let mut ids = Vec::new();
        for (size, png) in SIZES.iter().zip(thumbs) {
            let id = Uuid::now_v7();
            tx.execute_cached(
                "INSERT INTO avatar_thumbnails (id, avatar_id, size, png) VALUES ($1, $2, $3, $4)",
                &[&id, &avatar, &i32::try_from(*size).unwrap_or(0), &png],
            )
            .await
            .map_err(retry)?;
            ids.push(id);
        }
        tx.execute_cached("UPDATE avatars SET status = 'ready' WHERE id = $1", &[&avatar])
            .await
            .map_err(retry)?;
        tx.execute_cached(
            "UPDATE users SET avatar_64_id = $2, avatar_256_id = $3, updated_at = now() WHERE id = $1",
            &[&user, &ids[0], &ids[1]],
        )
        .await
        .map_err(retry)?;
        tx.commit().await.map_err(retry)?;
        let written = conn.commit_position().await.map_err(retry)?;
        self.users.invalidate_after(&user.to_string(), Some(written)).await;
        Ok(())
    }
}

/// PNG thumbnails at [`SIZES`], cropped to a square. Decoding is bounded,
/// so a small file that claims huge dimensions cannot exhaust memory.
pub fn thumbnails(original: &[u8]) -> Result<Vec<Vec<u8>>, String> {
    let mut reader =
        ImageReader::new(Cursor::new(original)).with_guessed_format().map_err(|e| e.to_string())?;
    let mut limits = Limits::default();
    limits.max_image_width = Some(8_192);
    limits.max_image_height = Some(8_192);
    limits.max_alloc = Some(256 * 1024 * 1024);
    reader.limits(limits);
    let image = reader.decode().map_err(|e| format!("not a decodable PNG or JPEG image: {e}"))?;
    SIZES
        .iter()
        .map(|size| {
            let thumb = image.resize_to_fill(*size, *size, FilterType::Lanczos3);
            let mut png = Vec::new();
            thumb.write_to(&mut Cursor::new(&mut png), ImageFormat::Png).map_err(|e| e.to_string())?;
            Ok(png)
        })
        .collect()
}
