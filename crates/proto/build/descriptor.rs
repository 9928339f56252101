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
    #[prost(message, optional, tag = "7")]
    pub options: Option<MessageOptions>,
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
    #[prost(message, optional, tag = "4")]
    pub options: Option<MethodOptions>,
}

#[derive(Clone, PartialEq, Message)]
pub struct MethodOptions {
    /// `tenx.options.v1.access` (proto/tenx/options/v1/access.proto).
    #[prost(message, optional, tag = "50110")]
    pub access: Option<Access>,
}

#[derive(Clone, PartialEq, Message)]
pub struct Access {
    #[prost(int32, tag = "1")]
    pub caller: i32,
    #[prost(string, tag = "2")]
    pub scope: String,
}
