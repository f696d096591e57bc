//! Image references in requests: `data:` URIs, `file://` paths inside an allowed folder, and
//! (refused for now) remote URLs.

use std::io::Read;
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::Engine as _;

use super::error::ApiError;

/// Image MIME types we accept in `data:` URIs.
const IMAGE_TYPES: [&str; 5] = [
    "image/png",
    "image/jpeg",
    "image/jpg",
    "image/webp",
    "image/gif",
];

/// Where images may come from.
#[derive(Debug, Clone, Default)]
pub struct MediaPolicy {
    /// `file://` URLs are allowed only below this folder (canonicalised); none when `None`.
    pub allowed_path: Option<PathBuf>,
    /// Largest image in bytes.
    pub max_bytes: usize,
    /// Fetch `http(s)` URLs (never from loopback, private, link-local or otherwise internal
    /// addresses).
    pub allow_remote: bool,
}

/// Time allowed for fetching one remote image.
const REMOTE_TIMEOUT: Duration = Duration::from_secs(10);

/// Resolves one image URL into its encoded bytes.
pub fn load_image(url: &str, policy: &MediaPolicy, param: &str) -> Result<Vec<u8>, ApiError> {
    let bytes = if let Some(rest) = url.strip_prefix("data:") {
        from_data_uri(rest, param)?
    } else if let Some(path) = url.strip_prefix("file://") {
        from_file(Path::new(path), policy, param)?
    } else if url.starts_with("http://") || url.starts_with("https://") {
        if !policy.allow_remote {
            return Err(ApiError::bad_param(
                param,
                "remote image URLs are disabled on this server (--allow-remote-media); send a data: URI",
            ));
        }
        from_remote(url, policy, param)?
    } else {
        return Err(ApiError::bad_param(
            param,
            "image_url must be a data: URI (or file:// when allowed)",
        ));
    };
    if bytes.len() > policy.max_bytes {
        return Err(ApiError::bad_param(
            param,
            format!("image is larger than {} bytes", policy.max_bytes),
        ));
    }
    if bytes.is_empty() {
        return Err(ApiError::bad_param(param, "the image is empty"));
    }
    check_complete(&bytes).map_err(|m| ApiError::bad_param(param, m))?;
    Ok(bytes)
}

/// Refuses a JPEG that was cut short: its decoder would quietly fill the missing part with
/// grey. A JPEG must end its last scan (`SOS`) with an end-of-image marker; neither marker can
/// occur inside entropy-coded data, and an embedded thumbnail ends before the main scan.
fn check_complete(bytes: &[u8]) -> Result<(), &'static str> {
    if !bytes.starts_with(&[0xff, 0xd8]) {
        return Ok(()); // not a JPEG: PNG, GIF and WebP decoders refuse truncation themselves
    }
    let last_scan = bytes.windows(2).rposition(|w| w == [0xff, 0xda]);
    let ends = last_scan.is_some_and(|at| bytes[at..].windows(2).any(|w| w == [0xff, 0xd9]));
    if ends {
        Ok(())
    } else {
        Err("truncated JPEG (no end-of-image marker after its last scan)")
    }
}

/// Whether an address is one a server must never be made to fetch from.
fn is_internal(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_broadcast()
                || v4.is_multicast()
                || v4.is_documentation()
                || (o[0] == 100 && (o[1] & 0xc0) == 64) // carrier-grade NAT
                || o[0] == 0
        }
        IpAddr::V6(v6) => {
            v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (v6.segments()[0] & 0xfe00) == 0xfc00 // unique local
                || (v6.segments()[0] & 0xffc0) == 0xfe80 // link local
                || v6.to_ipv4_mapped().is_some_and(|v4| is_internal(IpAddr::V4(v4)))
        }
    }
}

/// Resolves `host:port` and refuses it if any address is internal.
fn public_addrs(host: &str, port: u16) -> Result<Vec<SocketAddr>, String> {
    let addrs: Vec<SocketAddr> = (host, port)
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve {host}: {e}"))?
        .collect();
    if addrs.is_empty() || addrs.iter().any(|a| is_internal(a.ip())) {
        return Err(format!(
            "{host} resolves to an internal address; remote images must be public"
        ));
    }
    Ok(addrs)
}

/// Fetches an image over http(s): public addresses only (checked again for every redirect, on
/// the addresses actually connected to), a timeout, and a size limit.
fn from_remote(url: &str, policy: &MediaPolicy, param: &str) -> Result<Vec<u8>, ApiError> {
    let bad = |m: String| ApiError::bad_param(param, m);
    let parsed = url::Url::parse(url).map_err(|e| bad(format!("invalid image URL: {e}")))?;
    let host = parsed
        .host_str()
        .ok_or_else(|| bad("image URL has no host".into()))?
        .trim_matches(['[', ']']);
    public_addrs(host, parsed.port_or_known_default().unwrap_or(80)).map_err(bad)?;
    let agent = ureq::AgentBuilder::new()
        .timeout(REMOTE_TIMEOUT)
        .redirects(3)
        .resolver(|netloc: &str| {
            let (host, port) = netloc.rsplit_once(':').unwrap_or((netloc, "80"));
            public_addrs(host.trim_matches(['[', ']']), port.parse().unwrap_or(80))
                .map_err(|e| std::io::Error::new(std::io::ErrorKind::PermissionDenied, e))
        })
        .build();
    let fetch = || -> Result<Vec<u8>, ApiError> {
        let response = agent
            .get(url)
            .call()
            .map_err(|e| bad(format!("cannot fetch the image: {e}")))?;
        let mut bytes = Vec::new();
        response
            .into_reader()
            .take(policy.max_bytes as u64 + 1)
            .read_to_end(&mut bytes)
            .map_err(|e| bad(format!("cannot read the image: {e}")))?;
        Ok(bytes)
    };
    // A blocking fetch: tell the runtime, when it is a multi-threaded one.
    match tokio::runtime::Handle::try_current() {
        Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(fetch)
        }
        _ => fetch(),
    }
}

