//! The admin token file in the state dir: read, tightened if others can read it, or created with a
//! fresh random token.

use std::{
    io::{self, Read as _, Write as _},
    os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _, PermissionsExt as _},
    path::Path,
};

use super::{MIN_TOKEN_LEN, TokenError};

/// Reads the token file, or creates it with a fresh random token (mode 0600, and the state dir 0700
/// when this creates it). A file readable by others is tightened to 0600, not trusted as is.
pub(super) fn admin_token_file(path: &Path) -> Result<(String, bool), TokenError> {
    let err = |action, source| TokenError::File {
        action,
        path: path.to_owned(),
        source,
    };
    match std::fs::File::open(path) {
        Ok(mut f) => {
            let mode = f
                .metadata()
                .map_err(|e| err("inspect", e))?
                .permissions()
                .mode();
            if mode & 0o077 != 0 {
                log::warn!(
                    "{} was readable by others (mode {:o}); setting it to 0600",
                    path.display(),
                    mode & 0o777
                );
                std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
                    .map_err(|e| err("chmod", e))?;
            }
            let mut s = String::new();
            f.read_to_string(&mut s).map_err(|e| err("read", e))?;
            let token = s.trim().to_owned();
            if token.len() >= MIN_TOKEN_LEN {
                return Ok((token, false));
            }
            log::warn!(
                "{} holds no usable token; generating a new one",
                path.display()
            );
            std::fs::remove_file(path).map_err(|e| err("replace", e))?;
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(err("read", e)),
    }
    if let Some(dir) = path.parent()
        && !dir.exists()
    {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| err("create the directory of", e))?;
    }
    let token = random_token()?;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| err("create", e))?;
    f.write_all(format!("{token}\n").as_bytes())
        .and_then(|()| f.sync_all())
        .map_err(|e| err("write", e))?;
    Ok((token, true))
}

/// 32 random bytes from the OS, hex-encoded (64 characters).
pub fn random_token() -> Result<String, TokenError> {
    let mut buf = [0u8; 32];
    getrandom::fill(&mut buf).map_err(|e| TokenError::Random(e.to_string()))?;
    Ok(buf.iter().map(|b| format!("{b:02x}")).collect())
}
