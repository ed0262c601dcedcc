//! How a Function's code reaches the pod: `spec.function-content-type` read, and `spec.checksum`
//! checked against the code before anything is built.

use base64::Engine;
use sha2::{Digest, Sha256};

use super::BuildError;
use crate::resources::Function;

/// How the code reaches the pod, from `spec.function-content-type`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) enum Encoding {
    Text,
    Base64,
    Url,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) enum Archive {
    None,
    Zip,
    CompressedTar,
}

pub(super) struct ContentType {
    pub(super) encoding: Encoding,
    pub(super) archive: Archive,
    /// `+deps`: the archive carries the dependency file.
    pub(super) deps_inside: bool,
    /// Kubeless gave the code file the runtime's suffix only for these exact types.
    pub(super) plain: bool,
}

pub(super) fn content_type(text: &str) -> Result<ContentType, BuildError> {
    let bad = || BuildError::ContentType(text.to_string());
    let mut parts = text.split('+');
    let encoding = match parts.next().unwrap_or_default() {
        "" | "text" => Encoding::Text,
        "base64" => Encoding::Base64,
        "url" => Encoding::Url,
        _ => return Err(bad()),
    };
    let (mut archive, mut deps_inside) = (Archive::None, false);
    for part in parts {
        match part {
            "zip" => archive = Archive::Zip,
            "compressedtar" => archive = Archive::CompressedTar,
            "deps" => deps_inside = true,
            _ => return Err(bad()),
        }
    }
    Ok(ContentType { encoding, archive, deps_inside, plain: matches!(text, "" | "text" | "base64" | "url") })
}

pub(super) fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Checks `spec.checksum` against the code; returns the expected hex digest, if any. A URL's
/// content is only checked by `prepare`, which downloads it.
pub(super) fn verify_checksum(function: &Function, ct: &ContentType) -> Result<Option<String>, BuildError> {
    let checksum = function.spec.checksum.trim();
    if checksum.is_empty() {
        return Ok(None);
    }
    let hex = checksum
        .strip_prefix("sha256:")
        .filter(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()))
        .ok_or_else(|| BuildError::ChecksumFormat(checksum.to_string()))?
        .to_ascii_lowercase();
    let code = &function.spec.function;
    let actual = match ct.encoding {
        Encoding::Url => return Ok(Some(hex)),
        Encoding::Text => sha256_hex(code.as_bytes()),
        Encoding::Base64 => {
            let compact: String = code.split_whitespace().collect();
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(compact)
                .map_err(|e| BuildError::Base64(e.to_string()))?;
            sha256_hex(&bytes)
        }
    };
    if actual != hex {
        return Err(BuildError::ChecksumMismatch { expected: checksum.to_string(), actual });
    }
    Ok(Some(hex))
}

/// A Function's code as a local process runs it: the bytes of a code file or of an archive,
/// checked against `spec.checksum`.
#[derive(Debug, Clone, PartialEq)]
pub enum Code {
    File(Vec<u8>),
    /// `+zip` or `+compressedtar` (gzip, bzip2 or xz); `deps_inside`: `+deps`, the archive carries
    /// the dependency file.
    Archive {
        zip: bool,
        bytes: Vec<u8>,
        deps_inside: bool,
    },
    /// `url`: fetched from where the Function says.
    Url,
}

/// Reads `spec.function` as `spec.function-content-type` says, checking `spec.checksum`.
pub fn code_of(function: &Function) -> Result<Code, BuildError> {
    let ct = content_type(&function.spec.function_content_type)?;
    verify_checksum(function, &ct)?;
    let code = &function.spec.function;
    let bytes = match ct.encoding {
        Encoding::Url => return Ok(Code::Url),
        Encoding::Text => code.clone().into_bytes(),
        Encoding::Base64 => {
            let compact: String = code.split_whitespace().collect();
            base64::engine::general_purpose::STANDARD.decode(compact).map_err(|e| BuildError::Base64(e.to_string()))?
        }
    };
    Ok(match ct.archive {
        Archive::None => Code::File(bytes),
        Archive::Zip => Code::Archive { zip: true, bytes, deps_inside: ct.deps_inside },
        Archive::CompressedTar => Code::Archive { zip: false, bytes, deps_inside: ct.deps_inside },
    })
}
