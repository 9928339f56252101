//! Every RPC with empty, oversized, malformed and hostile input: the right
//! code, the field named, and nothing written.

use tenx_proto::auth::v1 as pb;
use tonic::Code;
use tonic_types::StatusExt;

use crate::support::{TestAuth, access, authed, sign_up, unique_email};

const TABLES: [&str; 7] =
    ["users", "sessions", "refresh_tokens", "api_keys", "avatars", "one_time_codes", "tenx_outbox"];

async fn snapshot(auth: &TestAuth) -> anyhow::Result<Vec<i64>> {
    let mut counts = Vec::new();
    for table in TABLES {
        counts.push(auth.count(table).await?);
    }
    Ok(counts)
}

/// Asserts INVALID_ARGUMENT with a BadRequest violation naming `field`.
fn invalid<T: std::fmt::Debug>(case: &str, result: Result<tonic::Response<T>, tonic::Status>, field: &str) {
    let status = match result {
        Ok(ok) => panic!("{case}: accepted: {ok:?}"),
        Err(status) => status,
    };
    assert_eq!(status.code(), Code::InvalidArgument, "{case}: {status:?}");
    let fields: Vec<String> = status
        .get_details_bad_request()
        .map(|b| b.field_violations.into_iter().map(|v| v.field).collect())
        .unwrap_or_default();
    assert_eq!(fields, vec![field.to_owned()], "{case}: {status:?}");
}

fn code<T: std::fmt::Debug>(case: &str, result: Result<tonic::Response<T>, tonic::Status>, expected: Code) {
    match result {
        Ok(ok) => panic!("{case}: accepted: {ok:?}"),
        Err(status) => assert_eq!(status.code(), expected, "{case}: {status:?}"),
    }
}

