//! Avatar upload → thumbnails in the background; a bad image → DLQ.

use std::io::Cursor;
use std::time::Duration;

use lapin::options::QueueDeclareOptions;
use lapin::types::FieldTable;
use tenx_common::queue::{Amqp, Topology};
use tenx_proto::auth::v1 as pb;

use crate::support::{TestAuth, access, authed, eventually, sign_up, unique_email};

fn png(width: u32, height: u32) -> anyhow::Result<Vec<u8>> {
    let image =
        image::RgbImage::from_fn(width, height, |x, y| image::Rgb([(x % 256) as u8, (y % 256) as u8, 128]));
    let mut bytes = Vec::new();
    image.write_to(&mut Cursor::new(&mut bytes), image::ImageFormat::Png)?;
    Ok(bytes)
}

async fn dead_letters(auth: &TestAuth) -> anyhow::Result<u32> {
    let amqp = Amqp::new(&auth.settings.amqp, "test");
    let topology = Topology::for_group(&auth.settings.amqp, tenx_auth::avatar::GROUP, &[]);
    let passive = QueueDeclareOptions { passive: true, ..Default::default() };
    let channel = amqp.channel().await?;
    match channel.queue_declare(topology.dead_letter.as_str().into(), passive, FieldTable::default()).await {
        Ok(queue) => Ok(queue.message_count()),
        Err(_) => Ok(0), // not declared yet
    }
}

#[tokio::test]
async fn an_uploaded_avatar_gets_64_and_256_px_thumbnails_and_a_bad_one_goes_to_the_dlq() -> anyhow::Result<()>
{
    let auth = TestAuth::start().await?;
    let mut client = auth.client(0).await?;
    let created = sign_up(&mut client, &unique_email()).await?;
    let token = access(&created);
    let upload = |data: Vec<u8>| pb::UploadAvatarRequest { content_type: "image/png".into(), data };

    client.upload_avatar(authed(&token, upload(png(300, 200)?))).await?;
    let mut user = pb::User::default();
    eventually(Duration::from_secs(15), "thumbnails", || {
        let mut client = client.clone();
        let token = token.clone();
        async move {
            let got = client.get_user(authed(&token, pb::GetUserRequest::default())).await?.into_inner();
            Ok(got.user.is_some_and(|u| !u.avatar_64_id.is_empty()))
        }
    })
    .await?;
    if let Some(u) = client.get_user(authed(&token, pb::GetUserRequest::default())).await?.into_inner().user {
        user = u;
    }
    let sql = auth.sql().await?;
    for (id, size) in [(&user.avatar_64_id, 64), (&user.avatar_256_id, 256)] {
        let row = sql.query_one("SELECT png FROM avatar_thumbnails WHERE id = $1::text::uuid", &[id]).await?;
        let thumb = image::load_from_memory(&row.get::<_, Vec<u8>>(0))?;
        assert_eq!((thumb.width(), thumb.height()), (size, size));
    }

    // Not an image: accepted (the upload cannot know), then dead-lettered.
    client.upload_avatar(authed(&token, upload(b"\x89PNG\r\n\x1a\n definitely not a png".to_vec()))).await?;
    eventually(Duration::from_secs(15), "a dead letter", || async { Ok(dead_letters(&auth).await? == 1) })
        .await?;
    let failed: String =
        sql.query_one("SELECT error FROM avatars WHERE status = 'failed'", &[]).await?.get(0);
    assert!(failed.contains("not a decodable"), "{failed}");
    let after = client.get_user(authed(&token, pb::GetUserRequest::default())).await?.into_inner().user;
    assert_eq!(after.map(|u| u.avatar_64_id), Some(user.avatar_64_id), "the old avatar stays");
    Ok(())
}
