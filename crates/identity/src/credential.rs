//! The credential a proxy presents to the mesh CA (`authorization: Bearer`).

use std::path::PathBuf;

/// The bearer token sent to the CA with each certificate request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CaToken {
    /// A fixed token (local mode's bootstrap token, tests).
    Fixed(String),
    /// A file read anew for every request: Kubernetes' projected service-account token, which
    /// the kubelet rotates in place, so a value read once would go stale.
    File(PathBuf),
}

impl CaToken {
    /// The token to send now.
    pub fn current(&self) -> Result<String, String> {
        match self {
            Self::Fixed(token) => Ok(token.clone()),
            Self::File(path) => std::fs::read_to_string(path)
                .map(|t| t.trim().to_string())
                .map_err(|e| format!("reading the CA token {}: {e}", path.display())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_file_is_read_for_every_request() {
        let dir = std::env::temp_dir().join(format!("weft-ca-token-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("token");
        std::fs::write(&path, "first\n").unwrap();
        let token = CaToken::File(path.clone());
        assert_eq!(token.current().unwrap(), "first");
        std::fs::write(&path, "rotated").unwrap();
        assert_eq!(token.current().unwrap(), "rotated");
        std::fs::remove_file(&path).unwrap();
        let error = token.current().unwrap_err();
        assert!(error.contains(&path.display().to_string()), "{error}");
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(CaToken::Fixed("t".into()).current().unwrap(), "t");
    }
}