#[tokio::test]
async fn bad_input_to_every_rpc_is_refused_with_the_field_named_and_changes_nothing() -> anyhow::Result<()> {
    let auth = TestAuth::start().await?;
    let mut c = auth.client(0).await?;
    let created = sign_up(&mut c, &unique_email()).await?;
    let token = access(&created);
    let service = auth.service_token().await?;
    let before = snapshot(&auth).await?;

    let huge = "x".repeat(100_000);
    let sql = "'); DROP TABLE users; --";
    let emails = ["", "not-an-email", sql, "a@b", "\u{0}@example.com", huge.as_str()];
    for email in emails {
        let signup = pb::SignUpRequest {
            email: email.into(),
            password: "long enough password".into(),
            ..Default::default()
        };
        invalid(&format!("SignUp email {email:.20?}"), c.sign_up(signup).await, "email");
        let login =
            pb::LoginRequest { email: email.into(), password: "whatever123".into(), ..Default::default() };
        invalid("Login email", c.login(login).await, "email");
        invalid(
            "RequestPasswordReset email",
            c.request_password_reset(pb::RequestPasswordResetRequest { email: email.into() }).await,
            "email",
        );
    }
    for password in ["", "short", huge.as_str()] {
        let signup =
            pb::SignUpRequest { email: unique_email(), password: password.into(), ..Default::default() };
        invalid("SignUp password", c.sign_up(signup).await, "password");
    }
    let names = ["\u{7}bell", huge.as_str()];
    for name in names {
        let signup = pb::SignUpRequest {
            email: unique_email(),
            password: "long enough password".into(),
            display_name: name.into(),
            ..Default::default()
        };
        invalid("SignUp display_name", c.sign_up(signup).await, "display_name");
        invalid(
            "UpdateProfile display_name",
            c.update_profile(authed(&token, pb::UpdateProfileRequest { display_name: name.into() })).await,
            "display_name",
        );
    }
    invalid(
        "Login password empty",
        c.login(pb::LoginRequest { email: unique_email(), ..Default::default() }).await,
        "password",
    );
    invalid("Refresh empty", c.refresh(pb::RefreshRequest::default()).await, "refresh_token");
    invalid(
        "Refresh huge",
        c.refresh(pb::RefreshRequest { refresh_token: huge.clone() }).await,
        "refresh_token",
    );
    code(
        "Refresh garbage",
        c.refresh(pb::RefreshRequest { refresh_token: sql.into() }).await,
        Code::Unauthenticated,
    );
    invalid("Logout empty", c.logout(pb::LogoutRequest::default()).await, "refresh_token");
    for id in ["", "not-a-uuid", sql] {
        invalid(
            "RevokeSession",
            c.revoke_session(authed(&token, pb::RevokeSessionRequest { session_id: id.into() })).await,
            "session_id",
        );
        invalid(
            "RevokeApiKey",
            c.revoke_api_key(authed(&token, pb::RevokeApiKeyRequest { api_key_id: id.into() })).await,
            "api_key_id",
        );
    }
    for id in ["not-a-uuid", sql] {
        invalid(
            "GetUser",
            c.get_user(authed(&token, pb::GetUserRequest { user_id: id.into() })).await,
            "user_id",
        );
    }
    invalid(
        "VerifyEmail empty",
        c.verify_email(authed(&token, pb::VerifyEmailRequest::default())).await,
        "code",
    );
    invalid(
        "VerifyEmail huge",
        c.verify_email(authed(&token, pb::VerifyEmailRequest { code: huge.clone() })).await,
        "code",
    );
    let reset = |code: &str, password: &str| pb::ResetPasswordRequest {
        email: unique_email(),
        code: code.into(),
        new_password: password.into(),
    };
    invalid("ResetPassword code", c.reset_password(reset("", "long enough password")).await, "code");
    invalid("ResetPassword new_password", c.reset_password(reset("ABCDEFGH", "short")).await, "new_password");
    let change = pb::ChangePasswordRequest { current_password: "x".into(), new_password: "short".into() };
    invalid("ChangePassword new_password", c.change_password(authed(&token, change)).await, "new_password");
    let change = pb::ChangePasswordRequest {
        current_password: String::new(),
        new_password: "long enough password".into(),
    };
    invalid(
        "ChangePassword current_password",
        c.change_password(authed(&token, change)).await,
        "current_password",
    );
    let key = |name: &str, scopes: Vec<String>, days: u32| pb::CreateApiKeyRequest {
        name: name.into(),
        scopes,
        expires_in_days: days,
        current_password: crate::support::PASSWORD.into(),
        organization_id: String::new(),
    };
    invalid("CreateApiKey name", c.create_api_key(authed(&token, key("", vec![], 0))).await, "name");
    invalid(
        "CreateApiKey scopes",
        c.create_api_key(authed(&token, key("ci", vec![sql.into()], 0))).await,
        "scopes[0]",
    );
    invalid(
        "CreateApiKey many scopes",
        c.create_api_key(authed(&token, key("ci", vec!["a".into(); 33], 0))).await,
        "scopes",
    );
    invalid(
        "CreateApiKey expires_in_days",
        c.create_api_key(authed(&token, key("ci", vec![], 100_000))).await,
        "expires_in_days",
    );
    invalid(
        "AuthenticateApiKey empty",
        c.authenticate_api_key(authed(&service, pb::AuthenticateApiKeyRequest::default())).await,
        "secret",
    );
    invalid(
        "AuthenticateApiKey huge",
        c.authenticate_api_key(authed(&service, pb::AuthenticateApiKeyRequest { secret: huge.clone() }))
            .await,
        "secret",
    );
    let avatar = |content_type: &str, data: Vec<u8>| pb::UploadAvatarRequest {
        content_type: content_type.into(),
        data,
    };
    invalid(
        "UploadAvatar content_type",
        c.upload_avatar(authed(&token, avatar("text/html", vec![1, 2, 3]))).await,
        "content_type",
    );
    invalid("UploadAvatar empty", c.upload_avatar(authed(&token, avatar("image/png", vec![]))).await, "data");
    invalid(
        "UploadAvatar invalid UTF-8 is fine but too big is not",
        c.upload_avatar(authed(&token, avatar("image/png", vec![0xff; 5 * 1024 * 1024 + 1]))).await,
        "data",
    );
    let mut stale = authed(&token, pb::GetUserRequest::default());
    stale.metadata_mut().insert("x-tenx-wal-position", "DROP TABLE".parse()?);
    invalid("GetUser wal position", c.get_user(stale).await, "x-tenx-wal-position");

    // No or bad credentials where they are needed.
    for bad in ["", "not.a.jwt", sql] {
        code(
            "GetUser token",
            c.get_user(authed(bad, pb::GetUserRequest::default())).await,
            Code::Unauthenticated,
        );
        code(
            "ListSessions token",
            c.list_sessions(authed(bad, pb::ListSessionsRequest {})).await,
            Code::Unauthenticated,
        );
    }
    code("GetUser no header", c.get_user(pb::GetUserRequest::default()).await, Code::Unauthenticated);

    assert_eq!(snapshot(&auth).await?, before, "bad requests wrote nothing ({TABLES:?})");
    Ok(())
}
