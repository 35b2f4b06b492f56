//! JSON bodies for the errors the HTTP parser answers by itself.
//!
//! A request whose head cannot be parsed never reaches the router: hyper answers it directly,
//! 400 (a header value with a control character, a bad method, URI or version), 414 (URI too
//! long) or 431 (headers over its buffer, about 400 KiB, or over 100 headers), with an empty
//! body. The API promises a JSON error for every answer, so the server (`super::server`)
//! passes every connection's writes through [`JsonErrors`]: a response head with one of
//! those statuses, `content-length: 0` and nothing after it (only the parser writes such a
//! response: every API answer has a body) is rewritten to carry `{error, message}` and
//! `Content-Type: application/json`.

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// A connection whose parser-error answers get a JSON body; see the module docs.
pub struct JsonErrors<S> {
    io: S,
    /// A rewritten answer still to be written, and how much of it was.
    pending: Vec<u8>,
    written: usize,
}

impl<S> JsonErrors<S> {
    pub(super) fn new(io: S) -> Self {
        Self {
            io,
            pending: Vec::new(),
            written: 0,
        }
    }
}

impl<S: AsyncWrite + Unpin> JsonErrors<S> {
    fn poll_pending(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.written < self.pending.len() {
            let n = ready!(Pin::new(&mut self.io).poll_write(cx, &self.pending[self.written..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.written += n;
        }
        self.pending.clear();
        self.written = 0;
        Poll::Ready(Ok(()))
    }
}

/// The JSON answer for a bodiless parser error `buf`, or `None` to write `buf` unchanged.
pub(super) fn rewrite(buf: &[u8]) -> Option<Vec<u8>> {
    let end = buf.windows(4).position(|w| w == b"\r\n\r\n")?;
    if end + 4 != buf.len() || !buf.starts_with(b"HTTP/1.1 ") || buf.len() < 12 {
        return None;
    }
    let (error, message) = match &buf[9..12] {
        b"400" => (
            "bad_request",
            "the request cannot be parsed: a header value with a control character, or an \
             invalid method, URI or version",
        ),
        b"414" => ("uri_too_long", "the request URI is too long"),
        b"431" => (
            "headers_too_large",
            "the request headers are too large (about 400 KiB, or 100 headers, at most; Warren \
             takes 255 bytes per header value it reads)",
        ),
        _ => return None,
    };
    let head = std::str::from_utf8(&buf[..end]).ok()?;
    let mut lines = head.split("\r\n");
    let status = lines.next()?;
    let rest: Vec<&str> = lines.collect();
    if !rest
        .iter()
        .any(|l| l.eq_ignore_ascii_case("content-length: 0"))
    {
        return None;
    }
    let body = serde_json::json!({ "error": error, "message": message }).to_string();
    let mut out = format!("{status}\r\n");
    for l in rest {
        if !l.to_ascii_lowercase().starts_with("content-length:") {
            out.push_str(l);
            out.push_str("\r\n");
        }
    }
    out.push_str(&format!(
        "content-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    ));
    Some(out.into_bytes())
}

impl<S: AsyncRead + Unpin> AsyncRead for JsonErrors<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for JsonErrors<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        ready!(self.poll_pending(cx))?;
        if let Some(answer) = rewrite(buf) {
            self.pending = answer;
            self.written = 0;
            // Whatever is not written yet goes out on the next write, flush or shutdown.
            if let Poll::Ready(Err(e)) = self.poll_pending(cx) {
                return Poll::Ready(Err(e));
            }
            return Poll::Ready(Ok(buf.len()));
        }
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_pending(cx))?;
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_pending(cx))?;
        Pin::new(&mut self.io).poll_shutdown(cx)
    }

    // Not vectored: hyper then writes each response head in one `poll_write`, which is what
    // `rewrite` looks at.
    fn is_write_vectored(&self) -> bool {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_bodiless_parser_errors_are_rewritten() {
        let head =
            b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-length: 0\r\ndate: x\r\n\r\n";
        let out = String::from_utf8(rewrite(head).unwrap()).unwrap();
        let (h, body) = out.split_once("\r\n\r\n").unwrap();
        assert!(h.starts_with("HTTP/1.1 431 "));
        assert!(h.contains("content-type: application/json") && h.contains("date: x"));
        assert!(!h.contains("content-length: 0"));
        let v: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(v["error"], "headers_too_large");
        assert!(h.contains(&format!("content-length: {}", body.len())));
        // An API answer (with a body) or another status is left alone.
        assert!(rewrite(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 2\r\n\r\n{}").is_none());
        assert!(rewrite(b"HTTP/1.1 202 Accepted\r\ncontent-length: 0\r\n\r\n").is_none());
        assert!(rewrite(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 5\r\n\r\n").is_none());
        assert!(rewrite(b"{\"jobs\":[]}").is_none());
    }
}
