//! A function's code as Kubeless stored it: the text, base64 of the bytes, or the URL, with its
//! content type and checksum.

use sha2::{Digest, Sha256};

/// Code or dependencies read from a file or URL, as Kubeless's `GetContentType`/`ParseContent`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Content {
    /// The text, base64 of the bytes, or the URL itself.
    pub function: String,
    /// `text`, `base64` or `url`, with `+zip` or `+compressedtar` by the file's extension.
    pub content_type: String,
    /// `sha256:<hex>` of the bytes.
    pub checksum: String,
}

/// `+zip`/`+compressedtar` by extension, as Kubeless's `getCompressionType`.
fn compression(name: &str) -> &'static str {
    const TARS: [&str; 9] = [".tar.gz", ".taz", ".tgz", ".tar.bz2", ".tb2", ".tbz", ".tbz2", ".tz2", ".tar.xz"];
    if TARS.iter().any(|e| name.ends_with(e)) {
        "+compressedtar"
    } else if name.ends_with(".zip") {
        "+zip"
    } else {
        ""
    }
}

/// Whether `--from-file` names a URL (Kubeless: it starts with `http://` or `https://`).
pub fn is_url(source: &str) -> bool {
    source.starts_with("http://") || source.starts_with("https://")
}

/// The `spec.function`, content type and checksum of code read from `source` (a path or a URL).
pub fn content(source: &str, bytes: &[u8]) -> Content {
    let checksum = format!("sha256:{}", hex::encode(Sha256::digest(bytes)));
    if is_url(source) {
        let path = source.split('?').next().unwrap_or(source);
        return Content { function: source.to_string(), content_type: format!("url{}", compression(path)), checksum };
    }
    let (function, kind) = match std::str::from_utf8(bytes) {
        Ok(text) if compression(source).is_empty() => (text.to_string(), "text"),
        Ok(_) => (base64_of(bytes), "text"),
        Err(_) => (base64_of(bytes), "base64"),
    };
    Content { function, content_type: format!("{kind}{}", compression(source)), checksum }
}

fn base64_of(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

#[cfg(test)]
mod tests {
    use sha2::{Digest, Sha256};

    use super::content;
    use crate::cli::test_support::CODE;

    #[test]
    fn content_is_typed_and_summed_as_kubeless_did() {
        let text = content("hello.py", CODE.as_bytes());
        assert_eq!(text.content_type, "text");
        assert_eq!(text.function, CODE);
        assert_eq!(text.checksum, format!("sha256:{}", hex::encode(Sha256::digest(CODE.as_bytes()))));

        let binary = content("func.zip", &[0x50, 0x4b, 0x03, 0x04, 0xff, 0x00]);
        assert_eq!(binary.content_type, "base64+zip");
        assert_eq!(binary.function, "UEsDBP8A");
        let tar = content("/tmp/code.tar.gz", &[0x1f, 0x8b, 0x08, 0xff]);
        assert_eq!(tar.content_type, "base64+compressedtar");
        // A zip that happens to be valid UTF-8 is still sent as base64 (the runtime unzips it).
        assert_eq!(content("a.zip", b"PK").content_type, "text+zip");
        assert_eq!(content("a.zip", b"PK").function, "UEs=");

        let url = content("https://example.com/code/func.tgz?token=1", b"bytes");
        assert_eq!(url.content_type, "url+compressedtar");
        assert_eq!(url.function, "https://example.com/code/func.tgz?token=1");
        assert_eq!(url.checksum, format!("sha256:{}", hex::encode(Sha256::digest(b"bytes"))));
    }
}
