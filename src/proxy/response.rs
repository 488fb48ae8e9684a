//! The responses of the CONNECT front. Success is exactly
//! `HTTP/1.1 200 Connection Established\r\n\r\n` and nothing more (kube-apiserver fails if any
//! byte follows before it speaks). Failures carry one line naming the node, the destination
//! and why, and the connection is closed.

use tokio::io::{AsyncWrite, AsyncWriteExt};

/// The exact success response.
pub const ESTABLISHED: &[u8] = b"HTTP/1.1 200 Connection Established\r\n\r\n";

/// A failed CONNECT: status code and its one-line explanation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub status: u16,
    pub body: String,
    /// The node the request was routed to, if it got that far (for the log's `node=`).
    pub node: Option<String>,
}

impl Failure {
    /// A failure with `status`; `node` is `-` when the request never got that far.
    pub fn new(
        status: u16,
        node: Option<&str>,
        destination: &str,
        reason: impl std::fmt::Display,
    ) -> Failure {
        let body = format!(
            "node {}, destination {destination}: {reason}",
            node.unwrap_or("-")
        );
        Failure {
            status,
            body: body.replace(['\r', '\n'], " "),
            node: node.map(str::to_string),
        }
    }

    fn reason_phrase(&self) -> &'static str {
        match self.status {
            400 => "Bad Request",
            403 => "Forbidden",
            405 => "Method Not Allowed",
            502 => "Bad Gateway",
            503 => "Service Unavailable",
            504 => "Gateway Timeout",
            _ => "Error",
        }
    }

    /// The full response bytes.
    pub fn to_bytes(&self) -> Vec<u8> {
        let body = format!("{}\n", self.body);
        let allow = if self.status == 405 {
            "Allow: CONNECT\r\n"
        } else {
            ""
        };
        format!(
            "HTTP/1.1 {} {}\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\n{allow}Connection: close\r\n\r\n{body}",
            self.status,
            self.reason_phrase(),
            body.len()
        )
        .into_bytes()
    }

    /// Writes the response and shuts the write side (bounded by the caller's timeout).
    pub async fn send<S: AsyncWrite + Unpin>(&self, io: &mut S) {
        let _ = io.write_all(&self.to_bytes()).await;
        let _ = io.shutdown().await;
    }
}
