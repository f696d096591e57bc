//! Hostile images and image sources: bad base64, non-images, truncation, decompression
//! bombs, animation, too many images, wrong MIME types, `file://` escapes and internal URLs.

use serde_json::json;

use super::cases::{chat, image_case, post_json, with_image, Case, Ctx, IMAGE};
use super::wire;

pub fn images() -> Vec<Case> {
    let (b64, not, trunc, bomb, gif, many, mime) = (
        "invalid_base64",
        "not_an_image",
        "truncated_image",
        "decompression_bomb",
        "animated_gif",
        "too_many_images",
        "wrong_mime",
    );
    let png = wire::png(64, 64);
    let jpeg = wire::jpeg(64, 64);
    let good = wire::data_uri(&wire::png(16, 16), "image/png");
    let three = json!([
        {"type": "image_url", "image_url": {"url": good}},
        {"type": "image_url", "image_url": {"url": good}},
        {"type": "image_url", "image_url": {"url": good}},
        {"type": "text", "text": "hi"}]);
    let across = json!({"messages": [
        {"role": "user", "content": with_image(good.clone())},
        {"role": "assistant", "content": "red"},
        {"role": "user", "content": [{"type": "image_url", "image_url": {"url": good}}, {"type": "image_url", "image_url": {"url": good}}]}]});
    vec![
        image_case(
            b64,
            "characters outside the alphabet",
            "data:image/png;base64,@@@@",
            400,
        )
        .param(IMAGE),
        image_case(b64, "missing padding", "data:image/png;base64,aGk", 400).param(IMAGE),
        image_case(b64, "URL-safe alphabet", "data:image/png;base64,-_-_", 400).param(IMAGE),
        image_case(b64, "empty payload", "data:image/png;base64,", 400).param(IMAGE),
        image_case(
            not,
            "base64 of text",
            wire::data_uri(b"this is plain text, not a picture", "image/png"),
            400,
        ),
        image_case(
            not,
            "base64 of JSON",
            wire::data_uri(b"{\"a\": 1}", "image/jpeg"),
            400,
        ),
        image_case(
            not,
            "PNG signature then zeros",
            wire::data_uri(
                &[&b"\x89PNG\r\n\x1a\n"[..], &[0u8; 64]].concat(),
                "image/png",
            ),
            400,
        ),
        image_case(
            trunc,
            "PNG cut after the header",
            wire::data_uri(&png[..40], "image/png"),
            400,
        ),
        image_case(
            trunc,
            "PNG cut in half",
            wire::data_uri(&png[..png.len() / 2], "image/png"),
            400,
        ),
        image_case(
            trunc,
            "JPEG cut in half",
            wire::data_uri(&jpeg[..jpeg.len() / 2], "image/jpeg"),
            400,
        ),
        image_case(
            trunc,
            "JPEG cut after the markers",
            wire::data_uri(&jpeg[..jpeg.len().min(200)], "image/jpeg"),
            400,
        ),
        image_case(
            bomb,
            "PNG claiming 100000x100000",
            wire::data_uri(&wire::png_claiming(100_000, 100_000), "image/png"),
            400,
        ),
        image_case(
            bomb,
            "PNG claiming 0x0",
            wire::data_uri(&wire::png_claiming(0, 0), "image/png"),
            400,
        ),
        image_case(
            bomb,
            "JPEG claiming 65000x65000",
            wire::data_uri(&wire::jpeg_claiming(65_000, 65_000), "image/jpeg"),
            400,
        ),
        image_case(
            bomb,
            "GIF claiming 65535x65535",
            wire::data_uri(&wire::gif_claiming_huge(), "image/gif"),
            400,
        ),
        // Documented behaviour: an animated GIF is read as its first frame.
        image_case(
            gif,
            "animated GIF (first frame is used)",
            wire::data_uri(&wire::animated_gif(2), "image/gif"),
            200,
        ),
        Case::new(
            many,
            "three images in one message",
            post_json(&chat(three, json!({}))),
            400,
        )
        .param("messages"),
        Case::new(many, "three images across turns", post_json(&across), 400).param("messages"),
        image_case(mime, "text/plain", wire::data_uri(&png, "text/plain"), 400).param(IMAGE),
        image_case(
            mime,
            "image/svg+xml",
            wire::data_uri(b"<svg/>", "image/svg+xml"),
            400,
        )
        .param(IMAGE),
        image_case(
            mime,
            "application/octet-stream",
            wire::data_uri(&png, "application/octet-stream"),
            400,
        )
        .param(IMAGE),
        image_case(mime, "no base64 marker", "data:image/png,rawbytes", 400).param(IMAGE),
        image_case(mime, "no comma", "data:image/png;base64", 400).param(IMAGE),
        image_case(
            mime,
            "not a URL scheme we know",
            "ftp://example.com/a.png",
            400,
        )
        .param(IMAGE),
    ]
}

pub fn sources(ctx: &Ctx) -> Vec<Case> {
    let (f, r) = ("file_url", "remote_url");
    let m = ctx.media.display();
    vec![
        image_case(
            f,
            "allowed file (control)",
            format!("file://{m}/red.png"),
            200,
        ),
        image_case(f, "/etc/passwd", "file:///etc/passwd", 400).param(IMAGE),
        image_case(
            f,
            "a PNG outside the folder",
            format!("file://{}", ctx.outside.display()),
            400,
        )
        .param(IMAGE),
        image_case(
            f,
            ".. out of the folder",
            format!("file://{m}/../outside.png"),
            400,
        )
        .param(IMAGE),
        image_case(
            f,
            "deep .. to /etc/passwd",
            format!("file://{m}/../../../../../../etc/passwd"),
            400,
        )
        .param(IMAGE),
        image_case(
            f,
            "symlink pointing outside",
            format!("file://{m}/link.png"),
            400,
        )
        .param(IMAGE),
        image_case(f, "the folder itself", format!("file://{m}/"), 400).param(IMAGE),
        image_case(f, "a missing file", format!("file://{m}/missing.png"), 400).param(IMAGE),
        image_case(
            f,
            "percent-encoded ..",
            format!("file://{m}/%2e%2e/outside.png"),
            400,
        )
        .param(IMAGE),
        image_case(
            r,
            "loopback: this server",
            format!("http://127.0.0.1:{}/health", ctx.port),
            400,
        )
        .param(IMAGE),
        image_case(r, "localhost", "http://localhost/x.png", 400).param(IMAGE),
        image_case(r, "private 10/8", "http://10.0.0.1/x.png", 400).param(IMAGE),
        image_case(r, "private 192.168/16", "https://192.168.1.1/x.png", 400).param(IMAGE),
        image_case(
            r,
            "cloud metadata (link-local)",
            "http://169.254.169.254/latest/meta-data",
            400,
        )
        .param(IMAGE),
        image_case(r, "IPv6 loopback", "http://[::1]/x.png", 400).param(IMAGE),
        image_case(
            r,
            "IPv4-mapped IPv6 loopback",
            "http://[::ffff:127.0.0.1]/x.png",
            400,
        )
        .param(IMAGE),
        image_case(r, "decimal IP for loopback", "http://2130706433/x.png", 400).param(IMAGE),
        image_case(r, "hex IP for loopback", "http://0x7f000001/x.png", 400).param(IMAGE),
        image_case(r, "unspecified 0.0.0.0", "http://0.0.0.0:8080/x.png", 400).param(IMAGE),
        image_case(
            r,
            "credentials and loopback",
            "http://user:pw@127.0.0.1/x.png",
            400,
        )
        .param(IMAGE),
    ]
}