fn from_data_uri(rest: &str, param: &str) -> Result<Vec<u8>, ApiError> {
    let (header, payload) = rest
        .split_once(',')
        .ok_or_else(|| ApiError::bad_param(param, "malformed data: URI (no comma)"))?;
    let mut fields = header.split(';');
    let mime = fields.next().unwrap_or_default().to_ascii_lowercase();
    if !IMAGE_TYPES.contains(&mime.as_str()) {
        return Err(ApiError::bad_param(
            param,
            format!("unsupported image type {mime:?} (png, jpeg, webp or gif)"),
        ));
    }
    if !fields.any(|f| f.eq_ignore_ascii_case("base64")) {
        return Err(ApiError::bad_param(
            param,
            "data: URI images must be base64-encoded",
        ));
    }
    let cleaned: String = payload
        .chars()
        .filter(|c| !c.is_ascii_whitespace())
        .collect();
    base64::engine::general_purpose::STANDARD
        .decode(cleaned.as_bytes())
        .map_err(|e| ApiError::bad_param(param, format!("invalid base64 image data: {e}")))
}

fn from_file(path: &Path, policy: &MediaPolicy, param: &str) -> Result<Vec<u8>, ApiError> {
    let denied = || ApiError::bad_param(param, "file:// images are not allowed from this path");
    let allowed = policy.allowed_path.as_ref().ok_or_else(denied)?;
    // Canonicalising resolves `..` and symlinks before the prefix check.
    let real = path.canonicalize().map_err(|_| denied())?;
    if !real.starts_with(allowed) || !real.is_file() {
        return Err(denied());
    }
    let len = real.metadata().map(|m| m.len()).unwrap_or(u64::MAX);
    if len > policy.max_bytes as u64 {
        return Err(ApiError::bad_param(
            param,
            format!("image is larger than {} bytes", policy.max_bytes),
        ));
    }
    std::fs::read(&real).map_err(|_| denied())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> MediaPolicy {
        MediaPolicy {
            allowed_path: None,
            max_bytes: 1 << 20,
            allow_remote: false,
        }
    }

    #[test]
    fn remote_urls_to_internal_addresses_are_refused() {
        let open = MediaPolicy {
            allow_remote: true,
            ..policy()
        };
        for url in [
            "http://127.0.0.1/x.png",
            "http://localhost:8080/x.png",
            "http://10.0.0.5/x.png",
            "http://192.168.1.1/x.png",
            "http://169.254.169.254/latest/meta-data",
            "http://[::1]/x.png",
            "http://[fd00::1]/x.png",
            "http://0.0.0.0/x.png",
        ] {
            let e = load_image(url, &open, "p").unwrap_err();
            assert_eq!(e.status, 400, "{url}");
            assert!(
                e.message.contains("internal") || e.message.contains("resolve"),
                "{url}: {}",
                e.message
            );
        }
        assert!(is_internal("100.64.0.1".parse().unwrap()));
        assert!(!is_internal("93.184.216.34".parse().unwrap()));
    }

    #[test]
    fn data_uris_are_decoded_and_checked() {
        assert_eq!(
            load_image("data:image/png;base64,aGk=", &policy(), "p").unwrap(),
            b"hi"
        );
        for bad in [
            "data:text/plain;base64,aGk=",
            "data:image/png;base64,***",
            "data:image/png,hi",
            "data:image/png",
        ] {
            let e = load_image(bad, &policy(), "p").unwrap_err();
            assert_eq!(e.status, 400, "{bad}");
        }
        assert!(load_image("http://127.0.0.1/x.png", &policy(), "p").is_err());
        let empty = load_image("data:image/png;base64,", &policy(), "p").unwrap_err();
        assert_eq!(empty.param.as_deref(), Some("p"));
    }

    #[test]
    fn truncated_jpegs_are_refused() {
        let img =
            image::RgbImage::from_fn(32, 32, |x, y| image::Rgb([x as u8 * 8, y as u8 * 8, 7]));
        let mut jpeg = std::io::Cursor::new(Vec::new());
        img.write_to(&mut jpeg, image::ImageFormat::Jpeg).unwrap();
        let jpeg = jpeg.into_inner();
        assert!(check_complete(&jpeg).is_ok());
        assert!(check_complete(&jpeg[..jpeg.len() - 1]).is_err());
        assert!(check_complete(&jpeg[..jpeg.len() / 2]).is_err());
        assert!(check_complete(&jpeg[..20]).is_err());
        assert!(check_complete(b"\x89PNG not checked here").is_ok());
    }

    #[test]
    fn file_urls_stay_inside_the_allowed_folder() {
        let dir = tempfile::tempdir().unwrap();
        let inside = dir.path().join("a.png");
        std::fs::write(&inside, b"x").unwrap();
        let p = MediaPolicy {
            allowed_path: Some(dir.path().canonicalize().unwrap()),
            max_bytes: 10,
            allow_remote: false,
        };
        assert!(load_image(&format!("file://{}", inside.display()), &p, "p").is_ok());
        let escape = format!("file://{}/../../etc/passwd", dir.path().display());
        assert!(load_image(&escape, &p, "p").is_err());
        assert!(load_image(&format!("file://{}", inside.display()), &policy(), "p").is_err());
    }
}
