//! The parts of a compiled `FileDescriptorSet` the build reads: prost
//! drops unknown fields (custom options included), so the descriptor is
//! decoded with just the fields needed, the tenx options among them.

use prost::Message;

#[derive(Clone, PartialEq, Message)]
pub struct FileSet {
    #[prost(message, repeated, tag = "1")]
    pub file: Vec<File>,
}

#[derive(Clone, PartialEq, Message)]
pub struct File {
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(string, tag = "2")]
    pub package: String,
    #[prost(message, repeated, tag = "4")]
    pub message_type: Vec<Descriptor>,
    #[prost(message, repeated, tag = "6")]
    pub service: Vec<Service>,
}

impl FileSet {
    pub fn read(path: &std::path::Path) -> Result<Self, Box<dyn std::error::Error>> {
        Ok(Self::decode(std::fs::read(path)?.as_slice())?)
    }
}

#[derive(Clone, PartialEq, Message)]
pub struct Descriptor {
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(message, repeated, tag = "2")]
    pub field: Vec<Field>,
    #[prost(message, optional, tag = "7")]
    pub options: Option<MessageOptions>,
}

#[derive(Clone, PartialEq, Message)]
pub struct Field {
    #[prost(string, tag = "1")]
    pub name: String,
    /// `FieldDescriptorProto.Label`: 3 = repeated.
    #[prost(int32, tag = "4")]
    pub label: i32,
    /// `FieldDescriptorProto.Type`: 9 = string, 12 = bytes, 11 = message.
    #[prost(int32, tag = "5")]
    pub r#type: i32,
}

#[derive(Clone, PartialEq, Message)]
pub struct MessageOptions {
    /// `tenx.options.v1.event_type` (proto/tenx/options/v1/event.proto).
    #[prost(string, optional, tag = "50111")]
    pub event_type: Option<String>,
}

#[derive(Clone, PartialEq, Message)]
pub struct Service {
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(message, repeated, tag = "2")]
    pub method: Vec<Method>,
}

#[derive(Clone, PartialEq, Message)]
pub struct Method {
    #[prost(string, tag = "1")]
    pub name: String,
    /// `.tenx.auth.v1.LoginRequest`.
    #[prost(string, tag = "2")]
    pub input_type: String,
    /// `.tenx.auth.v1.LoginResponse`.
    #[prost(string, tag = "3")]
    pub output_type: String,
    #[prost(message, optional, tag = "4")]
    pub options: Option<MethodOptions>,
}

#[derive(Clone, PartialEq, Message)]
pub struct MethodOptions {
    /// `tenx.options.v1.access` (proto/tenx/options/v1/access.proto).
    #[prost(message, optional, tag = "50110")]
    pub access: Option<Access>,
    /// `tenx.options.v1.route` (proto/tenx/options/v1/route.proto).
    #[prost(message, optional, tag = "50112")]
    pub route: Option<Route>,
    /// `google.api.http` (proto/google/api/annotations.proto).
    #[prost(message, optional, tag = "72295728")]
    pub http: Option<HttpRule>,
}

#[derive(Clone, PartialEq, Message)]
pub struct Route {
    #[prost(string, tag = "1")]
    pub operation_id: String,
    #[prost(bool, tag = "2")]
    pub idempotent: bool,
    #[prost(bool, tag = "3")]
    pub waits_on_provider: bool,
    #[prost(bool, tag = "4")]
    pub vouches_for_client: bool,
    #[prost(bool, tag = "5")]
    pub idempotency_key: bool,
    #[prost(bool, tag = "6")]
    pub creates: bool,
    #[prost(message, repeated, tag = "7")]
    pub headers: Vec<HeaderField>,
    #[prost(uint32, tag = "8")]
    pub max_body_bytes: u32,
    #[prost(string, tag = "9")]
    pub media_type: String,
    #[prost(string, tag = "10")]
    pub cache_control: String,
}

#[derive(Clone, PartialEq, Message)]
pub struct HeaderField {
    #[prost(string, tag = "1")]
    pub header: String,
    #[prost(string, tag = "2")]
    pub field: String,
}

/// `google.api.HttpRule`: the pattern fields are a oneof, read here as
/// plain optional strings (at most one is set).
#[derive(Clone, PartialEq, Message)]
pub struct HttpRule {
    #[prost(string, optional, tag = "2")]
    pub get: Option<String>,
    #[prost(string, optional, tag = "3")]
    pub put: Option<String>,
    #[prost(string, optional, tag = "4")]
    pub post: Option<String>,
    #[prost(string, optional, tag = "5")]
    pub delete: Option<String>,
    #[prost(string, optional, tag = "6")]
    pub patch: Option<String>,
    #[prost(message, optional, tag = "8")]
    pub custom: Option<CustomHttpPattern>,
    #[prost(string, tag = "7")]
    pub body: String,
    #[prost(string, tag = "12")]
    pub response_body: String,
    #[prost(message, repeated, tag = "11")]
    pub additional_bindings: Vec<HttpRule>,
}

#[derive(Clone, PartialEq, Message)]
pub struct CustomHttpPattern {
    #[prost(string, tag = "1")]
    pub kind: String,
    #[prost(string, tag = "2")]
    pub path: String,
}

#[derive(Clone, PartialEq, Message)]
pub struct Access {
    #[prost(int32, tag = "1")]
    pub caller: i32,
    #[prost(string, tag = "2")]
    pub scope: String,
    #[prost(uint32, tag = "3")]
    pub max_auth_age_seconds: u32,
    #[prost(string, tag = "4")]
    pub permission: String,
}
