//! Image references in requests: `data:` URIs, `file://` paths inside an allowed folder, and
//! (refused for now) remote URLs.

use std::path::{Path, PathBuf};

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
}

/// Resolves one image URL into its encoded bytes.
pub fn load_image(url: &str, policy: &MediaPolicy, param: &str) -> Result<Vec<u8>, ApiError> {
    let bytes = if let Some(rest) = url.strip_prefix("data:") {
        from_data_uri(rest, param)?
    } else if let Some(path) = url.strip_prefix("file://") {
        from_file(Path::new(path), policy, param)?
    } else if url.starts_with("http://") || url.starts_with("https://") {
        return Err(ApiError::bad_param(
            param,
            "remote image URLs are disabled on this server; send a data: URI",
        ));
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
    Ok(bytes)
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
        }
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
    }

    #[test]
    fn file_urls_stay_inside_the_allowed_folder() {
        let dir = tempfile::tempdir().unwrap();
        let inside = dir.path().join("a.png");
        std::fs::write(&inside, b"x").unwrap();
        let p = MediaPolicy {
            allowed_path: Some(dir.path().canonicalize().unwrap()),
            max_bytes: 10,
        };
        assert!(load_image(&format!("file://{}", inside.display()), &p, "p").is_ok());
        let escape = format!("file://{}/../../etc/passwd", dir.path().display());
        assert!(load_image(&escape, &p, "p").is_err());
        assert!(load_image(&format!("file://{}", inside.display()), &policy(), "p").is_err());
    }
}
